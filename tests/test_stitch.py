"""Stitching patches at scan positions back into the object they were cut from."""

import numpy as np
import pytest

from ptychonn_ophyd.analysis.stitch import patch_corners, remove_phase_offset, stitch


def _object(shape=(96, 96), seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, shape).astype(np.float32)


def _patches(obj, positions_um, pixel_size_um, size):
    center = np.array(obj.shape) // 2
    corners = patch_corners(positions_um, pixel_size_um, (size, size)) + center
    return np.stack([obj[r : r + size, c : c + size] for r, c in corners])


def test_stitching_exact_patches_gives_back_the_object_where_lit():
    obj = _object()
    pixel = 0.01
    grid = np.arange(-0.2, 0.21, 0.1)
    positions = np.array([(x, y) for y in grid for x in grid])
    patches = _patches(obj, positions, pixel, 32)

    result = stitch(patches, positions, pixel, shape=obj.shape)

    lit = result.weight > 0
    assert lit.sum() > 0.4 * obj.size
    np.testing.assert_allclose(result.image[lit], obj[lit], atol=1e-6)
    assert np.isnan(result.image[~lit]).all()
    assert result.weight.max() > 1  # patches overlap and are averaged


def test_overlaps_are_averaged():
    patches = np.stack([np.zeros((4, 4)), np.full((4, 4), 2.0)])
    result = stitch(patches, [(0, 0), (0.02, 0)], pixel_size_um=0.01)
    assert result.image.shape == (4, 6)
    np.testing.assert_allclose(result.image[0], [0, 0, 1, 1, 2, 2])


def test_the_canvas_holds_every_patch_and_knows_its_extent():
    result = stitch(np.ones((2, 8, 8)), [(-0.5, 0.0), (0.5, 0.2)], pixel_size_um=0.1)
    assert result.image.shape == (8 + 2, 8 + 10)
    assert np.isnan(result.image[:, 8:10]).all()  # between the two patches
    left, right, bottom, top = result.extent_um
    assert right - left == pytest.approx(18 * 0.1)
    assert bottom - top == pytest.approx(10 * 0.1)
    assert left < -0.5 < 0.5 < right


def test_constant_phase_offset_is_removed_against_the_truth():
    obj = _object(seed=1)
    shifted = obj + 0.7
    shifted[:5] = np.nan
    aligned = remove_phase_offset(shifted, obj)
    np.testing.assert_allclose(aligned[5:], obj[5:], atol=1e-6)


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match="positions"):
        stitch(np.ones((3, 4, 4)), [(0, 0)], 0.01)
    with pytest.raises(ValueError, match="pixel size"):
        stitch(np.ones((1, 4, 4)), [(0, 0)], 0.0)
