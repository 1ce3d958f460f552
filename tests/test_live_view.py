"""The live view: a scan's results stitched as they arrive, on a PVA channel, stored
with the run, and equal to what replay stitches from the stored rows."""

import threading
import time

import matplotlib
import numpy as np
import pvaccess as pva
import pytest
from bluesky_world import beamline

from ptychonn_ophyd.analysis.figure import covered
from ptychonn_ophyd.analysis.reconstruction import compare_phase
from ptychonn_ophyd.analysis.replay import load_inference, stitch_run, stitch_with_frame_tilts
from ptychonn_ophyd.analysis.solved_mosaic import SolvedMosaic
from ptychonn_ophyd.models.bundled import demo_model_path
from ptychonn_ophyd.physics.probe import make_probe, probe_weight
from ptychonn_ophyd.run_schema import frame_accounting
from ptychonn_ophyd.session.live_view import LiveView
from ptychonn_ophyd.session.plans import scan_with_inference
from ptychonn_ophyd.wire import mosaic_channel, mosaic_coverage_channel, parse_ntndarray

pytestmark = pytest.mark.processes


class MosaicWatcher:
    """Every update of a mosaic channel, and how many came before the run's stop."""

    def __init__(self, prefix: str, timeout: float = 30.0) -> None:
        self.updates: list = []
        self.coverage: dict[int, np.ndarray] = {}
        self.before_stop: list[int] = []
        self._lock = threading.Lock()
        self._channels = [
            pva.Channel(mosaic_coverage_channel(prefix)),
            pva.Channel(mosaic_channel(prefix)),
        ]
        for channel, receive in zip(self._channels, (self._covered, self._receive), strict=True):
            channel.monitor(receive, "field()")
            deadline = time.monotonic() + timeout
            while not channel.getMonitorCounters().get("nReceived", 0):
                assert time.monotonic() < deadline, f"no connection to {channel.getName()}"
                time.sleep(0.05)

    def _covered(self, pv) -> None:
        if pv["uniqueId"]:
            with self._lock:
                self.coverage[pv["uniqueId"]] = parse_ntndarray(pv).image.astype(bool)

    def _receive(self, pv) -> None:
        if pv["uniqueId"]:
            array = parse_ntndarray(pv)
            with self._lock:
                self.updates.append((pv["uniqueId"], array.attributes, array.image.copy()))

    def on_document(self, name, doc) -> None:
        if name == "stop":
            with self._lock:
                self.before_stop = [int(a["frames"]) for _, a, _ in self.updates]

    def final(self, frames: int, timeout: float = 30.0):
        """The update holding ``frames`` patches (waiting for it and its coverage), NaN
        where the scan has not been; every update is checked finite, filled with its
        ``fill``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                done = [u for u in self.updates if int(u[1]["frames"]) == frames]
                if done and done[-1][0] in self.coverage:
                    return self._masked(*done[-1])
            time.sleep(0.05)
        raise AssertionError(f"no mosaic update with {frames} frames in {timeout} s")

    def _masked(self, unique_id: int, attributes: dict, image: np.ndarray):
        for _, _, each in self.updates:
            assert np.isfinite(each).all(), "a NaN in the mosaic channel"
        covered = self.coverage[unique_id]
        assert (image[~covered] == np.float32(attributes["fill"])).all()
        return attributes, np.where(covered, image, np.nan)

    def close(self) -> None:
        for channel in self._channels:
            channel.stopMonitor()


def live_view(**settings) -> LiveView:
    return LiveView(probe_weight(make_probe()), figure=False, update_period=0.05, **settings)


def check_live_equals_replay(world, watcher, uid, frames):
    run = world.catalog[uid]
    assert frame_accounting(run)["stored"] == frames
    data = load_inference(run)
    stored = data.mosaic
    assert stored is not None and stored.frames == frames
    np.testing.assert_array_equal(stored.window, probe_weight(make_probe()))
    replayed, _ = stitch_run(data)  # with the window stored in the run
    attributes, image = watcher.final(frames)
    assert attributes["scan_uid"] == uid
    assert attributes["pixel_size_um"] == pytest.approx(0.01)
    assert (attributes["center_row"], attributes["center_col"]) == replayed.center
    assert stored.phase.center == replayed.center
    for live in (image, stored.phase.image):
        np.testing.assert_array_equal(np.isnan(live), np.isnan(replayed.image))
        np.testing.assert_allclose(live, replayed.image, rtol=1e-5, atol=1e-5, equal_nan=True)
    np.testing.assert_allclose(stored.phase.weight, replayed.weight, rtol=1e-6)
    assert np.isnan(image).any() and np.isfinite(image).any()  # coverage shows


def scan_and_check(tmp_path, channel_prefix, model, n: int, half: float, **scan) -> None:
    """An n x n scan over +-half um: the channel updates before the stop, ends as replayed."""
    with beamline(tmp_path, channel_prefix, model, live_view=live_view()) as w:
        watcher = MosaicWatcher(f"{channel_prefix}:inference")
        w.RE.subscribe(watcher.on_document)
        w.det.fly_rate_hz = 40
        try:
            (uid,) = w.RE(
                scan_with_inference(
                    w.det, w.inference, w.sy, -half, half, n, w.sx, -half, half, n, **scan
                )
            )
            assert any(0 < k < n * n for k in watcher.before_stop), watcher.before_stop
            check_live_equals_replay(w, watcher, uid, n * n)
        finally:
            watcher.close()


def test_step_scan_mosaic_updates_during_the_scan_and_ends_as_replayed(
    tmp_path, channel_prefix, small_phase_onnx
):
    scan_and_check(tmp_path, channel_prefix, small_phase_onnx, 5, 0.2)


def test_fly_scan_mosaic_updates_during_the_scan_and_ends_as_replayed(
    tmp_path, channel_prefix, small_phase_onnx
):
    scan_and_check(tmp_path, channel_prefix, small_phase_onnx, 7, 0.3, mode="fly")


class Progress:
    """The live view's snapshots as a scan goes, polled, judged against the truth."""

    def __init__(self, live: LiveView, truth: np.ndarray) -> None:
        self.live, self.truth = live, truth
        self.judged: list[tuple[int, float, float]] = []  # frames, SSIM, phase rms
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        seen = None
        while not self._stop.wait(0.02):
            snapshot = self.live.latest
            if snapshot is not None and snapshot is not seen and snapshot.frames:
                seen = snapshot
                image = snapshot.phase.on_grid(self.truth.shape)
                ssim, rms = compare_phase(image.image, self.truth, covered(image.weight))
                self.judged.append((snapshot.frames, ssim, rms))

    def stop(self) -> list[tuple[int, float, float]]:
        self._stop.set()
        self._thread.join()
        return self.judged


def converge_and_check(tmp_path, channel_prefix, n: int, half: float, **scan) -> None:
    """An n x n scan of the held-out object with the demo model and the probe: the
    picture is sharp by half the scan and ends as replay stitches it with the probe."""
    live = LiveView(probe=make_probe(), figure=False, update_period=0.05)
    with beamline(tmp_path, channel_prefix, demo_model_path(), live_view=live) as w:
        w.det.fly_rate_hz = 40
        progress = Progress(live, w.det.simulation.obj.phase)
        try:
            (uid,) = w.RE(
                scan_with_inference(
                    w.det, w.inference, w.sy, -half, half, n, w.sx, -half, half, n, **scan
                )
            )
        finally:
            judged = progress.stop()
        data = load_inference(w.catalog[uid])
    total = n * n
    assert data.mosaic.frames == total and data.mosaic.stitching == SolvedMosaic.stitching
    halfway = [(k, ssim, rms) for k, ssim, rms in judged if total / 2 <= k < total]
    assert halfway, f"no picture between half the scan and its end: {judged}"
    _, ssim, rms = halfway[0]
    assert ssim >= 0.85 and rms <= 0.12, judged
    final = data.mosaic.phase.on_grid(w.det.simulation.obj.shape)
    ssim, rms = compare_phase(final.image, w.det.simulation.obj.phase, covered(final.weight))
    assert ssim >= 0.86 and rms <= 0.10, (ssim, rms)  # the demo's 625 points: 0.90
    replayed = stitch_with_frame_tilts(data, make_probe())
    assert replayed.center == data.mosaic.phase.center
    np.testing.assert_allclose(
        data.mosaic.phase.image, replayed.image, atol=1e-5, rtol=1e-5, equal_nan=True
    )


def test_with_the_probe_a_step_scan_converges_to_the_object_and_ends_as_replayed(
    tmp_path, channel_prefix
):
    converge_and_check(tmp_path, channel_prefix, 9, 0.4)


def test_with_the_probe_a_fly_scan_converges_to_the_object_and_ends_as_replayed(
    tmp_path, channel_prefix
):
    converge_and_check(tmp_path, channel_prefix, 11, 0.5, mode="fly")


def test_a_headless_run_makes_no_window_and_no_error(tmp_path, channel_prefix, small_phase_onnx):
    import matplotlib.pyplot as plt

    matplotlib.use("Agg")
    live = LiveView(probe_weight(make_probe()), channel=False)  # figure="auto"
    assert not live.figure_wanted
    with beamline(tmp_path, channel_prefix, small_phase_onnx, live_view=live) as w:
        (uid,) = w.RE(scan_with_inference(w.det, w.inference, w.sx, -0.2, 0.2, w.sy, 0, 0, num=4))
        run = w.catalog[uid]
        assert run.metadata["stop"]["exit_status"] == "success"
        assert load_inference(run).mosaic.frames == 4
    assert plt.get_fignums() == []


def test_the_figure_draws_the_latest_mosaic_and_dims_where_the_scan_has_not_been():
    import matplotlib.pyplot as plt

    from ptychonn_ophyd.analysis.mosaic import Mosaic
    from ptychonn_ophyd.session.live_view import Snapshot
    from ptychonn_ophyd.session.mosaic_figure import MosaicFigure

    matplotlib.use("Agg")
    live = LiveView(probe_weight(make_probe()), figure=True, channel=False)
    mosaic = Mosaic(0.01, live.window)
    mosaic.add(np.zeros((2, 128, 128)), [(0, 0), (0.3, 0)])
    live.latest = Snapshot(
        "uid-1", mosaic.phase(), None, mosaic.frames, mosaic.window, mosaic.stitching
    )
    figure = MosaicFigure(live)
    try:
        figure("start", {"uid": "uid-1", "time": 0.0})
        figure("stop", {"uid": "s", "run_start": "uid-1", "time": 1.0, "exit_status": "success"})
        shown = figure._image.get_array()
        assert shown.shape == mosaic.phase().image.shape
        assert np.ma.is_masked(shown)  # NaN where no patch landed is masked, not drawn
    finally:
        plt.close("all")


def test_the_figure_waits_for_the_first_patch_instead_of_drawing_an_empty_extent():
    import warnings

    import matplotlib.pyplot as plt

    from ptychonn_ophyd.analysis.mosaic import Mosaic
    from ptychonn_ophyd.session.live_view import Snapshot
    from ptychonn_ophyd.session.mosaic_figure import MosaicFigure

    matplotlib.use("Agg")
    live = LiveView(probe_weight(make_probe()), figure=True, channel=False)
    mosaic = Mosaic(0.01, live.window)
    live.latest = Snapshot("uid-2", mosaic.phase(), None, 0, mosaic.window, mosaic.stitching)
    figure = MosaicFigure(live)
    try:
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            figure("start", {"uid": "uid-2", "time": 0.0})
            figure("stop", {"uid": "s", "run_start": "uid-2", "time": 1.0})
        assert [str(w.message) for w in warned] == []  # "identical low and high xlims"
        assert figure._image is None
        mosaic.add(np.zeros((1, 128, 128)), [(0, 0)])
        live.latest = Snapshot("uid-2", mosaic.phase(), None, 1, mosaic.window, "")
        figure.refresh()
        assert figure._image.get_array().shape == (128, 128)
    finally:
        plt.close("all")


def test_an_idle_mosaic_thread_waits_instead_of_spinning():
    view = LiveView(None, channel=False, figure=False, update_period=0.05)
    assert view.begin("idle-run", 0.01, (128, 128), amplitude=False)
    busy_before, wall_before = time.process_time(), time.monotonic()
    time.sleep(1.0)  # measuring idleness itself: no result arrives in this second
    busy = time.process_time() - busy_before
    assert busy < 0.3 * (time.monotonic() - wall_before), f"{busy:.2f} s of CPU while idle"
    assert view.finish().frames == 0
