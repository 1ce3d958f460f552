"""The solved mosaic: patches given their frames' tilts and offsets solved over all of
them, from a few numbers a patch, checked on noise-free scans of a known object."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from ptychonn_ophyd.analysis.figure import covered
from ptychonn_ophyd.analysis.mosaic import stitch_in_order
from ptychonn_ophyd.analysis.offsets import stitch_with_solved_offsets
from ptychonn_ophyd.analysis.patch_kernels import add_patches
from ptychonn_ophyd.analysis.reconstruction import compare_phase
from ptychonn_ophyd.analysis.solved_mosaic import SPACING, FrameTilts, SolvedMosaic
from ptychonn_ophyd.analysis.stitch import StitchedImage
from ptychonn_ophyd.analysis.tilt import corrected_tilts
from ptychonn_ophyd.moments import frame_moments
from ptychonn_ophyd.physics.diffraction import DetectorConfig, PtychoSimulation
from ptychonn_ophyd.physics.objects import held_out_object
from ptychonn_ophyd.physics.probe import make_probe, probe_weight
from ptychonn_ophyd.physics.scan import raster_scan

NOISE_FREE = DetectorConfig(noise=False, dtype="int32")


class Scan:
    """A noise-free 9 x 9 raster over the held-out object, its true patches spoiled as a
    network spoils them: each with its own offset and a wrong tilt."""

    def __init__(self) -> None:
        self.obj = held_out_object(256)
        self.probe = make_probe()
        sim = PtychoSimulation(self.obj, self.probe, raster_scan(9, 9, 0.1), NOISE_FREE)
        self.positions = sim.positions_um
        self.moments = frame_moments(sim.frames())
        self.truth = sim.ground_truth()[0].astype(np.float32)
        rng = np.random.default_rng(1)
        side = np.arange(self.truth.shape[-1]) - self.truth.shape[-1] / 2
        tilts = rng.normal(0, 0.004, (len(self.truth), 2))
        planes = tilts[:, 0, None, None] * side + tilts[:, 1, None, None] * side[:, None]
        offsets = rng.normal(0, 0.5, len(self.truth))[:, None, None]
        self.spoiled = (self.truth + planes + offsets).astype(np.float32)

    @property
    def pixel(self) -> float:
        return self.obj.pixel_size_um

    def error(self, image: StitchedImage) -> tuple[float, float]:
        """SSIM and phase rms error against the object over the covered region."""
        image = image.on_grid(self.obj.shape)
        return compare_phase(image.image, self.obj.phase, covered(image.weight))

    def solved(self, **kw) -> SolvedMosaic:
        mosaic = SolvedMosaic(self.pixel, self.probe, **kw)
        mosaic.add(self.spoiled, self.positions, moments=self.moments)
        return mosaic


@pytest.fixture(scope="module")
def scan() -> Scan:
    return Scan()


def test_spoiled_patches_stitch_back_to_the_object(scan):
    ssim, rms = scan.error(scan.solved().phase())
    _, own_rms = scan.error(stitch_in_order(scan.spoiled, scan.positions, scan.pixel)[0])
    assert rms < 0.05 and ssim > 0.9
    assert rms < own_rms / 3  # the patches' own tilts, matched in order, are far off


def test_it_agrees_with_the_whole_patch_computation(scan):
    tilted = corrected_tilts(scan.spoiled, scan.positions, scan.pixel, scan.probe, *scan.moments)
    window = probe_weight(scan.probe)
    whole = stitch_with_solved_offsets(tilted, scan.positions, scan.pixel, window)
    solved = scan.solved().phase()
    assert solved.center == whole.center
    lit = covered(whole.weight)  # the whole-patch image reaches further, barely lit
    difference = solved.image[lit] - whole.image[lit]
    assert np.sqrt(np.mean((difference - difference.mean()) ** 2)) < 0.01


def test_batches_give_the_image_of_one_add_and_the_preview_converges_to_it(scan):
    whole = scan.solved().phase()
    mosaic = SolvedMosaic(scan.pixel, scan.probe)
    for start in range(0, len(scan.spoiled), 7):
        part = slice(start, start + 7)
        mosaic.add(scan.spoiled[part], scan.positions[part], moments=_part(scan.moments, part))
        mosaic.preview()
    assert mosaic.frames == len(scan.spoiled)
    np.testing.assert_allclose(mosaic.preview().image, whole.image, atol=1e-4, equal_nan=True)
    np.testing.assert_allclose(mosaic.phase().image, whole.image, atol=1e-5, equal_nan=True)


def test_batches_as_they_arrived_in_one_call_give_the_image_of_one_array(scan):
    positions = scan.positions.copy()
    positions[[3, 40]] = np.nan  # skipped inside their batches
    whole = SolvedMosaic(scan.pixel, scan.probe, amplitude=True)
    whole.add(scan.spoiled, positions, np.ones_like(scan.spoiled), scan.moments)
    batches = np.array_split(scan.spoiled, 9)
    ones = [np.ones_like(batch) for batch in batches]
    mosaic = SolvedMosaic(scan.pixel, scan.probe, amplitude=True)
    assert mosaic.add(batches, positions, ones, scan.moments) == len(positions) - 2
    np.testing.assert_array_equal(mosaic.phase().image, whole.phase().image)
    np.testing.assert_array_equal(mosaic.amplitude().image, whole.amplitude().image)
    with pytest.raises(ValueError, match="amplitude patches must come in the phase patches'"):
        mosaic.add(batches, positions, np.ones_like(scan.spoiled), scan.moments)


def test_the_compiled_loop_adds_weighted_patches_and_their_bilinear_gradient_projections(scan):
    mosaic = SolvedMosaic(scan.pixel, scan.probe)
    tilts, cut, corner = mosaic._tilts, mosaic._cut, mosaic._cut_corner
    window = mosaic.window[cut]
    rng = np.random.default_rng(2)
    patches = rng.normal(0, 1, (6, *scan.probe.shape)).astype(np.float32)
    frames, starts = np.array([5, 0, 2, 3]), rng.integers(0, 40, (4, 2))
    corners = rng.integers(-300, 300, (4, 2))
    layer, sums = np.zeros((200, 200), np.float32), np.empty(4)
    projections = np.zeros((4, 2, tilts.rows.count, tilts.cols.count), np.float32)
    add_patches(
        layer, patches, frames, starts, corner, window, tilts.half_intensity,
        tilts.places(corners), SPACING, sums, projections,
    )  # fmt: skip
    expected = np.zeros_like(layer)
    for k, frame in enumerate(frames):
        weighted = window * patches[frame][cut]
        (r, c), (h, w) = starts[k], window.shape
        expected[r : r + h, c : c + w] += weighted
        np.testing.assert_allclose(sums[k], weighted.sum(dtype=np.float64), rtol=1e-5)
        bilinear = _bilinear_projection(tilts, scan.probe, patches[frame], corners[k])
        np.testing.assert_allclose(projections[k], bilinear, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer, expected, rtol=1e-6, atol=1e-6)


def _bilinear_projection(
    tilts: FrameTilts, probe: np.ndarray, patch: np.ndarray, corner: np.ndarray
) -> np.ndarray:
    """``grad(patch) * I`` (central differences inside the cut) summed against each
    node's bilinear hat, in float64."""
    lit = patch[tilts.cut].astype(np.float64)
    half = np.abs(probe[tilts.cut]) ** 2 / 2
    gradient = np.zeros((2, *lit.shape))
    gradient[0, :, 1:-1] = (lit[:, 2:] - lit[:, :-2]) * half[:, 1:-1]
    gradient[1, 1:-1] = (lit[2:] - lit[:-2]) * half[1:-1]
    first = corner + tilts.corner
    place = first - SPACING * np.floor_divide(first, SPACING)
    rows = _hats(place[0], lit.shape[0], tilts.rows.count)
    cols = _hats(place[1], lit.shape[1], tilts.cols.count)
    return np.einsum("ya,kyx,xb->kab", rows, gradient, cols)


def _hats(place: int, length: int, count: int) -> np.ndarray:
    """``(length, count)``: each pixel's weight on each node, ``place`` pixels after the
    first node."""
    pixel = place + np.arange(length)[:, None]
    return np.clip(1 - np.abs(pixel - SPACING * np.arange(count)) / SPACING, 0, None)


def test_half_a_scan_already_shows_the_object_where_it_has_been(scan):
    half = len(scan.spoiled) // 2
    mosaic = SolvedMosaic(scan.pixel, scan.probe)
    mosaic.add(scan.spoiled[:half], scan.positions[:half], moments=_part(scan.moments, slice(half)))
    ssim, rms = scan.error(mosaic.preview())
    assert rms < 0.05 and ssim > 0.85


def test_a_frame_without_statistics_keeps_its_own_tilt(scan):
    totals, centroids = scan.moments
    blind = np.full_like(totals, np.nan), np.full_like(centroids, np.nan)
    mosaic = SolvedMosaic(scan.pixel, scan.probe)
    mosaic.add(scan.truth, scan.positions, moments=blind)
    rms = scan.error(mosaic.phase())[1]
    assert rms < 0.01  # true patches, nothing changed but their offsets
    mosaic = SolvedMosaic(scan.pixel, scan.probe)
    mosaic.add(scan.truth, scan.positions)  # no moments at all
    assert scan.error(mosaic.phase())[1] < 0.01


def test_frames_without_statistics_beside_counted_ones_stitch_with_them(scan):
    totals, centroids = (m.copy() for m in scan.moments)
    edge = np.argsort(scan.positions[:, 1])[-9:]  # the last row: beyond the counted map
    totals[edge], centroids[edge] = np.nan, np.nan
    mosaic = SolvedMosaic(scan.pixel, scan.probe)
    mosaic.add(scan.spoiled, scan.positions, moments=(totals, centroids))
    ssim, rms = scan.error(mosaic.phase())
    assert rms < 0.1 and ssim > 0.8


def test_frames_without_a_position_are_left_out(scan):
    positions = scan.positions.copy()
    positions[[3, 40]] = np.nan
    mosaic = SolvedMosaic(scan.pixel, scan.probe)
    assert mosaic.add(scan.spoiled, positions, moments=scan.moments) == len(positions) - 2
    assert mosaic.frames == len(positions) - 2
    assert scan.error(mosaic.phase())[1] < 0.05


def test_it_keeps_about_a_kilobyte_a_patch_not_the_patch(scan):
    mosaic = scan.solved()
    kept = sum(column.nbytes for column in mosaic._patches.columns())
    assert kept / mosaic.frames < 1_000 < scan.spoiled[0].nbytes / 10


def test_one_patch_alone_is_itself_without_a_warning(scan):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        alone = SolvedMosaic(scan.pixel, scan.probe)
        alone.add(scan.truth[:1], scan.positions[:1])
        image = alone.phase()
        tilted = SolvedMosaic(scan.pixel, scan.probe)
        tilted.add(scan.truth[:1], scan.positions[:1], moments=_part(scan.moments, slice(1)))
        assert np.isfinite(tilted.phase().image[covered(image.weight)]).all()
    lit = covered(image.weight)
    difference = image.image[lit] - _placed(scan.truth[0], scan.positions[0], image)[lit]
    assert np.ptp(difference) < 1e-5


def test_amplitude_patches_are_averaged_beside_the_phase(scan):
    mosaic = SolvedMosaic(scan.pixel, scan.probe, amplitude=True)
    ones = np.ones_like(scan.spoiled)
    mosaic.add(scan.spoiled, scan.positions, ones, scan.moments)
    amplitude = mosaic.amplitude()
    lit = amplitude.weight > 0
    np.testing.assert_allclose(amplitude.image[lit], 1, rtol=1e-5)
    assert amplitude.center == mosaic.phase().center


@pytest.mark.parametrize(
    ("probe", "message"),
    [
        (np.ones((128, 128)), "the probe must be a square complex array, not float64 (128, 128)"),
        (np.ones((4, 8), complex), "the probe must be a square complex array, not complex128"),
    ],
)
def test_a_bad_probe_is_refused_in_one_line(probe, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        SolvedMosaic(0.01, probe)


def _part(moments: tuple[np.ndarray, np.ndarray], part: slice) -> tuple[np.ndarray, np.ndarray]:
    return moments[0][part], moments[1][part]


def _placed(patch: np.ndarray, position: np.ndarray, image: StitchedImage) -> np.ndarray:
    """``patch`` on ``image``'s grid at scan ``position`` ``(x, y)``."""
    placed = np.full(image.image.shape, np.nan, np.float32)
    centre = np.array(image.center) + np.rint(position[::-1] / image.pixel_size_um)
    r, c = (centre - np.array(patch.shape) // 2).astype(int)
    placed[r : r + patch.shape[0], c : c + patch.shape[1]] = patch
    return placed
