"""The one-command demo, end to end at its small size, as a new user runs it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from ptychonn_ophyd.analysis.solved_mosaic import SolvedMosaic

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
    assert replay == [
        "ptychonn-ophyd",
        "replay",
        summary["run uid"],
        "--catalog",
        summary["catalog"],
    ]
    png = tmp_path / "replayed.png"  # the stored mosaic
    again = subprocess.run(
        [sys.executable, "-m", "ptychonn_ophyd", *replay[1:], "-o", str(png)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    assert png.stat().st_size > 10_000
