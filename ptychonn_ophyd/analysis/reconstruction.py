"""Judging a reconstructed phase image against the truth.

Stitching itself is :class:`~ptychonn_ophyd.analysis.mosaic.Mosaic`.
"""

from __future__ import annotations

import numpy as np


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
