"""Each phase patch's tilt read off its frame: the centre of mass of the diffraction pattern.

A single frame tells PtychoNN its patch's phase only up to what the network can infer,
and it infers the patch's mean phase gradient (its *tilt*) poorly: the demo model's tilts
regress on the truth's with slope 0.82.  In a stitched image every tilt error becomes an
offset error of the patches placed after it, and that is most of the stitched error.

The frame holds the tilt exactly.  The centre of mass of a far-field pattern is the mean
phase gradient of the exit wave ``P * O`` weighted by its intensity::

    2 pi (c - n//2) / n  =  sum(|P O|^2 grad(phase_O + phase_P)) / sum(|P O|^2)

for a centred pattern of side ``n`` (``c`` its centroid in pattern pixels).  The probe's
own gradient is known, but its share is weighted by the object's amplitude ``|O|``.  The
frames' totals give that amplitude where it matters: each total is ``sum(|P|^2 |O|^2)``
around its scan point, and over a scan whose points overlap, those sums determine a
smooth map of ``|O|^2`` (:func:`transmission_map`).  :func:`corrected_tilts` gives every
patch the tilt its frame says.  On the held-out scan this takes the demo model's
stitched SSIM from 0.67 to 0.87 (BENCHMARKS.md, "Each patch's tilt from its frame").

Gradients are ``(n, 2)`` arrays of ``(d/dx, d/dy)`` in radians per object pixel, ``x``
along columns, as positions are ``(x, y)``.
"""

from __future__ import annotations

import numpy as np

from ptychonn_ophyd.analysis.offsets import stitch_with_solved_offsets
from ptychonn_ophyd.analysis.stitch import StitchedImage, patch_corners, smallest_canvas

MAP_SPACING = 8
"""Node spacing (object pixels) of the piecewise-bilinear transmission map."""
MAP_SMOOTHING = 1e-3
"""Weight of the squared differences between neighbouring map nodes."""
DARKEST = 1e-3
"""Floor of the map, as a fraction of its maximum: no patch is weighted to nothing."""
CHUNK = 128
"""Patches corrected at once: the working memory is a few float64 arrays of this many
patches (17 MB each for 128x128 patches), whatever the scan's length."""


def gradient_field(patches: np.ndarray) -> np.ndarray:
    """Central differences ``(2, n, p, p)`` (along columns, along rows) of phase patches,
    zero on the rim."""
    grad = np.zeros((2, *patches.shape))
    grad[0, ..., 1:-1] = (patches[..., 2:] - patches[..., :-2]) / 2
    grad[1, ..., 1:-1, :] = (patches[..., 2:, :] - patches[..., :-2, :]) / 2
    return grad


def mean_gradient(grad: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``(n, 2)`` weighted means of a gradient field ``(2, n or 1, p, p)``."""
    return ((grad * weight).sum((-2, -1)) / weight.sum((-2, -1))).T


def with_mean_gradient(patches: np.ndarray, gradient: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """``patches`` plus the planes that give them the weighted mean ``gradient`` ``(n, 2)``."""
    side = np.arange(patches.shape[-1]) - patches.shape[-1] / 2
    change = gradient - mean_gradient(gradient_field(patches), weight)
    return patches + change[:, 0, None, None] * side + change[:, 1, None, None] * side[:, None]


def centroid_gradient(centroids: np.ndarray, pattern_size: int) -> np.ndarray:
    """``(n, 2)`` mean phase gradient of each exit wave from its pattern's centroid.

    Parameters
    ----------
    centroids
        ``(n, 2)`` centre of mass ``(x, y)`` (column, row) of each centred far-field
        pattern, in pattern pixels (as :func:`~ptychonn_ophyd.moments.frame_moments`
        gives it).
    pattern_size
        The pattern's side, the patch's side.
    """
    centroids = np.asarray(centroids, np.float64).reshape(-1, 2)
    return (centroids - pattern_size // 2) * 2 * np.pi / pattern_size


def probe_gradient_field(probe: np.ndarray) -> np.ndarray:
    """``(2, p, p)`` phase gradient of the probe (along columns, along rows), zero on
    the rim."""
    grad = np.zeros((2, *probe.shape))
    grad[0, :, 1:-1] = np.angle(probe[:, 2:] * np.conj(probe[:, :-2])) / 2
    grad[1, 1:-1] = np.angle(probe[2:] * np.conj(probe[:-2])) / 2
    return grad


def probe_gradient_share(probe: np.ndarray, amplitude: np.ndarray) -> np.ndarray:
    """``(n, 2)``: the probe's phase gradient weighted by ``|probe * amplitude|**2``."""
    return mean_gradient(probe_gradient_field(probe)[:, None], np.abs(probe) ** 2 * amplitude**2)


def transmission_map(
    totals: np.ndarray,
    corners: np.ndarray,
    probe_intensity: np.ndarray,
    shape: tuple[int, int],
    spacing: int = MAP_SPACING,
    smoothing: float = MAP_SMOOTHING,
) -> np.ndarray:
    """The smooth ``|O|**2`` (up to scale) whose probe-weighted sums are the frames' totals.

    Solves ``totals[i] = sum(probe_intensity * M[patch i])`` in least squares for ``M``
    piecewise bilinear between nodes ``spacing`` pixels apart, with ``smoothing`` times
    the squared differences of neighbouring nodes added (it fills what no frame sees).

    Parameters
    ----------
    totals
        ``(n,)`` counts of each frame (any common scale).
    corners
        ``(n, 2)`` top-left ``(row, col)`` of each patch in the map, inside ``shape``.
    probe_intensity
        ``(p, p)`` ``|probe|**2``.
    shape
        The map's ``(rows, cols)``.
    """
    from scipy import sparse
    from scipy.sparse.linalg import spsolve

    scale = float(np.mean(totals))
    by, bx = _hat_basis(shape[0], spacing), _hat_basis(shape[1], spacing)
    ny, nx = by.shape[1], bx.shape[1]
    p, reach = probe_intensity.shape[0], probe_intensity.shape[0] // spacing + 2
    entries, columns = [], []
    for r, c in corners:  # each patch touches a block of about reach x reach nodes
        a, b = r // spacing, c // spacing
        ys, xs = by[r : r + p, a : a + reach], bx[c : c + p, b : b + reach]
        entries.append((ys.T @ probe_intensity @ xs).ravel())
        node_rows, node_cols = np.meshgrid(a + np.arange(ys.shape[1]), b + np.arange(xs.shape[1]))
        columns.append((node_rows.T * nx + node_cols.T).ravel())
    frame_of = np.repeat(np.arange(len(corners)), [len(e) for e in entries])
    sums = sparse.csr_matrix(
        (np.concatenate(entries), (frame_of, np.concatenate(columns))),
        shape=(len(corners), ny * nx),
    )
    lhs = (sums.T @ sums + smoothing * smoothness(ny, nx)).tocsc()
    nodes = spsolve(lhs, sums.T @ (np.asarray(totals) / scale)).reshape(ny, nx)
    return scale * (by @ nodes @ bx.T)


def smoothness(ny: int, nx: int):
    """The sparse ``(ny nx, ny nx)`` matrix of the summed squared differences of
    neighbouring nodes of a ``(ny, nx)`` grid: ``D_y^T D_y + D_x^T D_x``."""
    from scipy import sparse

    dy = sparse.kron(_differences(ny), sparse.eye(nx))
    dx = sparse.kron(sparse.eye(ny), _differences(nx))
    return dy.T @ dy + dx.T @ dx


def _differences(n: int):
    """The ``(n - 1, n)`` sparse matrix of differences of neighbours."""
    from scipy import sparse

    return sparse.diags([-np.ones(n - 1), np.ones(n - 1)], [0, 1], shape=(n - 1, n))


def _hat_basis(n: int, spacing: int) -> np.ndarray:
    """``(n, nodes)`` linear interpolation weights of ``n`` pixels from nodes ``spacing`` apart."""
    nodes = np.arange(0, n + spacing, spacing)
    return np.clip(1 - np.abs(np.arange(n)[:, None] - nodes) / spacing, 0, None)


def corrected_tilts(
    phase: np.ndarray,
    positions_um: np.ndarray,
    pixel_size_um: float,
    probe: np.ndarray,
    totals: np.ndarray,
    centroids: np.ndarray,
) -> np.ndarray:
    """Phase patches ``(n, p, p)`` given the tilts their frames' centres of mass say.

    Parameters
    ----------
    phase
        Predicted phase patches, in scan order.
    positions_um
        ``(n, 2)`` scan positions ``(x, y)``, finite.
    pixel_size_um
        Object pixel size.
    probe
        ``(p, p)`` complex probe the frames were taken with.
    totals, centroids
        Each frame's total counts and pattern centroid
        (:func:`~ptychonn_ophyd.moments.frame_moments`).

    Returns
    -------
    The patches plus the plane that makes each one's mean phase gradient, weighted by
    ``|probe * amplitude|**2``, the frame's centroid gradient less the probe's share,
    in ``phase``'s floating dtype (at least float32), worked out :data:`CHUNK` patches
    at a time.  A frame without statistics (NaN) or without counts leaves its patch as
    it is.
    """
    phase = np.asarray(phase)
    p = phase.shape[-1]
    if probe.shape != phase.shape[1:]:
        raise ValueError(f"probe {probe.shape} does not fit patches {phase.shape[1:]}")
    corners = patch_corners(positions_um, pixel_size_um, probe.shape)
    shift, shape = smallest_canvas(corners, probe.shape)
    corners = corners + shift
    intensity = np.abs(probe).astype(np.float64) ** 2
    totals = np.asarray(totals, np.float64)
    centroids = np.asarray(centroids, np.float64).reshape(-1, 2)
    counted = np.isfinite(totals)
    square = transmission_map(totals[counted], corners[counted], intensity, shape)
    square = np.clip(square, DARKEST * square.max(), None)
    tilted = np.empty(phase.shape, np.result_type(phase.dtype, np.float32))
    for start in range(0, len(phase), CHUNK):
        part = np.s_[start : start + CHUNK]
        patches = np.asarray(phase[part], np.float64)
        amplitude = np.sqrt(np.stack([square[r : r + p, c : c + p] for r, c in corners[part]]))
        weight = intensity * amplitude**2
        gradient = centroid_gradient(centroids[part], p) - probe_gradient_share(probe, amplitude)
        dark = ~np.isfinite(gradient).all(1)
        gradient[dark] = mean_gradient(gradient_field(patches[dark]), weight[dark])
        tilted[part] = with_mean_gradient(patches, gradient, weight)
    return tilted


def stitch_tilt_corrected(
    phase: np.ndarray,
    positions_um: np.ndarray,
    pixel_size_um: float,
    probe: np.ndarray,
    moments: tuple[np.ndarray, np.ndarray],
    window: np.ndarray,
    shape: tuple[int, int] | None = None,
) -> StitchedImage:
    """Phase patches given their frames' tilts (:func:`corrected_tilts`, ``moments`` its
    ``totals, centroids``) and stitched with the offsets that make all of them agree
    best (:func:`~ptychonn_ophyd.analysis.offsets.stitch_with_solved_offsets`, which
    takes ``window`` and ``shape``)."""
    tilted = corrected_tilts(phase, positions_um, pixel_size_um, probe, *moments)
    return stitch_with_solved_offsets(tilted, positions_um, pixel_size_um, window, shape)
