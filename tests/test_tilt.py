"""Each patch's tilt read off its frame, checked on simulated scans with known objects."""

from __future__ import annotations

import numpy as np
import pytest

from ptychonn_ophyd.analysis import tilt
from ptychonn_ophyd.analysis.tilt import (
    centroid_gradient,
    corrected_tilts,
    gradient_field,
    mean_gradient,
    probe_gradient_share,
    transmission_map,
)
from ptychonn_ophyd.moments import frame_moments
from ptychonn_ophyd.physics.diffraction import DetectorConfig, PtychoSimulation
from ptychonn_ophyd.physics.objects import ComplexObject, held_out_object
from ptychonn_ophyd.physics.probe import make_probe
from ptychonn_ophyd.physics.scan import raster_scan

NOISE_FREE = DetectorConfig(noise=False, dtype="int32")
SIZE = 256


@pytest.fixture(scope="module")
def probe() -> np.ndarray:
    return make_probe()


def scan(obj: ComplexObject, probe: np.ndarray) -> PtychoSimulation:
    """A 9x9 raster, 100 nm apart, over the middle of ``obj``, without noise."""
    return PtychoSimulation(obj, probe, raster_scan(9, 9, 0.1), NOISE_FREE)


def test_the_centroid_of_a_pattern_is_the_phase_ramp_of_a_clear_object(probe):
    gx, gy = 0.03, -0.02
    rows, cols = np.mgrid[:SIZE, :SIZE]
    ramp = ComplexObject((gx * cols + gy * rows).astype(np.float32), np.ones((SIZE, SIZE), "f4"))
    sim = scan(ramp, probe)
    _, centroids = frame_moments(sim.frames())
    gradient = centroid_gradient(centroids, sim.patch_size)
    gradient -= probe_gradient_share(probe, np.ones((1, *probe.shape)))
    assert gradient == pytest.approx(np.tile([gx, gy], (len(sim), 1)), abs=2e-4)


def test_the_transmission_map_recovers_a_smooth_absorption_from_the_totals(probe):
    cols = np.mgrid[:SIZE, :SIZE][1]
    amplitude = (0.6 + 0.4 * cols / SIZE).astype(np.float32)
    sim = scan(ComplexObject(np.zeros((SIZE, SIZE), "f4"), amplitude), probe)
    totals, _ = frame_moments(sim.frames())
    square = transmission_map(totals, sim.patch_corners, np.abs(probe) ** 2, (SIZE, SIZE))
    corners = sim.patch_corners
    centre = corners + sim.patch_size // 2
    lit = square[centre[:, 0], centre[:, 1]]
    truth = amplitude[centre[:, 0], centre[:, 1]] ** 2
    assert lit / lit.mean() == pytest.approx(truth / truth.mean(), rel=0.02)


def test_corrected_patches_take_the_tilts_of_their_frames(probe):
    sim = scan(held_out_object(size=SIZE), probe)
    truth, _ = sim.ground_truth()
    weight = np.abs(probe) ** 2
    wrong = np.random.default_rng(0).normal(0, 0.01, (len(sim), 2))
    side = np.arange(sim.patch_size) - sim.patch_size / 2
    tilted = truth + wrong[:, 0, None, None] * side + wrong[:, 1, None, None] * side[:, None]
    totals, centroids = frame_moments(sim.frames())
    pixel = sim.obj.pixel_size_um
    fixed = corrected_tilts(tilted, sim.positions_um, pixel, probe, totals, centroids)
    true_tilts = mean_gradient(gradient_field(truth), weight)
    before = np.abs(mean_gradient(gradient_field(tilted), weight) - true_tilts).mean()
    after = np.abs(mean_gradient(gradient_field(fixed), weight) - true_tilts).mean()
    assert after < before / 4


def test_patches_are_corrected_alike_however_many_are_worked_on_at_once(probe, monkeypatch):
    sim = scan(held_out_object(size=SIZE), probe)
    phase, _ = sim.ground_truth()
    totals, centroids = frame_moments(sim.frames())
    args = (sim.positions_um, sim.obj.pixel_size_um, probe, totals, centroids)
    whole = corrected_tilts(phase, *args)
    monkeypatch.setattr(tilt, "CHUNK", 7)  # 81 patches: 12 parts, the last of 4
    assert corrected_tilts(phase, *args) == pytest.approx(whole, abs=1e-6)
    assert whole.dtype == phase.dtype == np.float32


def test_a_frame_without_statistics_keeps_its_patch(probe):
    sim = scan(held_out_object(size=SIZE), probe)
    phase, _ = sim.ground_truth()
    totals, centroids = frame_moments(sim.frames())
    totals[3], centroids[3] = np.nan, np.nan
    pixel = sim.obj.pixel_size_um
    fixed = corrected_tilts(phase, sim.positions_um, pixel, probe, totals, centroids)
    assert np.isfinite(fixed).all()
    assert fixed[3] == pytest.approx(phase[3], abs=1e-6)


def test_a_probe_that_does_not_fit_the_patches_is_refused(probe):
    patches = np.zeros((2, 64, 64))
    with pytest.raises(ValueError, match="probe"):
        corrected_tilts(patches, np.zeros((2, 2)), 0.01, probe, np.ones(2), np.zeros((2, 2)))
