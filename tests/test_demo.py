"""The one-command demo, end to end at its small size, as a new user runs it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert float(summary["ssim"]) > 0.6
    rms = float(summary["phase rms error"].removesuffix(" rad"))
    assert rms < 0.3
    # each patch given its frame's tilt: a sharper picture than the live mosaic
    assert float(summary["tilt-corrected ssim"]) > float(summary["ssim"])
    assert float(summary["tilt-corrected phase rms error"].removesuffix(" rad")) < rms
    assert re.fullmatch(r"[0-9a-f-]{36}", summary["run uid"])
    replay = summary["replay"].split()
    assert replay == [
        "ptychonn-ophyd",
        "replay",
        summary["run uid"],
        "--catalog",
        summary["catalog"],
        "--probe",
        str(tmp_path / "probe.npy"),
    ]
    png = tmp_path / "replayed.png"  # the tilt-corrected reconstruction
    again = subprocess.run(
        [sys.executable, "-m", "ptychonn_ophyd", *replay[1:], "-o", str(png)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    assert png.stat().st_size > 10_000
