"""How the live view stitches, without processes: with a probe each patch takes its
frame's tilt and the image converges to replay's; without one it says so once."""

from __future__ import annotations

import logging
import threading
import time
from typing import ClassVar

import numpy as np
import pytest

from ptychonn_ophyd.analysis.mosaic import Mosaic
from ptychonn_ophyd.analysis.solved_mosaic import SolvedMosaic
from ptychonn_ophyd.moments import frame_moments
from ptychonn_ophyd.physics.diffraction import DetectorConfig, PtychoSimulation
from ptychonn_ophyd.physics.objects import held_out_object
from ptychonn_ophyd.physics.probe import make_probe
from ptychonn_ophyd.physics.scan import raster_scan
from ptychonn_ophyd.run_schema import INPUT_MOMENTS
from ptychonn_ophyd.session.live_view import LiveView


@pytest.fixture(scope="module")
def rows() -> dict[str, np.ndarray]:
    """The rows a 7 x 7 scan's run hands the live view, true patches."""
    sim = PtychoSimulation(
        held_out_object(256), make_probe(), raster_scan(7, 7, 0.1), DetectorConfig(noise=False)
    )
    totals, centroids = frame_moments(sim.frames())
    x, y = sim.positions_um.T
    phase = sim.ground_truth()[0].astype(np.float32)
    moments = dict(zip(INPUT_MOMENTS, (totals, *centroids.T), strict=True))
    return {"phase": phase, "x": x, "y": y, **moments}


def view(**kw) -> LiveView:
    return LiveView(figure=False, channel=False, update_period=0.01, **kw)


def stitched(live: LiveView, rows: dict[str, np.ndarray], uid: str):
    assert live.begin(uid, 0.01, rows["phase"].shape[1:], amplitude=False)
    for start in range(0, len(rows["phase"]), 5):
        live.take({key: value[start : start + 5] for key, value in rows.items()})
    return live.finish()


def test_with_the_probe_the_final_image_is_the_solved_mosaic_of_its_rows(rows):
    probe = make_probe()
    snapshot = stitched(view(probe=probe), rows, "run-1")
    mosaic = SolvedMosaic(0.01, probe)
    totals, cx, cy = (rows[key] for key in INPUT_MOMENTS)
    mosaic.add(
        rows["phase"], np.stack([rows["x"], rows["y"]], 1), None, (totals, np.stack([cx, cy], 1))
    )
    expected = mosaic.phase()
    assert snapshot.frames == len(rows["phase"])
    assert snapshot.stitching == SolvedMosaic.stitching
    assert snapshot.phase.center == expected.center
    np.testing.assert_allclose(snapshot.phase.image, expected.image, atol=1e-5, equal_nan=True)


def test_a_probe_file_is_read_and_a_bad_one_refused_in_one_line(tmp_path):
    path = tmp_path / "probe.npy"
    np.save(path, make_probe())
    np.testing.assert_array_equal(view(probe=path).probe, make_probe())
    np.save(path, np.abs(make_probe()))
    with pytest.raises(ValueError, match=r"the probe in .*probe.npy must be a square complex"):
        view(probe=str(path))
    with pytest.raises(ValueError, match=r"cannot read a probe from .*missing\.npy"):
        view(probe=tmp_path / "missing.npy")


def test_without_a_probe_it_stitches_as_before_and_says_so_once(rows, caplog):
    live = view()
    with caplog.at_level(logging.WARNING, "ptychonn_ophyd.session.live_view"):
        first = stitched(live, rows, "run-1")
        second = stitched(live, rows, "run-2")
    said = [r.getMessage() for r in caplog.records if "has no probe" in r.getMessage()]
    assert len(said) == 1 and "LiveView(probe=...)" in said[0]
    assert first.stitching == second.stitching == Mosaic.stitching
    mosaic = Mosaic(0.01, patch_shape=rows["phase"].shape[1:])
    mosaic.add(rows["phase"], np.stack([rows["x"], rows["y"]], 1))
    np.testing.assert_allclose(second.phase.image, mosaic.phase().image, atol=1e-6, equal_nan=True)


def test_a_probe_of_another_size_than_the_patches_falls_back_with_a_warning(rows, caplog):
    live = view(probe=make_probe()[:64, :64])
    with caplog.at_level(logging.WARNING, "ptychonn_ophyd.session.live_view"):
        snapshot = stitched(live, rows, "run-1")
    assert snapshot.stitching == Mosaic.stitching
    assert any("does not fit the run's patches" in r.getMessage() for r in caplog.records)


class _HeldPreview(SolvedMosaic):
    """A solved mosaic whose first preview waits until the test releases it, and which
    counts the patches added while it solved."""

    previewing = threading.Event()
    release = threading.Event()
    added_during: ClassVar[list[int]] = []

    def preview(self, between=None):
        if not self.previewing.is_set():
            self.previewing.set()
            assert self.release.wait(60), "the test never released the preview"
        before = self.frames
        image = super().preview(between)
        self.added_during.append(self.frames - before)
        return image


def test_rows_arriving_during_a_preview_are_added_and_an_end_then_still_gives_them_all(
    rows, monkeypatch
):
    monkeypatch.setattr("ptychonn_ophyd.session.live_view.SolvedMosaic", _HeldPreview)
    live = view(probe=make_probe())
    assert live.begin("run-held", 0.01, rows["phase"].shape[1:], amplitude=False)
    batches = [
        {key: value[start : start + 5] for key, value in rows.items()}
        for start in range(0, len(rows["phase"]), 5)
    ]
    live.take(batches[0])
    assert _HeldPreview.previewing.wait(60), "no preview began"
    for batch in batches[1:]:
        live.take(batch)
    queued = live._run.rows  # the stitching thread, held in its preview, takes none
    finished: list = []
    finishing = threading.Thread(target=lambda: finished.append(live.finish()))
    finishing.start()
    deadline = time.monotonic() + 60
    while queued.qsize() < len(batches) and time.monotonic() < deadline:  # the rest, the end
        time.sleep(0.01)
    assert queued.qsize() == len(batches)
    _HeldPreview.release.set()
    finishing.join(60)
    assert not finishing.is_alive()
    snapshot = finished[0]
    assert snapshot.frames == len(rows["phase"])
    assert max(_HeldPreview.added_during) > 0  # added between the preview's steps
