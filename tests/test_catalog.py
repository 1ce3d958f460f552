"""The catalog: embedded by default (SQLite, SQL tables, data folder), a Tiled server by URI."""

import contextlib
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from catalog_runs import write_run

from ptychonn_ophyd.catalog import (
    assets_directory,
    open_catalog,
    open_existing_catalog,
    resolve_location,
)
from ptychonn_ophyd.errors import CatalogError

pytestmark = pytest.mark.processes


def test_a_new_embedded_catalog_is_made_in_this_process_at_tiled_s_schema_head(
    tmp_path, monkeypatch
):
    import asyncio

    from sqlalchemy.ext.asyncio import create_async_engine
    from tiled.alembic_utils import check_database
    from tiled.catalog.core import ALL_REVISIONS, REQUIRED_REVISION

    def no_process(*args, **kwargs):
        raise AssertionError(f"a new catalog started a process: {args}")

    monkeypatch.setattr(subprocess, "run", no_process)
    folder = tmp_path / "catalog"
    open_catalog(folder).context.close()
    open_catalog(folder).context.close()

    async def check() -> None:
        engine = create_async_engine(f"sqlite+aiosqlite:///{folder / 'catalog.db'}")
        try:
            await check_database(engine, REQUIRED_REVISION, ALL_REVISIONS)
        finally:
            await engine.dispose()

    asyncio.run(check())


def test_embedded_catalog_is_made_in_a_folder_and_read_from_another_process(tmp_path):
    folder = tmp_path / "catalog"
    catalog = open_catalog(folder)
    assert {p.name for p in folder.iterdir()} >= {"catalog.db", "data", "assets"}
    uid = write_run(catalog, assets_directory(folder))
    assert (folder / "tables.db").exists()

    run = catalog[uid]
    assert run.metadata["start"]["purpose"] == "test"
    assert list(run["inference"]["unique_id"].read()) == [1, 2, 3, 4, 5]

    script = textwrap.dedent(f"""
        from ptychonn_ophyd.catalog import open_catalog
        run = open_catalog({str(folder)!r})[-1]
        print(run.metadata["start"]["uid"], run["inference"]["phase"].read().shape,
              run["primary"].read()["m"].values.tolist())
    """)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.split("\n")[-2] == f"{uid} (5, 8, 8) [1.0]"


def test_location_comes_from_argument_then_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("TILED_URI", raising=False)
    monkeypatch.setenv("PTYCHONN_CATALOG", str(tmp_path / "env"))
    assert resolve_location() == tmp_path / "env"
    assert resolve_location(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.setenv("TILED_URI", "http://tiled.example:8000/api")
    assert resolve_location() == "http://tiled.example:8000/api"
    with pytest.raises(ValueError, match="PTYCHONN_ASSETS"):
        monkeypatch.delenv("PTYCHONN_ASSETS", raising=False)
        assets_directory()
    monkeypatch.setenv("PTYCHONN_ASSETS", str(tmp_path / "assets"))
    assert assets_directory() == tmp_path / "assets"


def test_a_tiled_server_is_written_through_the_same_writer(tmp_path, monkeypatch):
    from tiled.server import SimpleTiledServer

    assets = tmp_path / "assets"
    assets.mkdir()
    with SimpleTiledServer(directory=tmp_path / "server", readable_storage=[assets]) as server:
        monkeypatch.setenv("TILED_URI", server.uri.split("?")[0])
        monkeypatch.setenv("TILED_API_KEY", server.api_key)
        catalog = open_catalog()
        uid = write_run(catalog, assets, n=3)
        run = open_catalog()[uid]
        np.testing.assert_array_equal(run["inference"]["x"].read(), [0.0, 0.1, 0.2])
        assert run["inference"]["phase"].read()[2].max() == 2


@contextlib.contextmanager
def read_only(*paths: Path):
    """Make ``paths`` unwritable for this user, root included, and writable again after.

    Root ignores permission bits, so as root the immutable flag (``chattr +i``) is
    used; where it cannot be set the test is skipped with the reason.
    """
    if os.geteuid() != 0:
        modes = {path: path.stat().st_mode for path in paths}
        for path in paths:
            path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            for path, mode in modes.items():
                path.chmod(mode)
        return
    chattr = shutil.which("chattr")
    done: list[Path] = []
    try:
        for path in paths:
            if chattr is None or subprocess.run([chattr, "+i", str(path)]).returncode:
                pytest.skip(f"root writes through permissions, and chattr +i {path} failed")
            done.append(path)
        yield
    finally:
        for path in done:
            subprocess.run([chattr, "-i", str(path)], check=True)


def test_catalog_in_a_read_only_folder_is_refused_in_one_line_naming_it(tmp_path):
    parent = tmp_path / "locked"
    parent.mkdir()
    with read_only(parent), pytest.raises(CatalogError) as raised:
        open_catalog(parent / "catalog")
    message = str(raised.value)
    assert "\n" not in message and str(parent / "catalog") in message, message
    assert "cannot be written" in message


def test_read_only_existing_catalog_is_refused_before_anything_runs(tmp_path):
    folder = tmp_path / "catalog"
    write_run(open_catalog(folder), assets_directory(folder))
    databases = [folder / name for name in ("catalog.db", "tables.db")]
    with read_only(*databases, folder), pytest.raises(CatalogError) as raised:
        open_catalog(folder)
    message = str(raised.value)
    assert "\n" not in message and str(folder) in message, message


def test_a_file_where_the_catalog_folder_should_be_is_refused_naming_it(tmp_path):
    (tmp_path / "catalog").write_text("not a folder")
    with pytest.raises(CatalogError, match=f"catalog {tmp_path / 'catalog'} cannot be written"):
        open_catalog(tmp_path / "catalog")


WHEN_TOLD = """
import sys, time
from pathlib import Path
ready, go = map(Path, sys.argv[1:3])
ready.touch()
while not go.exists():
    time.sleep(0.001)
"""
"""Prologue of a child script: say it is ready (imports done), then wait for ``go``."""


def run_at_once(tmp_path: Path, script: str, args: list[list[str]]) -> list[str]:
    """Run ``script`` in one child process per entry of ``args``, released together once
    every child has imported what it needs; each child's stdout, after all succeeded."""
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{i}" for i in range(len(args))]
    children = [
        subprocess.Popen(
            [sys.executable, "-c", WHEN_TOLD + script, str(flag), str(go), *child_args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for flag, child_args in zip(ready, args, strict=True)
    ]
    try:
        deadline = time.monotonic() + 120
        while not all(flag.exists() for flag in ready) and time.monotonic() < deadline:
            time.sleep(0.01)
        go.touch()
        outcomes = [child.communicate(timeout=300) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    for child, (_, err) in zip(children, outcomes, strict=True):
        assert child.returncode == 0, err[-3000:]
    return [out for out, _ in outcomes]


@pytest.mark.parametrize("trial", range(3))
def test_two_processes_can_open_one_new_catalog_at_once(tmp_path, trial):
    script = "from ptychonn_ophyd.catalog import open_catalog\n"
    script += "print(len(open_catalog(sys.argv[3])), flush=True)\n"
    outs = run_at_once(tmp_path, script, [[str(tmp_path / "catalog")]] * 2)
    assert [out.strip() for out in outs] == ["0", "0"]


SCAN = """
from bluesky import RunEngine
from bluesky.plans import scan
from ophyd.sim import det, motor
from ptychonn_ophyd.catalog import catalog_writer, open_catalog
RE = RunEngine()
RE.subscribe(catalog_writer(open_catalog(sys.argv[3])))
print(*RE(scan([det], motor, -1, 1, int(sys.argv[4]))), flush=True)
"""
"""A child's scan, every event written to the catalog at once, as a session writes it."""


def test_two_scans_into_one_existing_catalog_both_store_every_row(tmp_path):
    """Two processes writing one embedded catalog take turns at SQLite's lock (issue 15).

    Without waiting, the table store failed one of them at about point 11 with
    ``database is locked``.
    """
    folder, points = tmp_path / "catalog", 60
    open_catalog(folder).context.close()
    outs = run_at_once(tmp_path, SCAN, [[str(folder), str(points)]] * 2)
    catalog = open_existing_catalog(folder)
    for uid in (out.split()[-1] for out in outs):
        run = catalog[uid]
        assert "stop" in run.metadata and run.metadata["stop"]["exit_status"] == "success"
        np.testing.assert_allclose(run["primary"].read()["motor"], np.linspace(-1, 1, points))
    catalog.context.close()


def test_opening_an_embedded_catalog_prints_nothing_of_tiled_even_verbose(tmp_path):
    script = textwrap.dedent(
        f"""
        from ptychonn_ophyd.cli import configure_logging
        configure_logging(verbose=True)
        from ptychonn_ophyd.catalog import open_catalog
        catalog = open_catalog({str(tmp_path / "catalog")!r})
        print(len(catalog))
        catalog.context.close()
        """
    )
    for _ in ("new", "existing"):
        done = subprocess.run(
            [sys.executable, "-W", "default", "-c", script],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert (done.stdout, done.stderr) == ("0\n", "")


def test_replay_by_scan_id_in_a_catalog_that_is_no_catalog_of_runs_says_so(tmp_path):
    from tiled.catalog import from_uri
    from tiled.client import Context, from_context
    from tiled.server.app import build_app

    from ptychonn_ophyd.analysis.replay import find_run
    from ptychonn_ophyd.errors import RunLookupError

    plain = from_uri(f"sqlite:///{tmp_path / 'plain.db'}", init_if_not_exists=True)
    client = from_context(Context.from_app(build_app(plain)))
    for run_id in (-1, "3"):
        with pytest.raises(RunLookupError) as refused:
            find_run(client, run_id, "http://tiled.example")
        said = str(refused.value)
        assert said.startswith(f"{run_id} names no run in http://tiled.example: it is not a ")
        assert "CatalogOfBlueskyRuns" in said and "\n" not in said
    client.context.close()


def test_databroker_2_reads_an_embedded_run_as_documents_and_v1_and_replay_still_works(
    tmp_path,
):
    pytest.importorskip("databroker.v1", reason="databroker[back-compat] is not installed")
    from ptychonn_ophyd.analysis.replay import find_run, load_inference

    catalog = open_catalog(tmp_path / "catalog")
    uid = write_run(catalog, tmp_path / "catalog" / "assets", n=3)

    names = [name for name, _ in catalog[uid].documents()]
    assert names[0] == "start" and names[-1] == "stop"
    assert names.count("stream_datum") == names.count("stream_resource") > 0
    table = catalog.v1[uid].table("inference", fill=True)
    assert table["unique_id"].tolist() == [1, 2, 3] and len(table["phase"].iloc[2]) == 8
    data = load_inference(find_run(catalog, -1))  # the v1 Broker switched the client's map
    assert data.unique_id.tolist() == [1, 2, 3]
    assert load_inference(catalog[uid]).unique_id.tolist() == [1, 2, 3]  # a v2 node given
    catalog.context.close()
