"""The Bluesky session's process SIGKILLed mid-scan: the next opening of the catalog closes
the run as failed, with every row its inference file holds."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from bluesky_world import assert_gone

from ptychonn_ophyd.catalog import open_catalog
from ptychonn_ophyd.interrupted_runs import file_rows
from ptychonn_ophyd.run_schema import STREAM

pytestmark = [pytest.mark.processes, pytest.mark.timeout(300)]

SCAN = """
import json, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from bluesky_world import beamline
from ptychonn_ophyd.session.plans import scan_with_inference

tmp, record = Path({tmp!r}), open({record!r}, "a", buffering=1)

def remember(name, doc):
    if name == "start":
        store = [w.inference.store_pid] if w.inference.store_pid else []
        print(json.dumps({{"pids": w.inference.pool.pids + store}}), file=record)
    if name == "stream_datum":
        key = resources[doc["stream_resource"]]
        print(json.dumps({{"key": key, "stop": doc["indices"]["stop"]}}), file=record)
    if name == "stream_resource":
        resources[doc["uid"]] = doc["data_key"]

resources = {{}}
with beamline(tmp, {prefix!r}, Path({model!r}), store_process={store_process!r}) as w:
    w.RE.subscribe(remember)
    w.RE(scan_with_inference(w.det, w.inference, w.sx, -0.5, 0.5, w.sy, 0, 0, num=2000))
"""
"""A scan far longer than the test lets it run; ``record`` gets the worker pids (and the
store process's) and,
after the TiledWriter has taken each one, every stream_datum's column and stop."""


def read_record(path: Path) -> list[dict]:
    """The record's entries so far (a line the child is still writing is left out)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def stops_by_column(record: list[dict]) -> dict[str, list[int]]:
    stops: dict[str, list[int]] = {}
    for entry in record:
        if "key" in entry:
            stops.setdefault(entry["key"], []).append(entry["stop"])
    return stops


def kill_mid_scan(
    tmp_path: Path, prefix: str, model: Path, collects: int, store_process: bool = False
) -> list[dict]:
    """Run the scan in a child process and SIGKILL it after ``collects`` collects."""
    record_path = tmp_path / "record.jsonl"
    script = textwrap.dedent(SCAN).format(
        tests=str(Path(__file__).parent),
        tmp=str(tmp_path),
        record=str(record_path),
        prefix=prefix,
        model=str(model),
        store_process=store_process,
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "child.log", "w"),  # noqa: SIM115 -- closed with the child
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while len(stops_by_column(read_record(record_path)).get("phase", [])) < collects:
            assert child.poll() is None, (tmp_path / "child.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the scan did not get going"
            time.sleep(0.01)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    return read_record(record_path)


@pytest.mark.parametrize(
    ("trial", "store_process"), [(0, False), (1, False), (2, False), (0, True)]
)
def test_a_killed_session_s_run_is_closed_with_every_row_of_its_file(
    tmp_path, channel_prefix, small_phase_onnx, trial, store_process
):
    record = kill_mid_scan(tmp_path, channel_prefix, small_phase_onnx, 5 + 3 * trial, store_process)
    pids = {pid for entry in record for pid in entry.get("pids", [])}
    assert len(pids) == 1 + store_process, record
    assert_gone(pids)  # the workers (and the store) noticed their parent died
    (path,) = (tmp_path / "catalog" / "assets").glob(f"*-{STREAM}.h5")
    in_file = file_rows(path)

    run = open_catalog(tmp_path / "catalog").values().last()
    stop = run.metadata["stop"]
    assert stop["exit_status"] == "fail", stop
    assert stop["reason"].startswith("the session writing this run ended without closing it")
    table = run[STREAM].read()
    lengths = {key: len(table[key]) for key in table.data_vars}
    assert set(lengths.values()) == {in_file}, (lengths, in_file)

    stops = stops_by_column(record)
    assert set(stops) == set(lengths)
    every_column_announced = min(max(s) for s in stops.values())
    assert in_file >= every_column_announced, (in_file, stops)
    announced = int(re.search(r"(\d+) announced before the end", stop["reason"])[1])
    assert every_column_announced <= announced <= in_file, (announced, stops)
    unique_ids = np.asarray(table["unique_id"])
    assert len(np.unique(unique_ids)) == in_file and unique_ids.min() > 0
    with h5py.File(path, "r", swmr=True, libver="latest") as file:
        np.testing.assert_array_equal(file["unique_id"][:in_file], unique_ids)
        assert np.isfinite(file["phase"][:in_file]).all() and np.asarray(table["phase"]).any()
    again = open_catalog(tmp_path / "catalog").values().last()
    assert again.metadata["stop"] == stop  # closed once
