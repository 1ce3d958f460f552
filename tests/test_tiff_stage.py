"""The seed's two-stage run, looped: PtychoNN consumers, then pvapy's TIFF writer on their outputs.

Both stages are the stock ``pvapy-hpc-consumer`` in pvapy's fork mode (``--n-consumers
2``), as in the seed.  Every loop must write one TIFF per frame sent (issue 16: the TIFF
stage, started before the PtychoNN consumers had created their output records, found
them only after the stream and saved nothing).  The cause is checked without a loop
(the output record exists before the first frame); the loop, five times by default,
checks the whole run.  ``TIFF_STAGE_LOOPS=20`` runs it as the suite did until 2026-12, and
the long form, with ``pvapy-ad-sim-server`` as the source and an optional CPU hog, is
``benchmarks/tiff_stage.py``.
"""

from __future__ import annotations

import os

import pytest
from frames import poisson_frames
from pva_consumers import Consumer, connected, consumer_args, ready, status, wait_until
from pva_source import FrameSource

LOOPS = int(os.environ.get("TIFF_STAGE_LOOPS", "5"))
FRAMES = 40
FILE_PROCESSOR = "pvapy.hpc.adOutputFileProcessor.AdOutputFileProcessor"

pytestmark = [pytest.mark.processes, pytest.mark.timeout(600)]


def test_output_record_exists_before_the_first_frame(channel_prefix, small_phase_onnx, tmp_path):
    args = {"model": str(small_phase_onnx), "batch_size": 8, "threads": 1}
    infer = Consumer(
        consumer_args(channel_prefix, f"{channel_prefix}:image", args), tmp_path / "infer.log"
    )
    try:
        # No source at all: the TIFF stage can still connect to the output record.
        assert wait_until(lambda: status(f"{channel_prefix}:1:status"), 60), infer.log()
        writer = Consumer(
            consumer_args(
                f"{channel_prefix}files",
                f"{channel_prefix}:*:output",
                {"outputDirectory": str(tmp_path / "tiff")},
                FILE_PROCESSOR,
            ),
            tmp_path / "files.log",
        )
        try:
            assert wait_until(lambda: connected(f"{channel_prefix}files:1:status"), 30)
        finally:
            writer.stop()
    finally:
        infer.stop()


def test_seed_two_stage_run_saves_one_tiff_per_frame_every_time(
    channel_prefix, small_phase_onnx, tmp_path
):
    frames = poisson_frames(FRAMES, seed=16)
    failures = []
    for loop in range(LOOPS):
        prefix = f"{channel_prefix}l{loop}"
        folder = tmp_path / f"loop{loop}"
        folder.mkdir()
        saved = run_two_stages(prefix, small_phase_onnx, frames, folder)
        if saved != FRAMES:
            failures.append(f"loop {loop}: {saved} of {FRAMES} TIFFs (logs in {folder})")
    assert not failures, "\n".join(failures)


def run_two_stages(prefix: str, model, frames, folder) -> int:
    """One seed run: source, PtychoNN stage, TIFF stage in the documented order; TIFFs written."""
    tiffs = folder / "tiff"
    fork = ("--n-consumers", "2", "--server-queue-size", "100")
    infer_args = {"model": str(model), "batch_size": 8, "threads": 1}
    writer_args = {
        "outputDirectory": str(tiffs),
        "outputFileNameFormat": "{uniqueId:06d}.{processorId}.tiff",
    }
    with FrameSource(f"{prefix}:image") as source:
        infer = Consumer(
            consumer_args(
                prefix, source.channel, infer_args, extra=(*fork, "--distributor-updates", "8")
            ),
            folder / "infer.log",
        )
        writer = None
        try:
            workers = [f"{prefix}:{k}:status" for k in (1, 2)]
            assert wait_until(lambda: all(ready(w) for w in workers), 90), infer.log()
            writer = Consumer(
                consumer_args(f"{prefix}files", f"{prefix}:*:output", writer_args, FILE_PROCESSOR)
                + list(fork),
                folder / "files.log",
            )
            files = [f"{prefix}files:{k}:status" for k in (1, 2)]
            assert wait_until(lambda: all(connected(f) for f in files), 60), writer.log()
            source.publish_frames(frames, rate_hz=100)
            published = lambda: sum(status(w)["userStats"]["published"] for w in workers)  # noqa: E731
            assert wait_until(lambda: published() == len(frames), 30), infer.log()
            wait_until(lambda: len(list(tiffs.glob("*.tiff"))) >= len(frames), 30)
            return len(list(tiffs.glob("*.tiff")))
        finally:
            if writer is not None:
                writer.stop()
            infer.stop()
