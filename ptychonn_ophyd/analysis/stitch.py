"""Placing predicted patches at their scan positions to make one object image.

Positions follow :mod:`ptychonn_ophyd.physics.scan`: ``(x, y)`` in micrometres from the
object centre, ``x`` along columns; position ``(x, y)`` lights the patch centred on pixel
``(row, col) = (cy + y / p, cx + x / p)`` of an object whose centre pixel is
``(cy, cx) = (H // 2, W // 2)`` and whose pixel size is ``p``. Where patches overlap,
their values are averaged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StitchedImage:
    """An object image made of patches.

    Attributes
    ----------
    image
        Float32 ``(H, W)``; NaN where no patch landed.
    weight
        Summed patch weight of each pixel (the number of patches without a window).
    center
        ``(row, col)`` pixel that position ``(0, 0)`` lights.
    pixel_size_um
        Side of one pixel in micrometres.
    """

    image: np.ndarray
    weight: np.ndarray
    center: tuple[int, int]
    pixel_size_um: float

    @property
    def extent_um(self) -> tuple[float, float, float, float]:
        """``(left, right, bottom, top)`` in micrometres, for ``imshow(origin="upper")``."""
        h, w = self.image.shape
        p = self.pixel_size_um
        cy, cx = self.center
        return ((-cx - 0.5) * p, (w - cx - 0.5) * p, (h - cy - 0.5) * p, (-cy - 0.5) * p)

    def on_grid(self, shape: tuple[int, int]) -> StitchedImage:
        """The same image on a grid of ``shape`` whose centre pixel ``shape // 2`` is
        position ``(0, 0)`` (an object's grid); cut where it overflows, NaN where empty."""
        image = np.full(shape, np.nan, np.float32)
        weight = np.zeros(shape, np.float32)
        shift = np.array(shape) // 2 - np.array(self.center)
        rows = slice(max(shift[0], 0), min(shift[0] + self.image.shape[0], shape[0]))
        cols = slice(max(shift[1], 0), min(shift[1] + self.image.shape[1], shape[1]))
        source = np.s_[
            rows.start - shift[0] : rows.stop - shift[0],
            cols.start - shift[1] : cols.stop - shift[1],
        ]
        image[rows, cols] = self.image[source]
        weight[rows, cols] = self.weight[source]
        center = tuple(int(v) for v in np.array(shape) // 2)
        return StitchedImage(image, weight, center, self.pixel_size_um)


def patch_corners(
    positions_um: np.ndarray, pixel_size_um: float, patch_shape: tuple[int, int]
) -> np.ndarray:
    """Top-left ``(row, col)`` of each patch, relative to the pixel that ``(0, 0)`` lights."""
    positions_um = np.asarray(positions_um, dtype=np.float64).reshape(-1, 2)
    if pixel_size_um <= 0:
        raise ValueError(f"pixel size must be positive, got {pixel_size_um}")
    centers = np.rint(positions_um[:, ::-1] / pixel_size_um).astype(np.int64)
    return centers - np.array(patch_shape) // 2


def smallest_canvas(
    corners: np.ndarray, patch_shape: tuple[int, int]
) -> tuple[np.ndarray, tuple[int, int]]:
    """The shift that puts patches at ``corners`` ``(N, 2)`` on the smallest canvas
    holding them all, and that canvas's ``(rows, cols)``."""
    shift = -corners.min(axis=0)
    shape = (corners + shift).max(axis=0) + np.asarray(patch_shape)
    return shift, (int(shape[0]), int(shape[1]))


def stitch(
    patches: np.ndarray,
    positions_um: np.ndarray,
    pixel_size_um: float,
    shape: tuple[int, int] | None = None,
    window: np.ndarray | None = None,
) -> StitchedImage:
    """Average ``patches`` ``(N, h, w)`` placed at ``positions_um`` ``(N, 2)`` into one image.

    Parameters
    ----------
    shape
        Size of the object grid (patches falling outside are clipped); ``None`` makes the
        smallest image holding every patch.
    window
        ``(h, w)`` weight of each patch pixel, e.g. to trust the probe centre more;
        ``None`` weighs all pixels alike.
    """
    patches = np.asarray(patches, dtype=np.float32)
    if patches.ndim != 3 or len(patches) != len(np.asarray(positions_um).reshape(-1, 2)):
        raise ValueError(
            f"need patches (N, h, w) and positions (N, 2), got {patches.shape} and "
            f"{np.shape(positions_um)}"
        )
    corners = patch_corners(positions_um, pixel_size_um, patches.shape[1:])
    if shape is None:
        center, shape = smallest_canvas(corners, patches.shape[1:])
    else:
        center = np.array(shape) // 2
    weights = np.ones(patches.shape[1:], np.float32) if window is None else window
    total = np.zeros(shape, np.float64)
    weight = np.zeros(shape, np.float64)
    for patch, (r, c) in zip(patches, corners + center, strict=True):
        _add_clipped(total, patch * weights, r, c)
        _add_clipped(weight, weights, r, c)
    with np.errstate(invalid="ignore", divide="ignore"):
        image = np.where(weight > 0, total / weight, np.nan).astype(np.float32)
    return StitchedImage(
        image, weight.astype(np.float32), tuple(int(v) for v in center), float(pixel_size_um)
    )


def _add_clipped(target: np.ndarray, patch: np.ndarray, row: int, col: int) -> None:
    h, w = patch.shape
    r0, c0 = max(row, 0), max(col, 0)
    r1, c1 = min(row + h, target.shape[0]), min(col + w, target.shape[1])
    if r1 > r0 and c1 > c0:
        target[r0:r1, c0:c1] += patch[r0 - row : r1 - row, c0 - col : c1 - col]


def remove_phase_offset(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``image`` shifted by the constant that best matches ``reference`` (phase is relative).

    Only pixels finite in both count; the constant is their mean difference.
    """
    valid = np.isfinite(image) & np.isfinite(reference)
    if not valid.any():
        raise ValueError("image and reference share no finite pixel")
    return image - np.mean(image[valid] - reference[valid])
