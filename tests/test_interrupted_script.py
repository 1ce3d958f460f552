"""Ctrl-C in a script: the process ends with the RunEngine paused; the run is still
closed as aborted, with its inference stream, its frame accounting and no worker left."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from bluesky_world import assert_every_frame_counted, assert_gone

from ptychonn_ophyd.catalog import open_catalog
from ptychonn_ophyd.run_schema import STREAM, frame_accounting
from ptychonn_ophyd.session.wiring import PAUSED_AT_EXIT

pytestmark = [pytest.mark.processes, pytest.mark.timeout(300)]

SCRIPT = """
import json, os, signal, sys, threading
from pathlib import Path
sys.path.insert(0, {tests!r})
from bluesky import RunEngine
from bluesky_world import make_devices
from ptychonn_ophyd.session.plans import scan_with_inference
from ptychonn_ophyd.session.wiring import connect

sx, sy, det, inference = make_devices(Path({tmp!r}), {prefix!r}, Path({model!r}))
RE = RunEngine()
connect(RE, inference, Path({tmp!r}) / "catalog")

def interrupt(name, doc):  # Ctrl-C twice, as a user would: pause now
    if name == "start":
        print(json.dumps(inference.pool.pids), flush=True)
    if name == "event" and doc["seq_num"] == 3:
        os.kill(os.getpid(), signal.SIGINT)
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()

RE.subscribe(interrupt)
RE(scan_with_inference(det, inference, sx, -0.5, 0.5, sy, 0, 0, num=100))
"""
"""A script as a user writes it: no try, no RE.abort(); Ctrl-C ends it paused."""


def test_a_script_ended_by_ctrl_c_closes_its_run_as_aborted(
    tmp_path, channel_prefix, small_phase_onnx
):
    script = textwrap.dedent(SCRIPT).format(
        tests=str(Path(__file__).parent),
        tmp=str(tmp_path),
        prefix=channel_prefix,
        model=str(small_phase_onnx),
    )
    child = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=240
    )
    assert "RunEngineInterrupted" in child.stderr, child.stderr[-3000:]
    assert_gone(set(json.loads(child.stdout.splitlines()[0])))

    run = open_catalog(tmp_path / "catalog").values().last()
    stop = run.metadata["stop"]
    assert stop["exit_status"] == "abort" and stop["reason"] == PAUSED_AT_EXIT, stop
    assert PAUSED_AT_EXIT in child.stderr
    summary = frame_accounting(run)
    assert summary["stored"] >= 3 and len(run[STREAM].read()["phase"]) == summary["stored"]
    assert_every_frame_counted(summary)
