"""The package layout says where code runs, and its import rules hold."""

import ast
import subprocess
import sys
from pathlib import Path

import ptychonn_ophyd

PACKAGE = Path(ptychonn_ophyd.__file__).parent


def imports() -> dict[str, set[str]]:
    """Every module of the package and the package modules it imports, lazily or not."""
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
        graph[module] = {m for m in found if m.startswith("ptychonn_ophyd")}
    return graph


def layer(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_worker_code_imports_nothing_of_the_parent_or_the_session():
    for module, imported in imports().items():
        if layer(module) == "worker":
            assert not {layer(m) for m in imported} & {"pool", "session"}, module


def test_the_store_process_code_imports_nothing_of_the_session_or_the_pool():
    for module, imported in imports().items():
        if layer(module) == "store":
            assert not {layer(m) for m in imported} & {"pool", "session", "worker"}, module


def test_only_the_session_and_the_command_line_start_pools():
    for module, imported in imports().items():
        if layer(module) not in ("pool", "session", "cli"):
            assert "pool" not in {layer(m) for m in imported}, module
        if layer(module) == "pool":
            assert not {layer(m) for m in imported} & {"worker", "session"}, module


def test_no_module_imports_itself_through_others():
    graph = imports()

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == target or (nxt not in seen and reaches(nxt, target, seen | {nxt})):
                return True
        return False

    cycles = [m for m in graph if reaches(m, m, {m})]
    assert not cycles


def test_analysis_reads_runs_through_the_run_schema_not_the_session():
    for module, imported in imports().items():
        if layer(module) == "analysis":
            assert "session" not in {layer(m) for m in imported}, module


SESSION_WITHOUT_TILED = """
import sys

class NoTiled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tiled", "bluesky_tiled_plugins", "numba", "llvmlite"):
            raise ImportError(f"{name} is not installed here")

sys.meta_path.insert(0, NoTiled())
from ptychonn_ophyd.session import device, live_view, plans, supplement  # noqa: F401
"""


def test_the_session_imports_without_tiled():
    """A host with the Bluesky packages but not Tiled's server stack (nor numba, too
    large to carry there) runs scans with the documents going elsewhere (the GPU host's
    benchmark does); only the catalog and the wiring to it need Tiled, and only the
    live view's stitching with a probe needs numba."""
    done = subprocess.run(
        [sys.executable, "-c", SESSION_WITHOUT_TILED], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
