"""Turning predicted phase patches into one object image, and judging it.

No single diffraction frame reveals its patch's absolute phase, so every prediction
carries its own constant offset; :func:`align_offsets` finds the offsets that make
overlapping patches agree before they are stitched.
"""

from __future__ import annotations

import numpy as np

from ptychonn_ophyd.analysis.stitch import StitchedImage, patch_corners, stitch


def align_offsets(patches: np.ndarray, corners: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Constant phase to add to each patch so that overlapping patches agree best.

    Solves ``min sum_ij sum_px w_i w_j (p_i + c_i - p_j - c_j)**2`` over overlapping
    pairs (a graph Laplacian system) and returns ``c`` with zero mean.

    Parameters
    ----------
    patches
        ``(N, p, p)`` phase patches.
    corners
        ``(N, 2)`` top-left pixel ``(row, col)`` of each patch in a common grid.
    weight
        ``(p, p)`` trust in each patch pixel, e.g. the probe intensity.
    """
    n, p = len(patches), weight.shape[0]
    laplacian = np.zeros((n, n))
    rhs = np.zeros(n)
    for i in range(n):
        shifts = corners[i + 1 :] - corners[i]
        for k in np.flatnonzero(np.all(np.abs(shifts) < p, axis=1)):
            j = i + 1 + k
            dr, dc = shifts[k]
            in_i = (slice(max(0, dr), p + min(0, dr)), slice(max(0, dc), p + min(0, dc)))
            in_j = (slice(max(0, -dr), p + min(0, -dr)), slice(max(0, -dc), p + min(0, -dc)))
            both = weight[in_i] * weight[in_j]
            a = both.sum()
            d = np.sum(both * (patches[i][in_i] - patches[j][in_j]))
            laplacian[[i, j], [i, j]] += a
            laplacian[[i, j], [j, i]] -= a
            rhs[i] -= d
            rhs[j] += d
    offsets = np.linalg.lstsq(laplacian, rhs, rcond=None)[0]
    return offsets - offsets.mean()


def stitch_aligned(
    patches: np.ndarray,
    positions_um: np.ndarray,
    pixel_size_um: float,
    shape: tuple[int, int] | None = None,
    weight: np.ndarray | None = None,
) -> StitchedImage:
    """Stitch ``patches`` after :func:`align_offsets`, weighting pixels by ``weight``.

    ``shape`` and ``weight`` are as for :func:`~ptychonn_ophyd.analysis.stitch.stitch`.
    """
    corners = patch_corners(positions_um, pixel_size_um, patches.shape[1:])
    trust = np.ones(patches.shape[1:], np.float32) if weight is None else weight
    offsets = align_offsets(patches, corners, trust)
    aligned = patches + offsets[:, None, None].astype(patches.dtype)
    return stitch(aligned, positions_um, pixel_size_um, shape, weight)


def compare_phase(
    reconstruction: np.ndarray, truth: np.ndarray, region: np.ndarray
) -> tuple[float, float]:
    """SSIM and RMS error (radians) of a phase image over ``region``, one offset removed.

    SSIM is taken of both images mapped by the truth's range in ``region`` onto [0, 1]
    (SSIM expects non-negative images) and averaged over ``region``.
    """
    from skimage.metrics import structural_similarity

    reconstruction = reconstruction - np.mean((reconstruction - truth)[region])
    reconstruction = np.where(np.isfinite(reconstruction), reconstruction, truth)
    low, span = float(truth[region].min()), float(np.ptp(truth[region]))
    _, ssim_map = structural_similarity(
        (truth - low) / span, (reconstruction - low) / span, data_range=1.0, full=True
    )
    rms = np.sqrt(np.mean((reconstruction - truth)[region] ** 2))
    return float(ssim_map[region].mean()), float(rms)
