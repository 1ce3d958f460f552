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

import numpy as np

from ptychonn_ophyd.analysis.canvas import Canvas
from ptychonn_ophyd.analysis.mosaic import (
    add_amplitude,
    check_window,
    placed_patches,
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
    smoothness,
)
from ptychonn_ophyd.physics.probe import check_probe, probe_weight

SPACING = MAP_SPACING
MAP_TOLERANCE = 1e-10
"""Relative residual at which the map's conjugate gradients stop: the nodes then agree
with a direct solve to about 1e-7 (a direct solve costs ten times more at 10,000
frames)."""
MAP_MAX_STEPS = 5_000
"""Conjugate-gradient steps of the map at most."""
PREVIEW_STEPS = 40
"""Conjugate-gradient steps of the offsets at most in one preview: each starts from the
last, so the picture converges over a few, and a long scan's preview stays short."""
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
    """

    def __init__(self, probe: np.ndarray) -> None:
        intensity = np.abs(probe).astype(np.float64) ** 2
        self.cut, self.corner = support_cut(intensity)
        intensity = intensity[self.cut]
        self._half_intensity = (intensity / 2).astype(np.float32)
        self.rows, self.cols = _Hats(intensity.shape[0]), _Hats(intensity.shape[1])
        rows, cols = self.rows.weights.astype(np.float64), self.cols.weights.astype(np.float64)
        share = probe_gradient_field(probe)[(slice(None), *self.cut)] * intensity
        self._counts = np.einsum("yha,hw,xwb->yxab", rows, intensity, cols)
        self._probe_share = np.einsum("yha,khw,xwb->yxkab", rows, share, cols)
        self._last_map: tuple[tuple, np.ndarray] | None = None

    def project(self, phase: np.ndarray, corners: np.ndarray) -> np.ndarray:
        """``(n, 2, a, b)`` projections of each patch's ``grad(phase) * I`` onto the
        map's nodes around it (``phase`` ``(n, p, p)`` at ``corners`` ``(n, 2)``)."""
        lit = phase[(slice(None), *self.cut)]
        along_cols = np.subtract(lit[:, :, 2:], lit[:, :, :-2])
        along_cols *= self._half_intensity[:, 1:-1]
        along_rows = np.subtract(lit[:, 2:], lit[:, :-2])
        along_rows *= self._half_intensity[1:-1]
        first = corners + self.corner
        rows = self.rows.weights[_Hats.place(first[:, 0])[1]].transpose(0, 2, 1)
        cols = self.cols.weights[_Hats.place(first[:, 1])[1]]
        return np.stack(
            [rows @ (along_cols @ cols[:, 1:-1]), rows[:, :, 1:-1] @ (along_rows @ cols)], 1
        )

    def changes(
        self,
        corners: np.ndarray,
        totals: np.ndarray,
        gradients: np.ndarray,
        projections: np.ndarray,
    ) -> np.ndarray:
        """``(n, 2)`` change of each patch's tilt to the one its frame says: the centroid
        ``gradients`` less the probe's share and the patch's own, both weighted by
        ``I * map``; zero for a frame without statistics."""
        first = corners + self.corner
        row_node, row_place = _Hats.place(first[:, 0])
        col_node, col_place = _Hats.place(first[:, 1])
        counted = np.isfinite(totals) & np.isfinite(gradients).all(1)
        if not counted.any():
            return np.zeros((len(totals), 2))
        row_node, col_node = row_node - row_node.min(), col_node - col_node.min()
        origin = (int(first[:, 0].min()), int(first[:, 1].min()))
        nodes = self._map_nodes(row_node, row_place, col_node, col_place, totals, counted, origin)
        a, b = self.rows.count, self.cols.count
        block = nodes[
            row_node[:, None, None] + np.arange(a)[None, :, None],
            col_node[:, None, None] + np.arange(b)[None, None, :],
        ]
        counts = np.einsum("nab,nab->n", self._counts[row_place, col_place], block)
        share = np.einsum("nkab,nab->nk", self._probe_share[row_place, col_place], block)
        own = np.einsum("nkab,nab->nk", projections, block)
        tilts = gradients - (share + own) / counts[:, None]
        tilts[~np.isfinite(tilts).all(1)] = 0
        return tilts

    def _map_nodes(
        self,
        row_node: np.ndarray,
        row_place: np.ndarray,
        col_node: np.ndarray,
        col_place: np.ndarray,
        totals: np.ndarray,
        counted: np.ndarray,
        origin: tuple[int, int],
    ) -> np.ndarray:
        """The transmission map's nodes fitted to the counted frames' totals, as
        :func:`~ptychonn_ophyd.analysis.tilt.transmission_map` fits them, floored at
        :data:`~ptychonn_ophyd.analysis.tilt.DARKEST` of their peak; the fit starts from
        the last one where the node grid (``origin`` its first pixel) is the same."""
        from scipy import sparse
        from scipy.sparse.linalg import cg

        a, b = self.rows.count, self.cols.count
        ny, nx = int(row_node.max()) + a, int(col_node.max()) + b
        n = int(counted.sum())
        entries = self._counts[row_place[counted], col_place[counted]]
        node_rows = row_node[counted][:, None, None] + np.arange(a)[None, :, None]
        node_cols = col_node[counted][:, None, None] + np.arange(b)[None, None, :]
        columns = (node_rows * nx + node_cols).ravel()
        frame = np.repeat(np.arange(n), a * b)
        sums = sparse.csr_matrix((entries.ravel(), (frame, columns)), shape=(n, ny * nx))
        scale = float(np.mean(totals[counted]))
        lhs = (sums.T @ sums + MAP_SMOOTHING * smoothness(ny, nx)).tocsr()
        jacobi = sparse.diags(1 / lhs.diagonal())
        rhs = sums.T @ (totals[counted] / scale)
        last = self._last_map
        start = last[1] if last is not None and last[0] == (origin, ny, nx) else None
        nodes, _ = cg(lhs, rhs, start, rtol=MAP_TOLERANCE, maxiter=MAP_MAX_STEPS, M=jacobi)
        self._last_map = ((origin, ny, nx), nodes)
        nodes = nodes.reshape(ny, nx)
        return np.clip(nodes, DARKEST * nodes.max(), None)


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
        self._cut, self._cut_corner = support_cut(self.window)
        self._w = np.ascontiguousarray(self.window[self._cut], dtype=np.float64)
        self._tilts = FrameTilts(probe)
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
        phase: np.ndarray,
        positions_um: np.ndarray,
        amplitude: np.ndarray | None = None,
        moments: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> int:
        """Add patches ``(N, p, p)`` at ``positions_um`` ``(N, 2)``, with their frames'
        ``moments``: totals ``(N,)`` and centroids ``(N, 2)`` in pattern pixels
        (:func:`~ptychonn_ophyd.moments.frame_moments`; NaN or ``None``: the patch keeps
        its own tilt).  Frames without a finite position are left out; returns how many
        were added."""
        placed = placed_patches(phase, positions_um, self.patch_shape, amplitude)
        if placed is None:
            return 0
        totals, gradients = self._frame_facts(moments, placed.kept)
        corners = placed.corners(self.pixel_size_um)
        self._canvas.cover(corners)
        starts = corners + self._canvas.origin + self._cut_corner
        lit = placed.phase[(slice(None), *self._cut)]
        weighted = lit * self._w.astype(np.float32)
        h, w = self._w.shape
        base = self._canvas.layers["base"]
        for (r, c), patch in zip(starts, weighted, strict=True):
            base[r : r + h, c : c + w] += patch
        if self.has_amplitude and placed.amplitude is not None:
            cut = placed.amplitude[(slice(None), *self._cut)]
            add_amplitude(self._canvas, self._w, starts, cut)
        sums = weighted.reshape(len(lit), -1).sum(1, dtype=np.float64)
        projections = self._tilts.project(placed.phase, corners)
        self._patches.append(corners, sums, totals, gradients, projections)
        self.frames += len(lit)
        self._solved = None
        return len(lit)

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

        ``seconds`` bounds the offsets' solve; :attr:`solved` then says whether it
        reached the tolerance.
        """
        return self._solve(final=True, seconds=seconds)

    def preview(self) -> StitchedImage:
        """As :meth:`phase`, the offsets taking at most :data:`PREVIEW_STEPS` steps
        from the last solve's: a picture during a scan that converges from one preview
        to the next."""
        return self._solve(final=False, seconds=None)

    def amplitude(self) -> StitchedImage | None:
        """The window-weighted mean amplitude (``None`` without amplitude patches)."""
        if not self.has_amplitude or self._canvas.low is None:
            return None
        grid, box = self._grid()
        total = self._canvas.layers["amplitude"][box]
        return _image(self._canvas, total, grid.weight, self.pixel_size_um)

    def _grid(self) -> tuple[_Grid, tuple[slice, slice]]:
        """The lit parts of all patches on the patches' bounding box."""
        box = self._canvas.box()
        corners = self._patches.columns()[0]
        starts = corners + self._canvas.origin + self._cut_corner
        starts -= [box[0].start, box[1].start]
        return _Grid(starts, self._w, self._canvas.layers["base"][box].shape), box

    def _solve(self, final: bool, seconds: float | None) -> StitchedImage:
        if self._solved is not None and (self._solved[0] or not final):
            return self._solved[1]
        if self._canvas.low is None:
            empty = np.zeros((0, 0), np.float32)
            return StitchedImage(empty, empty, (0, 0), self.pixel_size_um)
        corners, sums, totals, gradients, projections = self._patches.columns()
        grid, box = self._grid()
        tilts = self._tilts.changes(corners, totals, gradients, projections)
        total = self._canvas.layers["base"][box].astype(np.float64)
        for tilt, plane in zip(tilts.T, self._planes, strict=True):
            total += grid.spread(tilt, grid.transform(plane))
        start = np.zeros(len(sums))
        start[: len(self._offsets)] = self._offsets
        steps = MAX_STEPS if final else PREVIEW_STEPS
        deadline = None if seconds is None else time.monotonic() + seconds
        sums = sums + tilts @ self._plane_sums
        self._offsets, converged = grid.offsets(sums, total, start, steps, deadline)
        self.solved = final and converged
        total += grid.spread(self._offsets, grid.transform(self._w))
        image = _image(self._canvas, total, grid.weight, self.pixel_size_um)
        self._solved = (self.solved, image)
        return image


class _Grid:
    """The patches' lit parts on one canvas: spreading per-patch values onto it, and
    gathering window-weighted sums back, as FFT convolutions of one padded size."""

    def __init__(self, starts: np.ndarray, window: np.ndarray, shape: tuple[int, int]) -> None:
        from scipy import fft

        self.window = window
        self.shape = shape
        self.valid = (shape[0] - window.shape[0] + 1, shape[1] - window.shape[1] + 1)
        self._size = (fft.next_fast_len(shape[0], True), fft.next_fast_len(shape[1], True))
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
    ) -> tuple[np.ndarray, bool]:
        """The offsets (mean zero) that make the patches agree best with the image all
        the others make (:mod:`~ptychonn_ophyd.analysis.offsets`), by conjugate gradients
        from ``start``, at most ``steps`` of them and none after ``deadline``
        (``time.monotonic``); and whether they reached the tolerance.  ``sums`` are each
        patch's ``sum(w p)``, ``total`` their canvas."""
        diagonal = self.window.sum() * (1 + REGULARISATION)

        def apply(c: np.ndarray) -> np.ndarray:
            return c * diagonal - self.gather(self.spread(c, self._window) * self.inverse)

        rhs = -(sums - self.gather(total * self.inverse))
        offsets = start.copy()
        residual = rhs - apply(offsets)
        direction, size = residual.copy(), residual @ residual
        goal = TOLERANCE**2 * (rhs @ rhs)
        for _ in range(steps):
            if size <= goal or (deadline is not None and time.monotonic() > deadline):
                break
            applied = apply(direction)
            curvature = direction @ applied
            if not curvature > 0:  # nothing left but rounding
                size = goal
                break
            step = size / curvature
            offsets += step * direction
            residual -= step * applied
            size, previous = residual @ residual, size
            direction = residual + (size / previous) * direction
        return offsets - offsets.mean(), bool(size <= goal)


def _image(
    canvas: Canvas, total: np.ndarray, weight: np.ndarray, pixel_size_um: float
) -> StitchedImage:
    with np.errstate(invalid="ignore", divide="ignore"):
        image = np.where(weight > 0, total / weight, np.nan)
    center = (int(-canvas.low[0]), int(-canvas.low[1]))
    return StitchedImage(image.astype(np.float32), weight.astype(np.float32), center, pixel_size_um)
