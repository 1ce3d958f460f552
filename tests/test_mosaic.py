"""The one stitching path: patches added in arrival order, each phase patch offset to
agree with what came before it."""

import numpy as np
import pytest

from ptychonn_ophyd.analysis.mosaic import Mosaic, stitch_in_order
from ptychonn_ophyd.analysis.stitch import stitch
from ptychonn_ophyd.physics.diffraction import PtychoSimulation
from ptychonn_ophyd.physics.objects import held_out_object
from ptychonn_ophyd.physics.probe import make_probe, probe_weight
from ptychonn_ophyd.physics.scan import fermat_spiral


@pytest.fixture(scope="module")
def sim():
    return PtychoSimulation(held_out_object(size=256), make_probe(), fermat_spiral(0.4, 0.1))


def test_planted_patch_offsets_are_undone(sim):
    phase, _ = sim.ground_truth()
    planted = np.random.default_rng(1).normal(0, 0.5, len(sim))
    weight = probe_weight(sim.probe)

    image, _ = stitch_in_order(phase + planted[:, None, None], sim.positions_um, 0.01, weight)

    placed = image.on_grid(sim.obj.shape)
    lit = placed.weight >= 0.2 * placed.weight.max()
    error = (placed.image - sim.obj.phase)[lit]
    assert np.std(error) < 1e-3  # one constant (the first patch's) is left, nothing else


def test_batches_give_the_same_image_as_one_call(sim):
    phase, _ = sim.ground_truth()
    noisy = phase + np.random.default_rng(2).normal(0, 0.3, len(sim))[:, None, None]
    weight = probe_weight(sim.probe)
    whole = Mosaic(0.01, weight)
    whole.add(noisy, sim.positions_um)
    pieces = Mosaic(0.01, weight)
    for start in range(0, len(sim), 7):  # growing the canvas many times on the way
        pieces.add(noisy[start : start + 7], sim.positions_um[start : start + 7])
    listed = Mosaic(0.01, weight)  # the batches as they arrived, in one call
    listed.add(np.array_split(noisy, 11), sim.positions_um)

    a = whole.phase()
    for b in (pieces.phase(), listed.phase()):
        assert a.center == b.center
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.weight, b.weight)
    assert pieces.frames == listed.frames == len(sim)


def test_flat_window_geometry_matches_plain_stitching():
    patches = np.stack([np.zeros((4, 4)), np.full((4, 4), 2.0)])
    positions = [(-0.5, 0.0), (0.5, 0.2)]
    mosaic, _ = stitch_in_order(patches, positions, 0.1)
    plain = stitch(patches, positions, 0.1)
    assert mosaic.image.shape == plain.image.shape and mosaic.center == plain.center
    np.testing.assert_array_equal(np.isnan(mosaic.image), np.isnan(plain.image))


def test_overlapping_patch_takes_the_offset_of_the_mosaic():
    patches = np.stack([np.zeros((4, 4)), np.full((4, 4), 2.0)])
    image, _ = stitch_in_order(patches, [(0, 0), (0.02, 0)], 0.01)
    np.testing.assert_allclose(image.image[0], 0.0)


def test_frames_without_a_position_are_left_out_and_amplitude_has_no_offset():
    mosaic = Mosaic(0.01, patch_shape=(4, 4), amplitude=True)
    added = mosaic.add(
        np.stack([np.zeros((4, 4)), np.ones((4, 4))]),
        [(0, 0), (np.nan, np.nan)],
        amplitude=np.full((2, 4, 4), 3.0),
    )
    assert added == 1 and mosaic.frames == 1
    np.testing.assert_allclose(mosaic.amplitude().image, 3.0)


def test_bad_windows_are_refused():
    with pytest.raises(ValueError, match="non-negative"):
        Mosaic(0.01, -np.ones((4, 4)))
    with pytest.raises(ValueError, match="zero everywhere"):
        Mosaic(0.01, np.zeros((4, 4)))
    with pytest.raises(ValueError, match="pixel size"):
        Mosaic(0.0, np.ones((4, 4)))
