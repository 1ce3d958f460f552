"""Physics of the simulated beamline: objects, probe, scans, diffraction and counting."""

from __future__ import annotations

import numpy as np
import pytest

from ptychonn_ophyd.physics.diffraction import DetectorConfig, PtychoSimulation, far_field_intensity
from ptychonn_ophyd.physics.objects import (
    HELD_OUT_AMPLITUDE,
    HELD_OUT_PHASE,
    TRAINING_IMAGES,
    ComplexObject,
    ObjectStyle,
    held_out_object,
)
from ptychonn_ophyd.physics.probe import ProbeConfig, make_probe, probe_weight
from ptychonn_ophyd.physics.scan import fermat_spiral, raster_scan, to_micrometres, to_pixels

PATCH = 128


@pytest.fixture(scope="module")
def probe() -> np.ndarray:
    return make_probe()


def flat_object(size: int = 256, phase: float = 0.0, amplitude: float = 1.0) -> ComplexObject:
    return ComplexObject(
        np.full((size, size), phase, np.float32), np.full((size, size), amplitude, np.float32)
    )


def test_held_out_images_are_never_training_images():
    assert HELD_OUT_PHASE not in TRAINING_IMAGES
    assert HELD_OUT_AMPLITUDE not in TRAINING_IMAGES


def test_held_out_object_has_requested_size_and_structure():
    obj = held_out_object(size=192)
    assert obj.shape == (192, 192)
    assert obj.phase.std() > 0.1 and obj.amplitude.std() > 0.01
    np.testing.assert_allclose(
        obj.transmission, obj.amplitude * np.exp(1j * obj.phase), rtol=1e-5, atol=1e-6
    )


def test_style_rejects_phase_outside_what_pi_tanh_can_reach():
    with pytest.raises(ValueError, match="phase range"):
        ObjectStyle(phase_range=(-4.0, 0.0))


def test_probe_has_unit_power_and_a_compact_support(probe):
    assert probe.shape == (PATCH, PATCH)
    assert np.sum(np.abs(probe) ** 2) == pytest.approx(1.0, rel=1e-5)
    y, x = np.indices(probe.shape) - PATCH // 2
    radius = np.hypot(x, y)
    assert np.sum(np.abs(probe[radius > 0.375 * PATCH]) ** 2) < 1e-3
    lit = probe_weight(probe) >= 0.1
    assert 2 * radius[lit].max() < PATCH / 2 + 4, "the lit disc must keep the pattern oversampled"
    assert probe_weight(probe).max() == pytest.approx(1.0)


def test_probe_grows_with_defocus():
    def rms_radius(p: np.ndarray) -> float:
        y, x = np.indices(p.shape) - p.shape[0] // 2
        w = np.abs(p) ** 2
        return float(np.sqrt(np.sum(w * (x**2 + y**2)) / w.sum()))

    assert rms_radius(make_probe(ProbeConfig(defocus=16))) > rms_radius(
        make_probe(ProbeConfig(defocus=8))
    )


def test_far_field_intensity_conserves_energy_parseval(probe):
    rng = np.random.default_rng(0)
    wave = probe * np.exp(1j * rng.uniform(-1, 1, probe.shape))
    assert far_field_intensity(wave).sum() == pytest.approx(np.sum(np.abs(wave) ** 2), rel=1e-5)


def test_transparent_object_gives_the_photon_budget_and_absorption_lowers_it(probe):
    positions = [[0.0, 0.0]]
    clear = PtychoSimulation(flat_object(), probe, positions, DetectorConfig(photons=1e6))
    assert clear.expected_intensity(0).sum() == pytest.approx(1e6, rel=1e-4)
    grey = PtychoSimulation(flat_object(amplitude=0.5), probe, positions, DetectorConfig(1e6))
    assert grey.expected_intensity(0).sum() == pytest.approx(0.25e6, rel=1e-4)


def test_constant_phase_offset_leaves_the_pattern_unchanged(probe):
    a = PtychoSimulation(flat_object(phase=0.0), probe, [[0, 0]]).expected_intensity(0)
    b = PtychoSimulation(flat_object(phase=1.0), probe, [[0, 0]]).expected_intensity(0)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


def test_frame_counts_are_poisson_around_the_expected_intensity(probe):
    sim = PtychoSimulation(flat_object(), probe, [[0, 0]], DetectorConfig(photons=1e6), seed=3)
    expected = sim.expected_intensity(0)
    frames = sim.frames([0] * 400).astype(np.float64)
    bright = expected > 200
    mean, var = frames.mean(0)[bright], frames.var(0)[bright]
    np.testing.assert_allclose(mean / expected[bright], 1.0, atol=0.05)
    assert np.median(var / expected[bright]) == pytest.approx(1.0, abs=0.1)


def test_counts_saturate_at_the_detector_dtype_maximum(probe):
    sim = PtychoSimulation(flat_object(), probe, [[0, 0]], DetectorConfig(photons=1e9))
    frame = sim.frame(0)
    assert frame.dtype == np.int16
    assert frame.max() == np.iinfo(np.int16).max
    assert frame.min() >= 0
    unsigned = PtychoSimulation(
        flat_object(), probe, [[0, 0]], DetectorConfig(photons=1e9, dtype="uint16")
    )
    assert unsigned.frame(0).max() == np.iinfo(np.uint16).max


def test_crop_and_bin_of_a_516_frame_gives_back_the_128_pattern(probe):
    obj = held_out_object(size=192)
    config = dict(photons=1e6, noise=False)
    small = PtychoSimulation(obj, probe, [[0.1, -0.2]], DetectorConfig(**config))
    large = PtychoSimulation(
        obj, probe, [[0.1, -0.2]], DetectorConfig(**config, bin_factor=4, border=2)
    )
    frame = large.frame(0)
    assert frame.shape == large.frame_shape == (516, 516)
    assert np.all(frame[:2] == 0) and np.all(frame[:, -2:] == 0)
    binned = frame[2:-2, 2:-2].reshape(PATCH, 4, PATCH, 4).mean(axis=(1, 3))
    np.testing.assert_array_equal(binned, small.frame(0))


def test_same_seed_gives_the_same_frames(probe):
    obj = held_out_object(size=192)
    a = PtychoSimulation(obj, probe, [[0, 0], [0.1, 0.1]], seed=5).frames()
    b = PtychoSimulation(obj, probe, [[0, 0], [0.1, 0.1]], seed=5).frames()
    np.testing.assert_array_equal(a, b)


def test_ground_truth_patch_is_the_object_under_the_beam(probe):
    obj = held_out_object(size=192)
    pixel = obj.pixel_size_um
    sim = PtychoSimulation(obj, probe, [[3 * pixel, -5 * pixel]])
    phase, amplitude = sim.ground_truth_patch(0)
    top, left = 96 - 5 - 64, 96 + 3 - 64
    np.testing.assert_array_equal(phase, obj.phase[top : top + PATCH, left : left + PATCH])
    np.testing.assert_array_equal(amplitude, obj.amplitude[top : top + PATCH, left : left + PATCH])


def test_positions_whose_patch_leaves_the_object_are_refused(probe):
    obj = flat_object(size=160)
    with pytest.raises(ValueError, match="outside"):
        PtychoSimulation(obj, probe, [[0.0, 0.0], [0.2, 0.0]])


def test_raster_scan_is_a_centred_snake_grid():
    path = raster_scan(3, 2, 0.5)
    np.testing.assert_allclose(path[:3, 0], [-0.5, 0.0, 0.5])
    np.testing.assert_allclose(path[3:, 0], [0.5, 0.0, -0.5])
    np.testing.assert_allclose(path[:, 1], [-0.25] * 3 + [0.25] * 3)


def test_fermat_spiral_covers_its_disc_evenly():
    radius, step = 1.0, 0.1
    path = fermat_spiral(radius, step)
    assert len(path) == pytest.approx(np.pi * (radius / step) ** 2, rel=0.01)
    assert np.hypot(*path.T).max() <= radius + 1e-9
    # Every point of the inner disc has a scan point within one step.
    grid = np.stack(np.meshgrid(*[np.linspace(-0.8, 0.8, 41)] * 2), -1).reshape(-1, 2)
    grid = grid[np.hypot(*grid.T) < 0.8]
    nearest = np.min(np.linalg.norm(grid[:, None] - path[None], axis=-1), axis=1)
    assert nearest.max() < step
    # No two points bunch up: nearest neighbours are at least half a step apart.
    d = np.linalg.norm(path[:, None] - path[None], axis=-1) + np.eye(len(path)) * 9
    assert d.min() > 0.5 * step


def test_micrometre_and_pixel_positions_convert_both_ways():
    positions = np.array([[0.0, 0.0], [0.25, -0.5]])
    pixels = to_pixels(positions, 0.01, (256, 300))
    np.testing.assert_allclose(pixels, [[150, 128], [175, 78]])
    np.testing.assert_allclose(to_micrometres(pixels, 0.01, (256, 300)), positions)
