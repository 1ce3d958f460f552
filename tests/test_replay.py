"""Replay: a run's inference stream read back from the catalog, stitched, drawn."""

import os
import re
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path

import bluesky.plans as bp
import numpy as np
import pytest
from bluesky_tiled_plugins import TiledWriter
from bluesky_world import beamline
from catalog_runs import write_run
from event_model import compose_run
from matplotlib.image import imread

from ptychonn_ophyd.analysis.figure import covered, relative_phase, replay_accuracy, run_title
from ptychonn_ophyd.analysis.replay import (
    _point_of_frames,
    find_run,
    load_frame_statistics,
    load_inference,
    replay,
    stitch_run,
    stitch_with_frame_tilts,
)
from ptychonn_ophyd.analysis.stitch import stitch
from ptychonn_ophyd.catalog import assets_directory, open_catalog
from ptychonn_ophyd.errors import RunLookupError
from ptychonn_ophyd.models import open_model
from ptychonn_ophyd.models.bundled import demo_model_path
from ptychonn_ophyd.moments import frame_moments
from ptychonn_ophyd.physics.diffraction import DetectorConfig, PtychoSimulation
from ptychonn_ophyd.run_schema import FRAME_STATISTICS_KEY, FrameStatisticsKeys
from ptychonn_ophyd.session.plans import scan_with_inference

pytestmark = pytest.mark.processes


@pytest.fixture(scope="module")
def scanned(tmp_path_factory, small_phase_onnx):
    """A beamline and the uid of a 3x3 step scan it made (shared by this module's tests)."""
    folder = tmp_path_factory.mktemp("replay")
    with beamline(folder, f"replay{uuid.uuid4().hex[:8]}", small_phase_onnx) as world:
        plan = scan_with_inference(
            world.det, world.inference, world.sy, -0.3, 0.3, 3, world.sx, -0.3, 0.3, 3
        )
        (uid,) = world.RE(plan)
        yield world, uid


def test_replay_reads_the_run_back(scanned, tmp_path):
    world, uid = scanned
    data = load_inference(world.catalog[uid])

    assert sorted(data.unique_id) == list(range(1, 10))
    assert data.phase.shape == (9, 128, 128)
    phase, amplitude = stitch_run(data)
    assert amplitude is None
    assert phase.image.shape == (60 + 128, 60 + 128)  # 0.6 um of scan at 0.01 um a pixel
    assert np.isfinite(phase.image).all()

    image = imread(replay(uid, world.catalog, tmp_path / "replay.png"))
    assert image.ndim == 3 and image.shape[0] > 300


def test_positions_and_stitching_agree_with_the_simulation(scanned):
    world, uid = scanned
    data = load_inference(world.catalog[uid])
    obj = world.det.simulation.obj
    truth = PtychoSimulation(obj, world.det.simulation.probe, data.positions_um).ground_truth()[0]

    stitched = stitch(truth, data.positions_um, obj.pixel_size_um, shape=obj.shape)

    lit = stitched.weight > 0
    np.testing.assert_allclose(stitched.image[lit], obj.phase[lit], atol=1e-6)


def test_command_line_replays_a_saved_catalog_in_a_new_process(scanned, tmp_path):
    world, uid = scanned
    png = tmp_path / "cli.png"
    command = [sys.executable, "-m", "ptychonn_ophyd", "replay", uid[:8], "-o", str(png)]
    catalog = ["--catalog", str(world.catalog_folder)]

    done = subprocess.run(command + catalog, capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(f"wrote {png}")
    assert imread(png).ndim == 3
    missing = subprocess.run(
        [*command[:4], "no-such-run", *catalog], capture_output=True, text=True, timeout=120
    )
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"error: no run 'no-such-run' in the catalog {world.catalog_folder}"
    ]


def test_replay_of_a_catalog_that_does_not_exist_names_it_and_makes_none(tmp_path):
    absent = tmp_path / "no" / "catalog"
    command = [sys.executable, "-m", "ptychonn_ophyd", "replay", "-1"]
    env = {**os.environ, "PTYCHONN_CATALOG": str(absent)}
    env.pop("TILED_URI", None)

    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)

    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: no catalog at {absent} (no catalog.db there)"
    ]
    assert not (tmp_path / "no").exists()


def test_a_scan_id_several_runs_share_names_them_and_picks_none(scanned):
    world, uid = scanned
    scan_id = world.catalog[uid].metadata["start"]["scan_id"]
    world.RE.md["scan_id"] = scan_id - 1
    (other,) = world.RE(bp.count([world.sx]))

    with pytest.raises(RunLookupError) as raised:
        find_run(world.catalog, scan_id)

    message = str(raised.value)
    assert message.startswith(f"scan id {scan_id} is ambiguous in the catalog ")
    assert uid in message and other in message and "\n" not in message


def orange_pixels(png) -> int:
    """Pixels of the scan positions' colour (matplotlib's tab:orange) in a PNG."""
    rgb = imread(png)[..., :3]
    return int(np.sum((rgb[..., 0] > 0.9) & (abs(rgb[..., 1] - 0.5) < 0.1) & (rgb[..., 2] < 0.2)))


def test_the_figure_marks_positions_only_when_asked(scanned, tmp_path):
    world, uid = scanned
    command = [sys.executable, "-m", "ptychonn_ophyd", "replay", uid, "--catalog"]
    command += [str(world.catalog_folder), "-o"]

    for png, extra in ((tmp_path / "plain.png", []), (tmp_path / "dots.png", ["--positions"])):
        done = subprocess.run(
            [*command, str(png), *extra], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr

    assert orange_pixels(tmp_path / "plain.png") == 0
    assert orange_pixels(tmp_path / "dots.png") > 9  # nine positions, a few pixels each


def test_the_figure_shows_the_covered_region_relative_and_names_the_run(scanned):
    world, uid = scanned
    data = load_inference(world.catalog[uid])
    phase, _ = stitch_run(data)
    region = covered(phase.weight)

    assert region.any() and not region.all()  # the border one or two patches lit is cut
    assert np.all(phase.weight[region] >= 0.2 * phase.weight.max())
    assert np.median(relative_phase(phase.image, region)[region]) == pytest.approx(0, abs=1e-6)
    title = run_title(data.start, len(data.phase), replay_accuracy(data.start))
    model = open_model(world.inference.model.get())
    assert uid in title and "9 frames" in title and model.model_hash[:12] in title
    assert f"model {Path(world.inference.model.get()).name}" in title
    assert replay_accuracy(data.start) == ""  # a model without a training recipe


def test_the_bundled_model_brings_its_recorded_accuracy_for_each_stitching():
    start = {"ptychonn": {"model": str(demo_model_path())}}
    pattern = r"the model's held-out test in training: SSIM (0\.\d\d), phase rms 0\.\d\d rad"
    live = re.fullmatch(pattern, replay_accuracy(start))
    tilted = re.fullmatch(pattern, replay_accuracy(start, "tilt"))
    assert live and tilted
    assert float(tilted[1]) > float(live[1]), "frame tilts stitch better than the live mosaic"


def test_every_row_carries_the_moments_of_the_model_input_its_worker_inferred(scanned):
    world, uid = scanned
    run = world.catalog[uid]
    data = load_inference(run)
    # one frame a point: the detector's statistics are the moments of that very frame
    recorded = load_frame_statistics(run, data.unique_id)

    np.testing.assert_allclose(data.statistics.totals, recorded.totals, rtol=1e-8)
    np.testing.assert_allclose(data.statistics.centroids, recorded.centroids, atol=1e-5)
    assert np.ptp(data.statistics.centroids, 0).max() > 0.2  # rows differ


def test_each_row_gets_the_statistics_its_own_frame_recorded(scanned):
    world, uid = scanned
    run = world.catalog[uid]
    assert FrameStatisticsKeys.from_start(run.metadata["start"]) == FrameStatisticsKeys.of(
        world.det
    )
    data = load_inference(run)
    recorded = load_frame_statistics(run, data.unique_id)
    # frames drawn again at each row's position (fresh noise) have nearly its statistics
    totals, centroids = frame_moments(world.det.simulation.frames_at(data.positions_um))

    np.testing.assert_allclose(recorded.totals, totals, rtol=0.01)
    np.testing.assert_allclose(recorded.centroids, centroids, atol=0.05)
    spread = np.abs(centroids - centroids.mean(0)).max()
    assert spread > 0.2  # so rows paired with other points' statistics would fail


def test_every_frame_of_a_point_gets_the_statistics_of_that_point(tmp_path, small_phase_onnx):
    prefix = f"several{uuid.uuid4().hex[:8]}"
    with beamline(tmp_path, prefix, small_phase_onnx, frames_per_point=2) as world:
        plan = scan_with_inference(world.det, world.inference, world.sx, -0.3, 0.3, num=3)
        (uid,) = world.RE(plan)
        run = world.catalog[uid]
        data = load_inference(run)
        recorded = load_frame_statistics(run, data.unique_id)
        totals, centroids = frame_moments(world.det.simulation.frames_at(data.positions_um))

    assert len(data.phase) == 6
    for statistics in (recorded, data.statistics):  # the points', and each frame's own
        np.testing.assert_allclose(statistics.totals, totals, rtol=0.01)
        np.testing.assert_allclose(statistics.centroids, centroids, atol=0.05)
    assert np.ptp(centroids, 0).max() > 0.1  # points apart by more than the tolerance


def test_a_fly_scan_replays_with_every_patch_given_its_frames_tilt(tmp_path, small_phase_onnx):
    prefix = f"flytilt{uuid.uuid4().hex[:8]}"
    with beamline(tmp_path, prefix, small_phase_onnx) as world:
        world.det.fly_rate_hz = 200
        plan = scan_with_inference(
            world.det, world.inference, world.sy, -0.2, 0.2, 3, world.sx, -0.2, 0.2, 3, mode="fly"
        )
        (uid,) = world.RE(plan)
        data = load_inference(world.catalog[uid])
        sim = world.det.simulation
        totals, centroids = frame_moments(sim.frames_at(data.positions_um))
        plain, _ = stitch_run(data)

        tilted = stitch_with_frame_tilts(data, sim.probe)

    assert FRAME_STATISTICS_KEY not in data.start  # no point recorded statistics
    np.testing.assert_allclose(data.statistics.totals, totals, rtol=0.01)
    np.testing.assert_allclose(data.statistics.centroids, centroids, atol=0.05)
    lit = covered(tilted.weight)
    assert tilted.image.shape == plain.image.shape and np.isfinite(tilted.image[lit]).all()
    assert not np.allclose(tilted.image, plain.image)


def test_after_a_detector_restart_only_the_recorded_frames_pair_with_points():
    increasing = _point_of_frames(np.array([2, 4, 6]), np.array([1, 2, 3, 4, 5, 6, 7]))
    assert increasing.tolist() == [0, 0, 1, 1, 2, 2, 3]
    restarted = _point_of_frames(np.array([2, 4, 1]), np.array([1, 2, 3, 4, 5]))
    assert restarted.tolist() == [2, 0, 3, 1, 3]


def test_replay_with_the_probe_gives_every_patch_its_frames_tilt(scanned, tmp_path):
    world, uid = scanned
    data = load_inference(world.catalog[uid])
    probe = world.det.simulation.probe
    np.save(tmp_path / "probe.npy", probe)
    plain, _ = stitch_run(data)

    tilted = stitch_with_frame_tilts(data, probe)

    lit = covered(tilted.weight)
    assert tilted.image.shape == plain.image.shape and np.isfinite(tilted.image[lit]).all()
    assert not np.allclose(tilted.image, plain.image)
    png = tmp_path / "tilted.png"
    command = [sys.executable, "-m", "ptychonn_ophyd", "replay", uid, "-o", str(png)]
    command += ["--catalog", str(world.catalog_folder), "--probe", str(tmp_path / "probe.npy")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert imread(png).ndim == 3


def test_replay_refuses_a_probe_that_is_not_one_in_one_line(scanned, tmp_path):
    world, uid = scanned
    command = [sys.executable, "-m", "ptychonn_ophyd", "replay", uid]
    command += ["--catalog", str(world.catalog_folder), "--probe"]
    real, small = tmp_path / "real.npy", tmp_path / "small.npy"
    np.save(real, np.ones((128, 128)))
    np.save(small, np.ones((64, 64), complex))
    expected = {
        real: f"error: the probe in {real} must be a square complex array, not float64 (128, 128)",
        small: "error: probe (64, 64) does not fit patches (128, 128)",
        tmp_path / "absent.npy": f"error: cannot read a probe from {tmp_path / 'absent.npy'}: ",
    }
    for path, message in expected.items():
        done = subprocess.run([*command, str(path)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith(message)
    assert not list(Path.cwd().glob(f"scan-*-{uid[:8]}.png"))


def test_a_run_without_frame_statistics_is_refused_for_tilts_by_name(scanned):
    world, uid = scanned
    data = replace(load_inference(world.catalog[uid]), statistics=None)

    with pytest.raises(ValueError, match=f"run {uid} has no frame statistics: "):
        stitch_with_frame_tilts(data, world.det.simulation.probe)


def test_statistics_named_wrongly_are_refused_by_name_and_each_rows_own_serve(scanned):
    world, _ = scanned
    named = {"unique_id": "det_last_unique_id", "total": "det_sum"}
    named |= {"centroid_x": "det_cx", "centroid_y": "det_stats_centroid_y"}
    plan = scan_with_inference(
        world.det, world.inference, world.sx, 0, 0.1, num=2, md={FRAME_STATISTICS_KEY: named}
    )
    (uid,) = world.RE(plan)
    run = world.catalog[uid]

    data = load_inference(run)

    assert len(data.phase) == 2 and np.isfinite(data.statistics.centroids).all()
    with pytest.raises(ValueError) as refused:
        load_frame_statistics(run, data.unique_id)
    assert str(refused.value) == (
        f"run {uid}: its primary stream lacks det_sum, det_cx, which its start document's "
        "'frame_statistics' names"
    )


def test_a_run_without_input_moments_logs_statistics_named_wrongly_and_still_replays(
    tmp_path, caplog
):
    folder = tmp_path / "catalog"
    catalog = open_catalog(folder)
    named = {"unique_id": "det_last_unique_id", "total": "det_sum"}
    named |= {"centroid_x": "det_cx", "centroid_y": "det_cy"}
    uid = write_run(catalog, assets_directory(folder), 3, {FRAME_STATISTICS_KEY: named})

    data = load_inference(catalog[uid])

    assert data.statistics is None and len(data.phase) == 3
    replay_log = "ptychonn_ophyd.analysis.replay"
    (warning,) = [r.getMessage() for r in caplog.records if r.name == replay_log]
    assert warning == (
        f"run {uid}: its primary stream lacks det_last_unique_id, det_sum, det_cx, det_cy, "
        "which its start document's 'frame_statistics' names; its patches keep their own tilts"
    )


def test_frame_statistics_named_wrongly_in_the_start_document_are_refused():
    start = {"uid": "u1", "frame_statistics": {"total": "det_total"}}

    with pytest.raises(ValueError, match="must map exactly unique_id, total, centroid_x"):
        FrameStatisticsKeys.from_start(start)
    assert FrameStatisticsKeys.from_start({"uid": "u2"}) is None


def test_digits_name_a_scan_id_where_a_run_has_it_and_a_partial_uid_otherwise(scanned):
    world, _ = scanned
    digits = "".join(str(int(c, 16) % 10) for c in uuid.uuid4().hex[:8])  # as 1 uid in 43
    scan_id = 10**9 + int(digits)  # no other run has it
    run = compose_run(uid=f"{digits}-{uuid.uuid4()}"[:36], metadata={"scan_id": scan_id})
    writer = TiledWriter(world.catalog)
    writer("start", run.start_doc)
    writer("stop", run.compose_stop())

    for name in (digits, str(scan_id)):
        assert find_run(world.catalog, name).metadata["start"]["uid"] == run.start_doc["uid"]


def test_centroids_of_a_binned_detector_come_back_in_the_model_inputs_pixels(
    tmp_path, small_phase_onnx
):
    binned = DetectorConfig(bin_factor=4, border=2)  # 516x516 frames, cropped and binned
    prefix = f"binned{uuid.uuid4().hex[:8]}"
    crop_and_bin = {"crop": 2, "bin": 4}
    with beamline(
        tmp_path, prefix, small_phase_onnx, detector=binned, preprocess=crop_and_bin
    ) as world:
        plan = scan_with_inference(world.det, world.inference, world.sx, -0.2, 0.2, num=3)
        (uid,) = world.RE(plan)
        run = world.catalog[uid]
        data = load_inference(run)
        recorded = load_frame_statistics(run, data.unique_id)
        sim = world.det.simulation

    unbinned = PtychoSimulation(sim.obj, sim.probe, data.positions_um, DetectorConfig())
    _, centroids = frame_moments(unbinned.frames())
    for statistics in (recorded, data.statistics):  # the detector's, and the workers'
        np.testing.assert_allclose(statistics.centroids, centroids, atol=0.05)
