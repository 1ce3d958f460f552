"""The solved mosaic's per-patch loops, compiled: adding a patch costs its pixels.

:class:`~ptychonn_ophyd.analysis.solved_mosaic.SolvedMosaic` keeps, of every patch, its
window-weighted sum on a canvas and its phase gradient projected on the transmission
map's bilinear nodes, and fits the map to the frames' totals.  In numpy each is several
passes over the patch and a Python call per patch, and the map's normal equations had
to be assembled before every solve; here each is one loop over the patches, compiled by
numba (cached on disk after the first run) and run without the GIL, so that the result
monitor's threads go on meanwhile.

The adding loops take the batch as the worker delivered it, ``patches`` ``(n, p, p)``,
and the indices ``frames`` of the ones to add, so that frames without a position are
skipped without copying the others.
"""

from __future__ import annotations

import numba
import numpy as np

FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
"""Floating-point freedoms the loops take: reordering sums lets them run on vector
registers (sums then differ from numpy's in the last bits); NaN and infinity keep their
meaning."""


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def add_weighted(
    layer: np.ndarray,
    patches: np.ndarray,
    frames: np.ndarray,
    starts: np.ndarray,
    corner: np.ndarray,
    window: np.ndarray,
) -> None:
    """Add ``window * patch`` of each patch ``patches[frames[k]]``, cut at ``corner``
    ``(row, col)`` to the window's shape, to ``layer`` at ``starts[k]``."""
    h, w = window.shape
    r0, c0 = corner[0], corner[1]
    for k in range(frames.shape[0]):
        patch = patches[frames[k]]
        sr, sc = starts[k, 0], starts[k, 1]
        for y in range(h):
            _add_row(layer[sr + y, sc : sc + w], window[y], patch[r0 + y, c0 : c0 + w])


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def add_patches(
    layer: np.ndarray,
    patches: np.ndarray,
    frames: np.ndarray,
    starts: np.ndarray,
    corner: np.ndarray,
    window: np.ndarray,
    half_intensity: np.ndarray,
    places: np.ndarray,
    spacing: int,
    sums: np.ndarray,
    projections: np.ndarray,
) -> None:
    """:func:`add_weighted`, with each patch's sum added into ``sums[k]`` (float32
    along a row, float64 over rows), and, in the same pass over the patch, add to
    ``projections[k]`` the projection of its central-difference gradient, times
    ``half_intensity`` (the probe's intensity halved, cut as the window is), on the
    bilinear nodes ``spacing`` pixels apart: ``[k, 0]`` along columns, ``[k, 1]`` along
    rows, each ``(a, b)`` nodes from the one before the cut's first pixel, which lies
    ``places[k]`` ``(row, col)`` pixels after it.  Only interior pixels have a gradient
    (``p[x + 1] - p[x - 1]`` for ``1 <= x <= w - 2``).

    Each gradient row is spread on its two row nodes first (contiguous, vectorised),
    then each node's row on the column nodes: a few operations a pixel.
    """
    h, w = window.shape
    r0, c0 = corner[0], corner[1]
    a = projections.shape[2]
    along_cols = np.empty((a, w), np.float32)
    along_rows = np.empty((a, w), np.float32)
    gradient = np.zeros(w, np.float32)
    for k in range(frames.shape[0]):
        patch = patches[frames[k]]
        sr, sc = starts[k, 0], starts[k, 1]
        along_cols[:] = 0.0
        along_rows[:] = 0.0
        total = 0.0
        for y in range(h):
            row = patch[r0 + y, c0 : c0 + w]
            total += _add_row(layer[sr + y, sc : sc + w], window[y], row)
            node, before, after = _hat(places[k, 0] + y, spacing)
            halves = half_intensity[y]
            for x in range(1, w - 1):
                gradient[x] = (row[x + 1] - row[x - 1]) * halves[x]
            _spread_row(
                gradient[1 : w - 1],
                before,
                after,
                along_cols[node, 1 : w - 1],
                along_cols[node + 1, 1 : w - 1],
            )
            if 1 <= y <= h - 2:
                up, down = patch[r0 + y - 1, c0 : c0 + w], patch[r0 + y + 1, c0 : c0 + w]
                for x in range(w):
                    gradient[x] = (down[x] - up[x]) * halves[x]
                _spread_row(gradient, before, after, along_rows[node], along_rows[node + 1])
        sums[k] = total
        out = projections[k]
        for x in range(w):
            node, before, after = _hat(places[k, 1] + x, spacing)
            inner = 1 <= x <= w - 2
            for j in range(a):
                if inner:
                    out[0, j, node] += along_cols[j, x] * before
                    out[0, j, node + 1] += along_cols[j, x] * after
                out[1, j, node] += along_rows[j, x] * before
                out[1, j, node + 1] += along_rows[j, x] * after


@numba.njit(inline="always", fastmath=FASTMATH)
def _add_row(target: np.ndarray, weights: np.ndarray, row: np.ndarray) -> float:
    """``target += weights * row``; returns the sum added (float32)."""
    added = np.float32(0.0)
    for x in range(row.shape[0]):
        value = weights[x] * row[x]
        target[x] += value
        added += value
    return added


@numba.njit(inline="always", fastmath=FASTMATH)
def _spread_row(
    values: np.ndarray, before: float, after: float, low: np.ndarray, high: np.ndarray
) -> None:
    """Spread ``values`` on two nodes' rows with the bilinear weights ``before`` and
    ``after``."""
    for x in range(values.shape[0]):
        low[x] += values[x] * before
        high[x] += values[x] * after


@numba.njit(inline="always")
def _hat(pixel: int, spacing: int) -> tuple[int, np.float32, np.float32]:
    """The node before ``pixel`` and the bilinear weights of it and the next."""
    node = pixel // spacing
    after = np.float32((pixel - node * spacing) / spacing)
    return node, np.float32(1.0) - after, after


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def apply_map_sums(
    nodes: np.ndarray, blocks: np.ndarray, places: np.ndarray, counts: np.ndarray, out: np.ndarray
) -> None:
    """Add ``S^T S nodes`` to ``out`` (both ``(ny, nx)``), where row ``k`` of ``S``
    holds frame ``k``'s probe-weighted sum of each map node: ``counts[places[k]]``
    ``(a, b)`` over the nodes from ``blocks[k]`` ``(row, col)`` on."""
    a, b = counts.shape[2], counts.shape[3]
    for k in range(blocks.shape[0]):
        entries = counts[places[k, 0], places[k, 1]]
        r, c = blocks[k, 0], blocks[k, 1]
        total = 0.0
        for i in range(a):
            for j in range(b):
                total += entries[i, j] * nodes[r + i, c + j]
        for i in range(a):
            for j in range(b):
                out[r + i, c + j] += total * entries[i, j]


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def spread_map_sums(
    values: np.ndarray,
    blocks: np.ndarray,
    places: np.ndarray,
    counts: np.ndarray,
    power: int,
    out: np.ndarray,
) -> None:
    """Add ``values[k] * entries ** power`` of each frame's row of ``S`` (see
    :func:`apply_map_sums`) to ``out``: ``S^T values`` with ``power`` 1, the diagonal
    of ``S^T S`` with ``values`` one and ``power`` 2."""
    a, b = counts.shape[2], counts.shape[3]
    for k in range(blocks.shape[0]):
        entries = counts[places[k, 0], places[k, 1]]
        r, c = blocks[k, 0], blocks[k, 1]
        for i in range(a):
            for j in range(b):
                out[r + i, c + j] += values[k] * entries[i, j] ** power


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH, error_model="numpy")
def weigh_by_map(
    nodes: np.ndarray,
    blocks: np.ndarray,
    places: np.ndarray,
    counts: np.ndarray,
    probe_share: np.ndarray,
    projections: np.ndarray,
    out: np.ndarray,
) -> None:
    """Each frame's gradient share ``(probe_share[places[k]] + projections[k])`` ``(2,
    a, b)`` weighted by the map's ``nodes`` from ``blocks[k]`` on, over its
    probe-weighted sum of them (``counts[places[k]]``, see :func:`apply_map_sums`), into
    ``out[k]`` ``(2,)``: the patch's and the probe's share of the frame's centroid
    gradient under the map (not finite where the map gives the frame no weight)."""
    a, b = counts.shape[2], counts.shape[3]
    for k in range(blocks.shape[0]):
        entries = counts[places[k, 0], places[k, 1]]
        share = probe_share[places[k, 0], places[k, 1]]
        own = projections[k]
        r, c = blocks[k, 0], blocks[k, 1]
        weight = 0.0
        along_cols = 0.0
        along_rows = 0.0
        for i in range(a):
            for j in range(b):
                node = nodes[r + i, c + j]
                weight += entries[i, j] * node
                along_cols += (share[0, i, j] + own[0, i, j]) * node
                along_rows += (share[1, i, j] + own[1, i, j]) * node
        out[k, 0] = along_cols / weight
        out[k, 1] = along_rows / weight
