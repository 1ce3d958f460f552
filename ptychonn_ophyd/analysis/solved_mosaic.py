"""Patches given their frames' tilts, offsets solved over all of them: live and after.

PtychoNN infers each patch's mean phase gradient (its *tilt*) poorly, and no frame tells
its patch's absolute phase (its *offset*); a mosaic that matches each patch to the ones
before it (:class:`~ptychonn_ophyd.analysis.mosaic.Mosaic`) passes every error on.  The
frame holds the tilt (:mod:`ptychonn_ophyd.analysis.tilt`), and the offsets that make
all patches agree best solve one linear system (:mod:`ptychonn_ophyd.analysis.offsets`).
Both need the whole scan: the tilt's weights need the object's transmission, which the
frames' totals give only together, and every offset depends on every other.

:class:`SolvedMosaic` keeps, for every patch, only what the solution is linear in, so it
never holds the patches:

- the canvas ``P0 = sum_i w_i p_i`` of the window-weighted patches (``w`` the window);
- the patch's projections of ``grad(p_i) * I`` onto the transmission map's bilinear
  nodes (:data:`SPACING` pixels apart, ``I`` the probe intensity): its weighted mean
  gradient under any map is their dot product with the map's nodes;
- its frame's total, centroid gradient, corner and ``sum(w p_i)``.

Solving (:meth:`SolvedMosaic.phase`) fits the map's nodes to the totals, gives each
patch the tilt change ``t_i`` its frame says, and adds the planes ``t_i . (x, y)`` as
two convolutions of the canvas with ``w x`` and ``w y``; the offsets' conjugate
gradients are convolutions too.  A solve costs the canvas's FFTs and a few numbers a
patch, about 1 KB of memory a patch instead of its 17 KB lit part.  The live view
solves every so often during a scan (:meth:`SolvedMosaic.preview`, a bounded number of
steps from the last offsets, so the picture converges from one to the next) and once at
the end (:meth:`SolvedMosaic.phase`, to the solver's tolerance); replay adds the stored
rows and solves the same way, so both give the same image within that tolerance.

It differs from the whole-patch computation of
:func:`~ptychonn_ophyd.analysis.tilt.corrected_tilts` (which the tests hold it to) in
that everything is cut to the window's support, the map's nodes sit on a grid fixed to
the scan's origin, and its floor (:data:`~ptychonn_ophyd.analysis.tilt.DARKEST`) is
applied to the nodes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ptychonn_ophyd.analysis.canvas import Canvas
from ptychonn_ophyd.analysis.conjugate_gradients import conjugate_gradients
from ptychonn_ophyd.analysis.mosaic import (
    Patches,
    check_window,
    matching_batches,
    patch_batches,
    placement,
    support_cut,
)
from ptychonn_ophyd.analysis.offsets import MAX_STEPS, TOLERANCE
from ptychonn_ophyd.analysis.stitch import StitchedImage
from ptychonn_ophyd.analysis.tilt import (
    DARKEST,
    MAP_SMOOTHING,
    MAP_SPACING,
    centroid_gradient,
    probe_gradient_field,
)
from ptychonn_ophyd.physics.probe import check_probe, probe_weight

SPACING = MAP_SPACING
MAP_TOLERANCE = 1e-10
"""Relative residual at which the map's conjugate gradients stop: the nodes then agree
with a direct solve to about 1e-7 (a direct solve costs ten times more at 10,000
frames)."""
MAP_MAX_STEPS = 5_000
"""Conjugate-gradient steps of the map at most."""
MAP_PREVIEW_STEPS = 50
"""Conjugate-gradient steps of the map at most in one preview: each starts from the
last fit, so the map converges over a few previews."""
MAP_PREVIEW_WORK = 2_000_000
"""Frames times steps of the map in one preview: a step costs about a quarter of a µs a
frame, so beyond 40,000 frames a preview takes fewer steps, at least
:data:`LEAST_PREVIEW_STEPS`."""
PREVIEW_STEPS = 40
"""Conjugate-gradient steps of the offsets at most in one preview: each starts from the
last, so the picture converges over a few, and a long scan's preview stays short."""
PREVIEW_WORK = 20_000_000
"""Canvas pixels times steps of the offsets in one preview: a step is four FFTs of the
canvas, so beyond half a million pixels (about 8,000 patches 5 pixels apart) a preview
takes fewer steps, at least :data:`LEAST_PREVIEW_STEPS`."""
LEAST_PREVIEW_STEPS = 4
"""Steps a preview takes of each system however large the scan."""
ROUNDING = 1e-9
"""Canvas weight, as a fraction of its peak, below which a pixel counts as unlit: an FFT
convolution leaves rounding errors of about 1e-16 of the peak where no patch lies."""
REGULARISATION = 1e-9
"""Each offset's own weight in the system, raised by this fraction: a patch that
overlaps none (or a group that overlaps no other) is otherwise free, and the FFT's
rounding would push it anywhere; this keeps it near zero and changes the others by as
little."""


class _Hats:
    """Bilinear interpolation weights of ``length`` pixels from the map's nodes, for each
    of the :data:`SPACING` places the first pixel can take between two nodes."""

    def __init__(self, length: int) -> None:
        self.count = (SPACING - 1 + length - 1) // SPACING + 2
        pixel = np.arange(SPACING)[:, None, None] + np.arange(length)[None, :, None]
        node = SPACING * np.arange(self.count)[None, None, :]
        self.weights = np.clip(1 - np.abs(pixel - node) / SPACING, 0, None).astype(np.float32)

    @staticmethod
    def place(first: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Node before each first pixel ``first`` ``(N,)``, and the pixel's place after it."""
        node = np.floor_divide(first, SPACING)
        return node, first - SPACING * node


class _Patches:
    """What the solution needs of each patch, appended batch by batch."""

    def __init__(self) -> None:
        self._parts: list[tuple[np.ndarray, ...]] = []

    def append(self, *columns: np.ndarray) -> None:
        self._parts.append(columns)

    def columns(self) -> tuple[np.ndarray, ...]:
        """Every column over all patches, in the order added."""
        if len(self._parts) > 1:
            self._parts = [tuple(np.concatenate(c) for c in zip(*self._parts, strict=True))]
        return self._parts[0]


@dataclass(frozen=True)
class _MapFit:
    """The frames the map is fitted to: each one's first node ``blocks`` ``(n, 2)`` and
    place after it ``places``, and its total, on a grid of ``shape`` nodes from node
    ``origin``."""

    blocks: np.ndarray
    places: np.ndarray
    totals: np.ndarray
    origin: np.ndarray
    shape: tuple[int, int]


class FrameTilts:
    """How each patch's tilt changes to the one its frame says, under a transmission map
    fitted to the frames' totals, from a few numbers a patch.

    Everything is cut to where the probe's intensity reaches
    :data:`~ptychonn_ophyd.analysis.mosaic.SUPPORT` of its peak: a tighter cut (1 % of
    the peak) costs 0.02-0.07 SSIM on unseen objects, the defocused probe's faint rings
    carrying much of the tilt.

    Parameters
    ----------
    probe
        ``(p, p)`` complex probe the frames were taken with.
    cut
        The part of a patch to work on, if larger than that support.
    """

    def __init__(self, probe: np.ndarray, cut: tuple[slice, slice] | None = None) -> None:
        intensity = np.abs(probe).astype(np.float64) ** 2
        self.cut, self.corner = support_cut(intensity)
        if cut is not None:
            self.cut, self.corner = cut, np.array([cut[0].start, cut[1].start])
        intensity = intensity[self.cut]
        self.half_intensity = (intensity / 2).astype(np.float32)
        """The probe's intensity over the cut, halved: a central difference's weight."""
        self.rows, self.cols = _Hats(intensity.shape[0]), _Hats(intensity.shape[1])
        rows, cols = self.rows.weights.astype(np.float64), self.cols.weights.astype(np.float64)
        share = probe_gradient_field(probe)[(slice(None), *self.cut)] * intensity
        self._counts = np.einsum("yha,hw,xwb->yxab", rows, intensity, cols)
        self._probe_share = np.einsum("yha,khw,xwb->yxkab", rows, share, cols)
        self._last_map: tuple[np.ndarray, np.ndarray] | None = None
        self.converged = True
        """Whether the last map fit reached :data:`MAP_TOLERANCE`."""

    def places(self, corners: np.ndarray) -> np.ndarray:
        """``(n, 2)`` pixels between the node before each patch's cut (at ``corners``)
        and the cut's first pixel."""
        return _Hats.place(corners + self.corner)[1]

    def changes(
        self,
        corners: np.ndarray,
        totals: np.ndarray,
        gradients: np.ndarray,
        projections: np.ndarray,
        final: bool = True,
        between: Callable[[], object] | None = None,
        deadline: float | None = None,
    ) -> np.ndarray:
        """``(n, 2)`` change of each patch's tilt to the one its frame says: the centroid
        ``gradients`` less the probe's share and the patch's own, both weighted by
        ``I * map``; zero for a frame without statistics.

        The map is solved to :data:`MAP_TOLERANCE` when ``final``, else in
        :data:`MAP_PREVIEW_STEPS` at most (fewer for many frames,
        :data:`MAP_PREVIEW_WORK`); no step starts after ``deadline``
        (``time.monotonic``), and ``between`` is called before each.  :attr:`converged`
        says whether it reached the tolerance."""
        first = corners + self.corner
        row_node, row_place = _Hats.place(first[:, 0])
        col_node, col_place = _Hats.place(first[:, 1])
        counted = np.isfinite(totals) & np.isfinite(gradients).all(1)
        if not counted.any():
            return np.zeros((len(totals), 2))
        origin = np.array([row_node.min(), col_node.min()])
        blocks = np.stack([row_node, col_node], axis=1) - origin
        places = np.stack([row_place, col_place], axis=1)
        shape = (
            int(blocks[:, 0].max()) + self.rows.count,
            int(blocks[:, 1].max()) + self.cols.count,
        )
        steps = MAP_MAX_STEPS if final else _steps(MAP_PREVIEW_STEPS, MAP_PREVIEW_WORK, len(blocks))
        fit = _MapFit(blocks[counted], places[counted], totals[counted], origin, shape)
        nodes = self._map_nodes(fit, steps, between, deadline)
        from ptychonn_ophyd.analysis.patch_kernels import weigh_by_map  # numba: see add

        weighed = np.empty((len(totals), 2))
        weigh_by_map(nodes, blocks, places, self._counts, self._probe_share, projections, weighed)
        tilts = gradients - weighed
        tilts[~np.isfinite(tilts).all(1)] = 0
        return tilts

    def _map_nodes(
        self,
        fit: _MapFit,
        steps: int,
        between: Callable[[], object] | None,
        deadline: float | None,
    ) -> np.ndarray:
        """The transmission map's nodes fitted to the frames' totals, as
        :func:`~ptychonn_ophyd.analysis.tilt.transmission_map` fits them, floored at
        :data:`~ptychonn_ophyd.analysis.tilt.DARKEST` of their peak.

        The normal equations are never assembled: their product loops over the frames
        (:mod:`~ptychonn_ophyd.analysis.patch_kernels`), and the fit starts from the last
        one, extended to the grid as the scan has grown it."""
        from ptychonn_ophyd.analysis.patch_kernels import apply_map_sums, spread_map_sums

        blocks, places, shape = fit.blocks, fit.places, fit.shape
        scale = float(np.mean(fit.totals))
        rhs, diagonal = np.zeros(shape), np.zeros(shape)
        spread_map_sums(fit.totals / scale, blocks, places, self._counts, 1, rhs)
        spread_map_sums(np.ones(len(blocks)), blocks, places, self._counts, 2, diagonal)
        diagonal += MAP_SMOOTHING * _smoothness_diagonal(shape)

        def apply(nodes: np.ndarray) -> np.ndarray:
            grid = nodes.reshape(shape)
            out = MAP_SMOOTHING * _smoothness(grid)
            apply_map_sums(grid, blocks, places, self._counts, out)
            return out.ravel()

        start = self._last_nodes(fit.origin, shape)
        nodes, self.converged = conjugate_gradients(
            apply,
            rhs.ravel(),
            start.ravel(),
            tolerance=MAP_TOLERANCE,
            steps=steps,
            deadline=deadline,
            preconditioner=1 / diagonal.ravel(),
            between=between,
        )
        nodes = nodes.reshape(shape)
        self._last_map = (fit.origin, nodes)
        return np.clip(nodes, DARKEST * nodes.max(), None)

    def _last_nodes(self, origin: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """The last fit on the grid of ``shape`` from node ``origin``, its edges carried
        out where the grid has grown; ones at first."""
        if self._last_map is None:
            return np.ones(shape)
        last_origin, last = self._last_map
        before = last_origin - origin
        after = np.array(shape) - last.shape - before
        if (before < 0).any() or (after < 0).any():
            return np.ones(shape)
        return np.pad(last, tuple(zip(before, after, strict=True)), mode="edge")


def _smoothness(grid: np.ndarray) -> np.ndarray:
    """``D^T D grid`` for the differences ``D`` of neighbouring nodes along both axes
    (:func:`~ptychonn_ophyd.analysis.tilt.smoothness` applied, without its matrix)."""
    out = np.zeros_like(grid)
    for axis in (0, 1):
        step = np.diff(grid, axis=axis)
        head = [slice(None)] * 2
        tail = [slice(None)] * 2
        head[axis], tail[axis] = slice(None, -1), slice(1, None)
        out[tuple(head)] -= step
        out[tuple(tail)] += step
    return out


def _smoothness_diagonal(shape: tuple[int, int]) -> np.ndarray:
    """The diagonal of :func:`_smoothness`: each node's number of neighbours."""
    rows, cols = (np.full(n, 2.0) - (np.arange(n) == 0) - (np.arange(n) == n - 1) for n in shape)
    return rows[:, None] + cols[None, :]


class SolvedMosaic:
    """An object image from phase patches given their frames' tilts, offsets solved.

    Parameters
    ----------
    pixel_size_um
        Object pixel size; positions follow :mod:`ptychonn_ophyd.analysis.stitch`.
    probe
        ``(p, p)`` complex probe the frames were taken with, of the patches' side.
    window
        ``(p, p)`` trust of each patch pixel; default the probe's intensity
        (:func:`~ptychonn_ophyd.physics.probe.probe_weight`).
    amplitude
        Also accumulate amplitude patches (window-weighted means, no offsets).
    """

    stitching = "tilts from the frames' centre of mass, offsets solved over the scan"

    def __init__(
        self,
        pixel_size_um: float,
        probe: np.ndarray,
        window: np.ndarray | None = None,
        *,
        amplitude: bool = False,
    ) -> None:
        if not pixel_size_um or pixel_size_um <= 0:
            raise ValueError(f"pixel size must be positive, got {pixel_size_um}")
        probe = check_probe(probe)
        self.pixel_size_um = float(pixel_size_um)
        self.probe = probe
        self.window = check_window(probe_weight(probe) if window is None else window, probe.shape)
        self.patch_shape: tuple[int, int] = probe.shape
        self.frames = 0
        intensity = np.abs(probe) ** 2
        either = np.maximum(self.window / self.window.max(), intensity / intensity.max())
        self._cut, self._cut_corner = support_cut(either)  # one pass of a patch for both
        self._w = np.ascontiguousarray(self.window[self._cut], dtype=np.float64)
        self._w32 = self._w.astype(np.float32)
        self._tilts = FrameTilts(probe, self._cut)
        layers = ("base", "amplitude") if amplitude else ("base",)
        self._canvas = Canvas(layers, self.patch_shape, np.float32)
        self._patches = _Patches()
        h, w = self._w.shape
        side = np.arange(self.patch_shape[0]) - self.patch_shape[0] / 2
        r0, c0 = self._cut_corner
        self._planes = (
            self._w * np.broadcast_to(side[c0 : c0 + w], (h, w)),
            self._w * np.broadcast_to(side[r0 : r0 + h, None], (h, w)),
        )
        self._plane_sums = np.array([plane.sum() for plane in self._planes])
        self._offsets = np.zeros(0)
        self._solved: tuple[bool, StitchedImage] | None = None
        self.solved = False
        """Whether the last solve was final and reached the solver's tolerance."""

    @property
    def has_amplitude(self) -> bool:
        return "amplitude" in self._canvas.layers

    def add(
        self,
        phase: Patches,
        positions_um: np.ndarray,
        amplitude: Patches | None = None,
        moments: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> int:
        """Add patches ``(N, p, p)`` at ``positions_um`` ``(N, 2)``, with their frames'
        ``moments``: totals ``(N,)`` and centroids ``(N, 2)`` in pattern pixels
        (:func:`~ptychonn_ophyd.moments.frame_moments`; NaN or ``None``: the patch keeps
        its own tilt).  ``phase`` (and ``amplitude``) may be a sequence of batches
        ``(n_k, p, p)`` as they arrived, which are not joined (joining copies every
        patch).  Frames without a finite position are left out; returns how many were
        added.

        The loops over the patches are compiled with numba, imported here rather than
        with the module, so that a session imports where numba is not installed (a GPU
        host it is not carried to) and stitches there without a probe.

        Raises
        ------
        ValueError
            Patches and positions differ in number, or amplitude patches do not come
            in the phase patches' batches.
        """
        batches = patch_batches(phase, self.patch_shape)
        placed = placement(batches, positions_um, self.pixel_size_um, self.patch_shape)
        if placed is None:
            return 0
        amplitudes = matching_batches(amplitude, batches, self.patch_shape)
        totals, gradients = self._frame_facts(moments, placed.kept)
        corners = placed.corners
        self._canvas.cover(corners)
        starts = corners + self._canvas.origin + self._cut_corner
        sums = np.empty(len(corners))
        nodes = (self._tilts.rows.count, self._tilts.cols.count)
        projections = np.zeros((len(corners), 2, *nodes), np.float32)
        places = self._tilts.places(corners)
        for index, (batch, frames, at) in enumerate(placed.rows):
            self._add_patches(batch, frames, starts[at], places[at], sums[at], projections[at])
            if self.has_amplitude and amplitudes is not None:
                self._add_amplitude(amplitudes[index], frames, starts[at])
        self._patches.append(corners, sums, totals, gradients, projections)
        self.frames += len(corners)
        self._solved = None
        return len(corners)

    def _add_patches(
        self,
        batch: np.ndarray,
        frames: np.ndarray,
        starts: np.ndarray,
        places: np.ndarray,
        sums: np.ndarray,
        projections: np.ndarray,
    ) -> None:
        from ptychonn_ophyd.analysis.patch_kernels import add_patches  # numba: see add

        canvas, corner, half = (
            self._canvas.layers["base"],
            self._cut_corner,
            self._tilts.half_intensity,
        )
        add_patches(
            canvas,
            batch,
            frames,
            starts,
            corner,
            self._w32,
            half,
            places,
            SPACING,
            sums,
            projections,
        )

    def _add_amplitude(self, batch: np.ndarray, frames: np.ndarray, starts: np.ndarray) -> None:
        from ptychonn_ophyd.analysis.patch_kernels import add_weighted  # numba: see add

        canvas = self._canvas.layers["amplitude"]
        add_weighted(canvas, batch, frames, starts, self._cut_corner, self._w32)

    def _frame_facts(
        self, moments: tuple[np.ndarray, np.ndarray] | None, kept: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Totals ``(n,)`` and centroid gradients ``(n, 2)`` of the placed frames."""
        n = int(kept.sum())
        if moments is None:
            return np.full(n, np.nan), np.full((n, 2), np.nan)
        totals, centroids = moments
        totals = np.asarray(totals, np.float64).reshape(-1)[kept]
        centroids = np.asarray(centroids, np.float64).reshape(-1, 2)[kept]
        return totals, centroid_gradient(centroids, self.patch_shape[0])

    def phase(self, seconds: float | None = None) -> StitchedImage:
        """The phase of every patch added, tilts and offsets solved to the solver's
        tolerance, from the last solve's offsets (zero at first).

        ``seconds`` bounds the solve (the map's fit half of it at most); :attr:`solved`
        then says whether both reached their tolerance.
        """
        return self._solve(final=True, seconds=seconds)

    def preview(self, between: Callable[[], object] | None = None) -> StitchedImage:
        """As :meth:`phase`, the offsets taking at most :data:`PREVIEW_STEPS` steps
        from the last solve's (the map :data:`MAP_PREVIEW_STEPS`; both fewer for a large
        scan): a picture during a scan that converges from one preview to the next.

        ``between`` is called before each step; it may :meth:`add` patches, which the
        next picture shows (this one shows the :attr:`frames` there were when it
        began)."""
        return self._solve(final=False, seconds=None, between=between)

    def amplitude(self) -> StitchedImage | None:
        """The window-weighted mean amplitude (``None`` without amplitude patches)."""
        if not self.has_amplitude or self._canvas.low is None:
            return None
        grid, box = self._grid()
        total = self._canvas.layers["amplitude"][box]
        return _image(total, grid.weight, self._center(), self.pixel_size_um)

    def _grid(self) -> tuple[_Grid, tuple[slice, slice]]:
        """The lit parts of all patches on the patches' bounding box."""
        box = self._canvas.box()
        corners = self._patches.columns()[0]
        starts = corners + self._canvas.origin + self._cut_corner
        starts -= [box[0].start, box[1].start]
        return _Grid(starts, self._w, self._canvas.layers["base"][box].shape), box

    def _solve(
        self, final: bool, seconds: float | None, between: Callable[[], object] | None = None
    ) -> StitchedImage:
        if self._solved is not None and (self._solved[0] or not final):
            return self._solved[1]
        if self._canvas.low is None:
            empty = np.zeros((0, 0), np.float32)
            return StitchedImage(empty, empty, (0, 0), self.pixel_size_um)
        frames, center = self.frames, self._center()
        corners, sums, totals, gradients, projections = self._patches.columns()
        pause = between if between is not None else _nothing
        grid, box = self._grid()
        total = self._canvas.layers["base"][box].astype(np.float64)
        began = time.monotonic()
        deadline = None if seconds is None else began + seconds
        map_deadline = None if seconds is None else began + seconds / 2
        pause()
        tilts = self._tilts.changes(
            corners, totals, gradients, projections, final, between, map_deadline
        )
        for tilt, plane in zip(tilts.T, self._planes, strict=True):
            pause()
            total += grid.spread(tilt, grid.transform(plane))
        start = np.zeros(len(sums))
        start[: len(self._offsets)] = self._offsets
        steps = MAX_STEPS if final else _steps(PREVIEW_STEPS, PREVIEW_WORK, grid.size)
        sums = sums + tilts @ self._plane_sums
        self._offsets, converged = grid.offsets(sums, total, start, steps, deadline, between)
        self.solved = final and converged and self._tilts.converged
        pause()
        total += grid.spread(self._offsets, grid.transform(self._w))
        image = _image(total, grid.weight, center, self.pixel_size_um)
        if self.frames == frames:  # none added meanwhile
            self._solved = (self.solved, image)
        return image

    def _center(self) -> tuple[int, int]:
        """The pixel of the patches' bounding box that scan position ``(0, 0)`` lights."""
        return int(-self._canvas.low[0]), int(-self._canvas.low[1])


class _Grid:
    """The patches' lit parts on one canvas: spreading per-patch values onto it, and
    gathering window-weighted sums back, as FFT convolutions of one padded size."""

    def __init__(self, starts: np.ndarray, window: np.ndarray, shape: tuple[int, int]) -> None:
        from scipy import fft

        self.window = window
        self.shape = shape
        self.valid = (shape[0] - window.shape[0] + 1, shape[1] - window.shape[1] + 1)
        self._size = (fft.next_fast_len(shape[0], True), fft.next_fast_len(shape[1], True))
        self.size = self._size[0] * self._size[1]
        """Pixels of the padded canvas each convolution transforms."""
        self._window = self.transform(window)
        self.flat = starts[:, 0] * self.valid[1] + starts[:, 1]
        weight = self.spread(np.ones(len(starts)), self._window)
        weight[weight < ROUNDING * weight.max()] = 0  # the FFT's rounding where none lit
        self.weight = weight
        with np.errstate(divide="ignore"):
            self.inverse = np.where(weight > 0, 1 / weight, 0.0)

    def transform(self, kernel: np.ndarray) -> np.ndarray:
        """``kernel``'s transform at the grid's padded size, for :meth:`spread`."""
        from scipy import fft

        return fft.rfft2(kernel, self._size)

    def spread(self, values: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        """``sum_i values_i * kernel`` placed at each patch (``kernel`` transformed)."""
        from scipy import fft

        impulses = np.bincount(self.flat, values, self.valid[0] * self.valid[1])
        spread = fft.irfft2(
            fft.rfft2(impulses.reshape(self.valid), self._size) * kernel, self._size
        )
        return spread[: self.shape[0], : self.shape[1]]

    def gather(self, canvas: np.ndarray) -> np.ndarray:
        """``sum_x window(x) canvas(x)`` over each patch."""
        from scipy import fft

        product = fft.rfft2(canvas, self._size) * np.conj(self._window)
        sums = fft.irfft2(product, self._size)[: self.valid[0], : self.valid[1]]
        return sums.ravel()[self.flat]

    def offsets(
        self,
        sums: np.ndarray,
        total: np.ndarray,
        start: np.ndarray,
        steps: int,
        deadline: float | None,
        between: Callable[[], object] | None = None,
    ) -> tuple[np.ndarray, bool]:
        """The offsets (mean zero) that make the patches agree best with the image all
        the others make (:mod:`~ptychonn_ophyd.analysis.offsets`), by conjugate gradients
        from ``start``, at most ``steps`` of them and none after ``deadline``
        (``time.monotonic``), ``between`` called before each; and whether they reached
        the tolerance.  ``sums`` are each patch's ``sum(w p)``, ``total`` their canvas."""
        diagonal = self.window.sum() * (1 + REGULARISATION)

        def apply(c: np.ndarray) -> np.ndarray:
            return c * diagonal - self.gather(self.spread(c, self._window) * self.inverse)

        rhs = -(sums - self.gather(total * self.inverse))
        offsets, converged = conjugate_gradients(
            apply, rhs, start, tolerance=TOLERANCE, steps=steps, deadline=deadline, between=between
        )
        return offsets - offsets.mean(), converged


def _nothing() -> None:
    """What a solve does between its steps when nobody asked for anything."""


def _steps(most: int, work: int, size: int) -> int:
    """Steps of a preview's solve whose steps each cost ``size``: ``work / size``, from
    :data:`LEAST_PREVIEW_STEPS` to ``most``."""
    return max(LEAST_PREVIEW_STEPS, min(most, work // max(size, 1)))


def _image(
    total: np.ndarray, weight: np.ndarray, center: tuple[int, int], pixel_size_um: float
) -> StitchedImage:
    with np.errstate(invalid="ignore", divide="ignore"):
        image = np.where(weight > 0, total / weight, np.nan)
    return StitchedImage(image.astype(np.float32), weight.astype(np.float32), center, pixel_size_um)
