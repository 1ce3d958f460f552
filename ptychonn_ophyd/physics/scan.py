"""Scan paths in micrometres and their conversion to object pixels.

Convention used throughout the package: a position array has shape ``(N, 2)`` with
columns ``(x, y)`` in micrometres, relative to the centre of the object.  ``x`` runs
along image columns (axis 1) and ``y`` along image rows (axis 0), so a motor position
``(x, y)`` lights the patch centred on pixel ``(row, col) = (cy + y/p, cx + x/p)``
where ``p`` is the object pixel size in micrometres and ``(cy, cx) = (H // 2, W // 2)``.
"""

from __future__ import annotations

import numpy as np

GOLDEN_ANGLE = np.pi * (3.0 - np.sqrt(5.0))
"""Angle between successive Fermat-spiral points (about 137.5 degrees)."""


def raster_scan(
    n_x: int, n_y: int, step_um: float, snake: bool = True, center_um: tuple[float, float] = (0, 0)
) -> np.ndarray:
    """A rectangular grid of ``n_x`` by ``n_y`` points, ``step_um`` apart, centred.

    With ``snake`` every other row runs backwards, as a fly scan would.
    """
    if n_x < 1 or n_y < 1 or step_um <= 0:
        raise ValueError(f"need n_x, n_y >= 1 and step > 0: {n_x}, {n_y}, {step_um}")
    xs = (np.arange(n_x) - (n_x - 1) / 2) * step_um
    ys = (np.arange(n_y) - (n_y - 1) / 2) * step_um
    rows = [xs[::-1] if snake and j % 2 else xs for j in range(n_y)]
    x = np.concatenate(rows)
    y = np.repeat(ys, n_x)
    return np.stack([x + center_um[0], y + center_um[1]], axis=1)


def fermat_spiral(
    radius_um: float, step_um: float, center_um: tuple[float, float] = (0, 0)
) -> np.ndarray:
    """A Fermat spiral filling a disc of ``radius_um`` with one point per ``step_um**2``.

    Point ``k`` sits at radius ``step * sqrt(k / pi)`` and angle ``k * golden angle``,
    which covers the disc evenly with no grid periodicity (no raster artefacts).
    """
    if radius_um <= 0 or step_um <= 0:
        raise ValueError(f"radius and step must be positive: {radius_um}, {step_um}")
    n_points = max(1, int(np.pi * (radius_um / step_um) ** 2))
    k = np.arange(n_points)
    r = step_um * np.sqrt(k / np.pi)
    theta = k * GOLDEN_ANGLE
    return np.stack([center_um[0] + r * np.cos(theta), center_um[1] + r * np.sin(theta)], axis=1)


def object_center(object_shape: tuple[int, int]) -> np.ndarray:
    """The pixel ``(x, y)`` that position ``(0, 0)`` lights: ``(W // 2, H // 2)``."""
    return np.array([object_shape[1] // 2, object_shape[0] // 2], dtype=np.float64)


def to_pixels(
    positions_um: np.ndarray, pixel_size_um: float, object_shape: tuple[int, int]
) -> np.ndarray:
    """Positions ``(x, y)`` in micrometres to fractional object pixels ``(x, y)``."""
    positions_um = np.asarray(positions_um, dtype=np.float64).reshape(-1, 2)
    return object_center(object_shape) + positions_um / pixel_size_um


def to_micrometres(
    positions_px: np.ndarray, pixel_size_um: float, object_shape: tuple[int, int]
) -> np.ndarray:
    """Inverse of :func:`to_pixels`."""
    positions_px = np.asarray(positions_px, dtype=np.float64).reshape(-1, 2)
    return (positions_px - object_center(object_shape)) * pixel_size_um
