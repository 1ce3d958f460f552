"""The detector restarts mid-run on the same channel, its uniqueId counting from 1 again:
every frame it produced is inferred or counted, and duplicates are removed and counted."""

from __future__ import annotations

import time

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
import pytest
from bluesky_world import assert_every_frame_counted, beamline

from ptychonn_ophyd.session.stream import STREAM, frame_accounting
from ptychonn_ophyd.sim.server import SimDetectorServer

pytestmark = pytest.mark.timeout(300)

RATE_HZ = 40
DEADLINE = 60.0
"""Generous: the machine is shared and busy."""


def wait_for(condition, what: str, deadline: float = DEADLINE) -> float:
    """Yield to the RunEngine until ``condition()``; return the seconds it took."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < deadline, f"no {what} in {deadline} s"
        yield from bps.sleep(0.02)
    return time.monotonic() - start


def restarting_source(w, outage: float, reconnect: list[float]):
    """A run whose detector free-runs, stops for ``outage`` s and starts again at id 1."""
    positions = np.zeros((8, 2))
    frames = w.det.simulation.frames_at(positions)
    received = lambda: w.inference.pool_stats().received  # noqa: E731

    def body():
        w.det.server.start_free_run(frames, positions, RATE_HZ)
        before = received()
        yield from wait_for(lambda: received() >= before + 40, "frames before the restart")
        w.det.server.stop()
        yield from bps.sleep(outage)
        w.det.server = SimDetectorServer(w.det.channel.get()).start()
        w.det.server.start_free_run(frames, positions, RATE_HZ)
        back = received()
        reconnect.append((yield from wait_for(lambda: received() > back, "frames after it")))
        yield from wait_for(lambda: received() >= back + 40, "frames after the restart")
        w.det.server.stop_free_run()

    md = {"detectors": [w.det.name, w.inference.name]}
    return (yield from bpp.stage_wrapper(bpp.run_wrapper(body(), md=md), [w.det, w.inference]))


@pytest.mark.parametrize("outage", [3.0])
def test_a_restarted_source_loses_no_frame_silently(
    tmp_path, channel_prefix, small_phase_onnx, outage
):
    reconnect: list[float] = []
    with beamline(tmp_path, channel_prefix, small_phase_onnx, n_workers=2) as w:
        (uid,) = w.RE(restarting_source(w, outage, reconnect))
        run = w.catalog[uid]
        summary = frame_accounting(run)
        unique_ids = np.asarray(run[STREAM].read()["unique_id"])
        frame_times = np.asarray(run[STREAM].read()["frame_time"])

    print(f"reconnect after {reconnect[0]:.2f} s; accounting {summary}")
    assert summary["source_restarts"] == 1
    assert_every_frame_counted(summary)
    assert summary["inferred"] >= 80 and summary["missed"] > 0
    assert len(set(zip(unique_ids, frame_times, strict=True))) == len(unique_ids)
    assert summary["stored"] == len(unique_ids) == summary["inferred"]
    assert reconnect[0] < 2.0, f"a worker received again only {reconnect[0]:.2f} s after"
