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
    sums: np.ndarray,
) -> None:
    """Add ``window * patch`` of each patch ``patches[frames[k]]``, cut at ``corner``
    ``(row, col)`` to the window's shape, to ``layer`` at ``starts[k]``; its sum into
    ``sums[k]`` (float32 along a row, float64 over rows)."""
    h, w = window.shape
    r0, c0 = corner[0], corner[1]
    for k in range(frames.shape[0]):
        patch = patches[frames[k]]
        sr, sc = starts[k, 0], starts[k, 1]
        total = 0.0
        for y in range(h):
            source = patch[r0 + y, c0 : c0 + w]
            target = layer[sr + y, sc : sc + w]
            weights = window[y]
            row = np.float32(0.0)
            for x in range(w):
                value = weights[x] * source[x]
                target[x] += value
                row += value
            total += row
        sums[k] = total


@numba.njit(cache=True, nogil=True, fastmath=FASTMATH)
def project_gradients(
    patches: np.ndarray,
    frames: np.ndarray,
    places: np.ndarray,
    corner: np.ndarray,
    half_intensity: np.ndarray,
    spacing: int,
    projections: np.ndarray,
) -> None:
    """Add to ``projections[k]`` the projection of patch ``patches[frames[k]]``'s
    central-difference gradient, times ``half_intensity`` (the probe's intensity halved,
    cut at ``corner``), on the bilinear nodes ``spacing`` pixels apart: ``[k, 0]`` along
    columns, ``[k, 1]`` along rows, each ``(a, b)`` nodes from the one before the cut's
    first pixel, which lies ``places[k]`` ``(row, col)`` pixels after it.  Only interior
    pixels have a gradient (``p[x + 1] - p[x - 1]`` for ``1 <= x <= w - 2``).

    Each gradient row is spread on its two row nodes first (contiguous, vectorised),
    then each node's row on the column nodes: two passes of a few operations a pixel.
    """
    h, w = half_intensity.shape
    r0, c0 = corner[0], corner[1]
    a = projections.shape[2]
    along_cols = np.empty((a, w), np.float32)
    along_rows = np.empty((a, w), np.float32)
    gradient = np.zeros(w, np.float32)
    for k in range(frames.shape[0]):
        patch = patches[frames[k]]
        along_cols[:] = 0.0
        along_rows[:] = 0.0
        for y in range(h):
            node, before, after = _hat(places[k, 0] + y, spacing)
            weights = half_intensity[y]
            row = patch[r0 + y, c0 : c0 + w]
            for x in range(1, w - 1):
                gradient[x] = (row[x + 1] - row[x - 1]) * weights[x]
            low, high = along_cols[node], along_cols[node + 1]
            for x in range(1, w - 1):
                low[x] += gradient[x] * before
                high[x] += gradient[x] * after
            if 1 <= y <= h - 2:
                up, down = patch[r0 + y - 1, c0 : c0 + w], patch[r0 + y + 1, c0 : c0 + w]
                low, high = along_rows[node], along_rows[node + 1]
                for x in range(w):
                    step = (down[x] - up[x]) * weights[x]
                    low[x] += step * before
                    high[x] += step * after
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
