"""Synthetic detector frames for tests."""

from __future__ import annotations

import numpy as np


def poisson_frames(n: int, shape=(128, 128), seed: int = 0) -> np.ndarray:
    """Random Poisson-count frames, bright in the middle like a diffraction pattern."""
    rng = np.random.default_rng(seed)
    y, x = np.indices(shape) - np.array(shape)[:, None, None] / 2
    mean = 200 * np.exp(-(x**2 + y**2) / (2 * (shape[0] / 8) ** 2)) + 0.5
    return rng.poisson(mean, (n, *shape)).astype(np.int16)
