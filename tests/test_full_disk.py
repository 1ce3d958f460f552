"""A catalog on a disk that fills mid-scan: one clear error, a failed run with what was
stored and its accounting, the pool stopped, and an exit without a crash."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from bluesky_world import assert_every_frame_counted

from ptychonn_ophyd.catalog import open_catalog
from ptychonn_ophyd.run_schema import STREAM, frame_accounting

pytestmark = [pytest.mark.processes, pytest.mark.timeout(300)]

DISK = "4m"
"""A tmpfs this small fills after a few dozen 128x128 results (64 KiB each)."""

SCAN = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from bluesky_world import beamline
from ptychonn_ophyd.session.plans import scan_with_inference

with beamline(Path({tmp!r}), {prefix!r}, Path({model!r}), catalog_dir=Path({disk!r})) as w:
    try:
        w.RE(scan_with_inference(w.det, w.inference, w.sx, -0.5, 0.5, w.sy, 0, 0, num=400))
    except Exception as error:
        print(f"ERROR {{type(error).__name__}}: {{error}}", flush=True)
    print("POOL", w.inference.pool is None, flush=True)
"""


@pytest.fixture
def tiny_disk(tmp_path):
    """A 4 MiB tmpfs mounted in ``tmp_path``, or a skip saying why it cannot be made."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tiny tmpfs needs root")
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if made.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_fails_the_run_with_one_error_and_what_was_stored(
    tmp_path, tiny_disk, channel_prefix, small_phase_onnx
):
    script = textwrap.dedent(SCAN).format(
        tests=str(Path(__file__).parent),
        tmp=str(tmp_path),
        prefix=channel_prefix,
        model=str(small_phase_onnx),
        disk=str(tiny_disk / "catalog"),
    )
    child = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=240
    )
    assert child.returncode == 0, child.stderr[-3000:]
    assert "Segmentation fault" not in child.stderr
    (error,) = [line for line in child.stdout.splitlines() if line.startswith("ERROR")]
    assert error.startswith("ERROR StorageFullError: ") and str(tiny_disk) in error
    assert "disk full" in error and "POOL True" in child.stdout

    run = open_catalog(tiny_disk / "catalog").values().last()
    stop = run.metadata["stop"]
    assert stop["exit_status"] == "fail" and "disk full" in stop["reason"]
    summary = frame_accounting(run)
    rows = len(np.asarray(run[STREAM].read()["unique_id"]))
    assert rows == summary["stored"] > 0
    assert "disk full" in summary["write_error"]
    assert_every_frame_counted(summary)
