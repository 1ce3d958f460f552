"""PtychoNNDetector: staging starts the pool, trigger waits for inference, standard plans."""

from types import SimpleNamespace

import bluesky.plan_stubs as bps
import bluesky.plans as bp
import bluesky.preprocessors as bpp
import numpy as np
import pytest
from bluesky_world import assert_gone, beamline, until
from ophyd.device import Staged
from pva_consumers import process_gone

from ptychonn_ophyd.errors import InferenceTimeoutError, PoolStartError
from ptychonn_ophyd.models import open_model
from ptychonn_ophyd.run_schema import frame_accounting, model_hash

pytestmark = pytest.mark.processes


@pytest.fixture
def world(tmp_path, channel_prefix, small_phase_onnx):
    """A one-worker simulated beamline (see :func:`bluesky_world.beamline`)."""
    with beamline(tmp_path, channel_prefix, small_phase_onnx) as built:
        yield built


def explicit_staging(det, inference):
    yield from bps.stage(det)
    yield from bps.stage(inference)
    yield from bps.open_run(md={"detectors": [det.name, inference.name]})
    for _ in range(2):
        yield from bps.trigger_and_read([det, inference])
    yield from bps.close_run()
    yield from bps.unstage(inference)
    yield from bps.unstage(det)


@pytest.mark.parametrize(
    ("plan", "frames"),
    [
        (lambda w: bp.count([w.det, w.inference], num=3), 3),
        (lambda w: bp.scan([w.det, w.inference], w.sx, -0.1, 0.1, 3), 3),
        (lambda w: bp.grid_scan([w.det, w.inference], w.sy, -0.1, 0.1, 2, w.sx, -0.1, 0.1, 2), 4),
        (lambda w: explicit_staging(w.det, w.inference), 2),
    ],
    ids=["count", "scan", "grid_scan", "explicit_stage"],
)
def test_works_in_standard_plans(world, plan, frames):
    (uid,) = world.RE(plan(world))

    run = world.catalog[uid]
    primary = run["primary"].read()
    assert primary["inference_inferred"].values[-1] == frames
    assert list(primary["inference_inferred"].values) == list(range(1, frames + 1))
    assert sorted(run["inference"]["unique_id"].read()) == list(range(1, frames + 1))
    assert world.inference.pool is None  # unstaged at the end of the plan
    assert_gone(world.pids)


def test_configuration_and_readings(world, small_phase_onnx):
    world.det.stage()
    world.inference.stage()
    world.remember_workers()
    try:
        config = world.inference.read_configuration()
        assert config["inference_model_hash"]["value"] == open_model(small_phase_onnx).model_hash
        assert "onnxruntime" in config["inference_engine"]["value"]
        gpus = world.inference.pool.facts()["gpu_names"]  # none on a CPU machine
        assert config["inference_gpu_names"]["value"] == ", ".join(gpus)
        assert config["inference_n_workers"]["value"] == 1
        assert config["inference_backend"]["value"] == "onnxruntime"
        assert set(world.inference.describe_configuration()) == set(config)

        world.det.trigger()
        world.inference.trigger().wait(10)
        reading = world.inference.read()
        assert reading["inference_inferred"]["value"] == 1
        assert {k.removeprefix("inference_") for k in reading} == {
            "inferred",
            "dropped",
            "rejected",
            "rate",
            "latency_p50",
            "latency_p99",
        }
        assert world.inference.hints == {"fields": ["inference_inferred"]}
    finally:
        world.inference.unstage()
        world.det.unstage()
    assert world.inference.pool is None
    assert_gone(world.pids)


def test_trigger_fails_naming_the_frames_not_inferred(world):
    world.det.stage()
    world.inference.source = SimpleNamespace(last_unique_id=0)
    world.inference.trigger_timeout = 1.0
    world.inference.stage()
    try:
        world.inference.source.last_unique_id = 3  # three frames claimed, none sent
        status = world.inference.trigger()
        with pytest.raises(InferenceTimeoutError, match=r"3 frame\(s\).*uniqueId 1, 2, 3"):
            status.wait(10)
        assert status.exception().missing == [1, 2, 3]
    finally:
        world.inference.unstage()
        world.det.unstage()


def test_a_worker_that_cannot_start_fails_stage_clearly(world, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    world.inference.model.put(str(broken))
    world.inference.start_timeout = 30
    with pytest.raises(PoolStartError, match="worker 1"):
        world.RE(bp.count([world.det, world.inference]))
    assert world.inference._staged == Staged.no
    assert world.inference.pool is None


def test_workers_kept_warm_take_the_next_scan_with_the_same_settings(
    tmp_path, channel_prefix, small_phase_onnx
):
    with beamline(tmp_path, channel_prefix, small_phase_onnx, keep_warm=True) as w:
        said: list[str] = []
        w.inference.announce = said.append
        w.RE(bp.count([w.det, w.inference], num=2))
        kept = set(w.pids)
        assert w.inference.pool is None and not any(process_gone(p) for p in kept)
        assert said[0].startswith("inference: starting 1 worker on ")
        assert said[-1].startswith("inference: 1 worker ready in ")

        (second,) = w.RE(bp.count([w.det, w.inference], num=2))
        assert set(w.pids) == kept  # no new worker started
        assert said[-1] == "inference: 1 worker kept warm, ready at once"
        assert sorted(w.catalog[second]["inference"]["unique_id"].read()) == [3, 4]
        accounting = frame_accounting(w.catalog[second])
        assert (accounting["received"], accounting["stored"]) == (2, 2)  # not the first's

        w.inference.batch_size.put(4)  # other settings: other workers
        w.RE(bp.count([w.det, w.inference], num=1))
        assert set(w.pids) > kept
        assert_gone(kept)

        w.inference.shutdown()
        assert_gone(w.pids)


def test_a_warm_pool_s_earlier_lost_frames_do_not_finish_the_next_staging_s_points(
    tmp_path, channel_prefix, small_phase_onnx
):
    """Kept warm, the pool's counters run on from its first staging: frames it rejected
    then must not stand in for this staging's frames still without a result."""
    with beamline(tmp_path, channel_prefix, small_phase_onnx, keep_warm=True) as w:
        w.det.stage()
        w.inference.stage()
        w.remember_workers()
        w.det.server.publish(np.ones((5, 64, 64), np.float32), [[0.0, 0.0]] * 5, [0] * 5)
        until(lambda: sum(w.inference.pool.stats().rejected.values()) == 5, "5 frames rejected")
        w.inference.unstage()

        w.inference.source = SimpleNamespace(last_unique_id=5)
        w.inference.trigger_timeout = 2.0
        w.inference.stage()
        assert w.inference.pool is not None and set(w.inference.pool.pids) <= w.pids
        w.inference.source.last_unique_id = 8  # three frames claimed, none sent
        status = w.inference.trigger()
        with pytest.raises(InferenceTimeoutError, match=r"uniqueId 6, 7, 8"):
            status.wait(30)
        w.inference.unstage()
        w.det.unstage()


def test_a_model_swapped_in_mid_run_shows_in_its_rows_and_accounting(
    tmp_path, channel_prefix, small_phase_onnx, make_checkpoint
):
    new_model = make_checkpoint("small_phase", seed=5)[1]
    swap_dirs = [str(new_model.parent)]
    with beamline(
        tmp_path, channel_prefix, small_phase_onnx, frames_per_point=3, swap_dirs=swap_dirs
    ) as w:
        hashes = []

        @bpp.stage_decorator([w.det, w.inference])
        @bpp.run_decorator(md={"detectors": [w.det.name, w.inference.name]})
        def swap_after_two_points():
            for _ in range(2):
                yield from bps.trigger_and_read([w.det, w.inference])
            hashes.append(w.inference.model_hash.get())
            hashes.append(w.inference.pool.swap_model(new_model, timeout=60))
            for _ in range(2):
                yield from bps.trigger_and_read([w.det, w.inference])

        (uid,) = w.RE(swap_after_two_points())
        old, new = hashes
        rows = w.catalog[uid]["inference"].read()
        by_id = sorted(zip(rows["unique_id"].values, rows["model"].values, strict=True))
        assert [model_hash(n) for _, n in by_id] == [old] * 6 + [new] * 6
        assert frame_accounting(w.catalog[uid])["models"] == {old: 6, new: 6}
