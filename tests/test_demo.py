"""The one-command demo, end to end at its small size, as a new user runs it."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from bluesky_world import assert_every_frame_counted

from ptychonn_ophyd.analysis.solved_mosaic import SolvedMosaic
from ptychonn_ophyd.catalog import open_catalog
from ptychonn_ophyd.demo import INTERRUPTED
from ptychonn_ophyd.run_schema import frame_accounting

pytestmark = pytest.mark.processes


def test_small_demo_reconstructs_the_held_out_object_without_losing_frames(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ptychonn_ophyd",
            "demo",
            "--size",
            "small",
            "--output-dir",
            str(tmp_path),
            "--backend",
            "onnxruntime",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    assert Path(summary["picture"]).stat().st_size > 10_000
    assert Path(summary["catalog"]) == tmp_path / "catalog"
    sent, inferred, lost = map(int, re.findall(r"\d+", summary["frames"]))
    assert (sent, inferred, lost) == (121, 121, 0)
    # the live view had the simulated detector's probe: each patch its frame's tilt
    assert summary["stitched with"] == SolvedMosaic.stitching
    assert float(summary["ssim"]) > 0.8
    assert float(summary["phase rms error"].removesuffix(" rad")) < 0.15
    assert re.fullmatch(r"[0-9a-f-]{36}", summary["run uid"])
    replay = summary["replay"].split()
    assert replay[1:] == ["replay", summary["run uid"], "--catalog", summary["catalog"]]
    png = tmp_path / "replayed.png"  # the stored mosaic
    again = subprocess.run(  # pasted as printed, from where the demo ran
        [*replay, "-o", str(png)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    assert png.stat().st_size > 10_000


def test_ctrl_c_during_the_demo_ends_in_one_line_with_the_run_stored_as_aborted(tmp_path):
    demo = subprocess.Popen(
        [sys.executable, "-m", "ptychonn_ophyd", "demo", "--size", "small"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    said: list[str] = []
    reader = threading.Thread(target=lambda: said.extend(demo.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + 300
    while not any(" ready in " in line for line in said):  # the scan is about to start
        assert demo.poll() is None and time.monotonic() < deadline, "".join(said)
        time.sleep(0.1)
    channel = re.search(r"worker on (\S+):image", "".join(said))[1]

    demo.send_signal(signal.SIGINT)  # one Ctrl-C, as a user presses it

    out = demo.stdout.read()
    assert demo.wait(timeout=120) == 130
    reader.join(timeout=30)
    last = said[-1].rstrip("\n")
    ended = re.fullmatch(
        r"ptychonn-ophyd demo: interrupted: run (\S+) stored as aborted in (\S+)", last
    )
    assert ended, "".join(said)
    everything = out + "".join(said)
    assert "Traceback" not in everything and "RE.resume" not in everything, everything
    assert not [
        p for p in psutil.process_iter(["cmdline"]) if channel in " ".join(p.info["cmdline"] or [])
    ]
    catalog = open_catalog(tmp_path / ended[2])
    try:
        run = catalog[ended[1]]
        stop = run.metadata["stop"]
        assert (stop["exit_status"], stop["reason"]) == ("abort", INTERRUPTED)
        assert_every_frame_counted(frame_accounting(run))
    finally:
        catalog.context.close()
