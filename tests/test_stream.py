"""The inference stream: the grace period, late results, and runs that do not use the device."""

import time

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.preprocessors as bpp
import pytest
from bluesky_world import beamline

from ptychonn_ophyd.run_schema import frame_accounting

pytestmark = pytest.mark.processes


@pytest.fixture
def world(tmp_path, channel_prefix, small_phase_onnx):
    """A one-worker simulated beamline (see :func:`bluesky_world.beamline`)."""
    with beamline(tmp_path, channel_prefix, small_phase_onnx) as built:
        yield built


def frames_then_stop(det, inference):
    """A run whose frames are still being inferred when it closes."""

    @bpp.stage_decorator([det, inference])
    @bpp.run_decorator(md={"detectors": [det.name, inference.name]})
    def inner():
        yield from bps.trigger(det, wait=True)

    return (yield from inner())


@pytest.mark.parametrize("grace", [30.0, 0.0])
def test_results_after_the_stop_document(tmp_path, channel_prefix, small_phase_onnx, grace):
    with beamline(tmp_path, channel_prefix, small_phase_onnx, grace=grace, frames_per_point=6) as w:
        (uid,) = w.RE(frames_then_stop(w.det, w.inference))
        summary = frame_accounting(w.catalog[uid])
        assert summary["produced"] == 6
        if grace:
            assert summary["stored"] == 6
            assert summary["not_in_time"] == 0
        else:
            assert summary["stored"] + summary["not_in_time"] == 6
        stream = w.catalog[uid].get("inference")  # declared at open_run, columns with rows
        rows = len(stream["unique_id"].read()) if "unique_id" in stream else 0
        assert rows == summary["stored"]


def test_late_results_are_counted(tmp_path, channel_prefix, small_phase_onnx):
    with beamline(tmp_path, channel_prefix, small_phase_onnx, grace=0.0, frames_per_point=6) as w:
        w.det.stage()
        w.inference.stage()
        try:
            plan = bps.trigger(w.det, wait=True)
            (uid,) = w.RE(bpp.run_wrapper(plan, md={"detectors": ["inference"]}))
            deadline = time.monotonic() + 10
            summary = frame_accounting(w.catalog[uid])
            while w.supplement.late(uid) < summary["not_in_time"] and time.monotonic() < deadline:
                time.sleep(0.05)
            assert summary["stored"] + w.supplement.late(uid) == 6
        finally:
            w.inference.unstage()
            w.det.unstage()


def test_runs_without_the_device_pass_through_unchanged(world):
    seen = []
    world.RE.subscribe(lambda name, doc: seen.append((name, doc)))
    (uid,) = world.RE(bp.count([world.det], num=2))

    assert world.documents == seen
    assert world.inference.pool is None
    assert list(world.catalog[uid]) == ["primary"]
