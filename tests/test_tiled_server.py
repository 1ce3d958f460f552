"""Runs stored on a real ``tiled serve`` on loopback, configured as the README says, and
servers missing what storing a run takes refused at ``connect()`` in one line."""

import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from bluesky import RunEngine
from bluesky_world import beamline
from peers import user_environment

from ptychonn_ophyd.errors import CatalogError
from ptychonn_ophyd.session.device import PtychoNNDetector
from ptychonn_ophyd.session.plans import scan_with_inference
from ptychonn_ophyd.session.wiring import connect
from ptychonn_ophyd.tiled_server import PROBE_PREFIX, serve_on_loopback

pytestmark = pytest.mark.processes

CONFIG = Path(__file__).resolve().parents[1] / "examples" / "tiled-server.yml"
API_KEY = "secretforthistest"  # alphanumeric, as Tiled requires


@contextmanager
def tiled_serve(config: Path, data: Path, assets: Path) -> Iterator[str]:
    """``tiled serve config`` on loopback with ``config``; yields its URI."""
    with serve_on_loopback(config, data, assets, API_KEY, user_environment()) as server:
        yield server.uri


READER = """
import databroker
from ptychonn_ophyd.analysis.replay import find_run, load_inference
from ptychonn_ophyd.run_schema import frame_accounting

catalog = databroker.catalog["ptychonn"]
run = find_run(catalog, -1)
print(run.metadata["start"]["uid"], run["inference"]["phase"].read().shape)
print(frame_accounting(run)["stored"], run.metadata["stop"]["exit_status"])
names = [name for name, _ in run.documents()]
table = catalog.v1[-1].table("inference", fill=True)
print(len(table), names[-1], len(load_inference(find_run(catalog, -1)).unique_id))
print(frame_accounting(catalog[-1])["stored"])  # a v2 node, after v1
"""
"""Another process, a databroker 2 user's: the latest run by the Tiled profile, as
documents, as a v1 table, and replay's reading after that."""


def test_a_server_set_up_as_the_readme_says_stores_a_scan_another_process_reads(
    tmp_path, monkeypatch, channel_prefix, small_phase_onnx
):
    assets = tmp_path / "assets"
    with tiled_serve(CONFIG, tmp_path / "server", assets) as uri:
        monkeypatch.setenv("PTYCHONN_ASSETS", str(assets))
        monkeypatch.setenv("TILED_API_KEY", API_KEY)
        with beamline(tmp_path, channel_prefix, small_phase_onnx, catalog_dir=uri) as w:
            (uid,) = w.RE(
                scan_with_inference(w.det, w.inference, w.sy, -0.2, 0.2, 2, w.sx, -0.2, 0.2, 2)
            )
            assert not [key for key in w.catalog if key.startswith(PROBE_PREFIX)]
        home = tmp_path / "reader"  # databroker 2 finds the server by the README's profile
        profiles = home / ".config" / "tiled" / "profiles"
        profiles.mkdir(parents=True)
        (profiles / "ptychonn.yml").write_text(f"ptychonn:\n  uri: {uri}\n")
        done = subprocess.run(
            [sys.executable, "-c", READER],
            env={**user_environment(), "TILED_API_KEY": API_KEY, "HOME": str(home)},
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"{uid} (4, 128, 128)", "4 success", "4 stop 4", "4"]


@pytest.mark.parametrize(
    ("cut", "said"),
    [
        (r"      readable_storage:\n.*\n", "cannot read files in {assets}: add that folder, "),
        (r"        - sqlite:///\$\{TILED_DATA\}/tables.db.*\n", "has no SQL table store for "),
        (r"      specs:.*\n.*\n.*\n", "its root is not a catalog of Bluesky runs; add `specs: "),
    ],
    ids=["no-readable-storage", "no-sql-table-store", "no-runs-spec"],
)
def test_a_server_missing_a_setting_is_refused_at_connect_in_one_line(
    tmp_path, monkeypatch, small_phase_onnx, cut, said
):
    config = tmp_path / "server.yml"
    config.write_text(re.sub(cut, "", CONFIG.read_text(), count=1))
    assert config.read_text() != CONFIG.read_text()
    assets = tmp_path / "assets"
    inference = PtychoNNDetector(
        name="inference", model=str(small_phase_onnx), input_channel="x", output_prefix="x"
    )
    with tiled_serve(config, tmp_path / "server", assets) as uri:
        monkeypatch.setenv("PTYCHONN_ASSETS", str(assets))
        monkeypatch.setenv("TILED_API_KEY", API_KEY)
        with pytest.raises(CatalogError) as refused:
            connect(RunEngine(), inference, uri)
    message = str(refused.value)
    assert message.startswith(f"Tiled server {uri}") and "\n" not in message
    assert said.format(assets=assets) in message
    assert not list(assets.glob(f"{PROBE_PREFIX}*"))  # the check's file is gone
