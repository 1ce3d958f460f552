"""A canvas that grows to hold patches wherever the scan puts them.

Both stitchers (:mod:`ptychonn_ophyd.analysis.mosaic` and
:mod:`ptychonn_ophyd.analysis.solved_mosaic`) accumulate patches onto float64 layers
whose extent is not known until the scan ends.  A :class:`Canvas` keeps those layers,
the pixel that patch corner ``(0, 0)`` falls on, and the bounding box of the patches
placed so far; it grows by :data:`GROWTH` pixels beyond a patch that falls outside.
"""

from __future__ import annotations

import numpy as np

from ptychonn_ophyd.analysis.stitch import StitchedImage

GROWTH = 256
"""Pixels the canvas grows by beyond a patch that falls outside it."""


class Canvas:
    """Named float64 layers over one growing grid of pixels.

    Parameters
    ----------
    layers
        Names of the layers (e.g. ``"total"``, ``"weight"``).
    patch_shape
        ``(h, w)`` of the whole patches whose corners :meth:`cover` takes.
    dtype
        The layers' floating type.
    """

    def __init__(
        self, layers: tuple[str, ...], patch_shape: tuple[int, int], dtype: type = np.float64
    ) -> None:
        self.patch_shape = (int(patch_shape[0]), int(patch_shape[1]))
        self.origin = np.zeros(2, np.int64)
        """Canvas pixel of relative corner ``(0, 0)``."""
        self.low: np.ndarray | None = None
        """Bounding box ``[low, high)`` of the whole patches, relative to the origin."""
        self.high: np.ndarray | None = None
        self.layers = {name: np.zeros((0, 0), dtype) for name in layers}

    @property
    def shape(self) -> tuple[int, int]:
        return next(iter(self.layers.values())).shape

    def cover(self, corners: np.ndarray) -> None:
        """Grow the canvas so that every whole patch at ``corners`` ``(N, 2)`` fits."""
        low, high = corners.min(axis=0), corners.max(axis=0) + self.patch_shape
        if self.low is not None:
            low, high = np.minimum(low, self.low), np.maximum(high, self.high)
        self.low, self.high = low, high
        have_low = -self.origin
        have_high = have_low + self.shape
        if (low >= have_low).all() and (high <= have_high).all():
            return
        new_low = np.where(low < have_low, low - GROWTH, have_low)
        new_high = np.where(high > have_high, high + GROWTH, have_high)
        if not next(iter(self.layers.values())).size:
            new_low, new_high = low - GROWTH, high + GROWTH
        shift = have_low - new_low
        shape = tuple(int(s) for s in new_high - new_low)
        self.layers = {name: _moved(a, shape, shift) for name, a in self.layers.items()}
        self.origin = -new_low

    def box(self) -> tuple[slice, slice]:
        """The canvas pixels of the patches' bounding box."""
        (r0, c0), (r1, c1) = self.low + self.origin, self.high + self.origin
        return np.s_[r0:r1, c0:c1]

    def image(self, total: np.ndarray, pixel_size_um: float) -> StitchedImage:
        """``total / weight`` over the bounding box; NaN where no patch landed."""
        if self.low is None:
            empty = np.zeros((0, 0), np.float32)
            return StitchedImage(empty, empty, (0, 0), pixel_size_um)
        box = self.box()
        weight = self.layers["weight"][box]
        with np.errstate(invalid="ignore", divide="ignore"):
            image = np.where(weight > 0, total[box] / weight, np.nan)
        center = (int(-self.low[0]), int(-self.low[1]))
        return StitchedImage(
            image.astype(np.float32), weight.astype(np.float32), center, pixel_size_um
        )


def _moved(array: np.ndarray, shape: tuple[int, int], shift: np.ndarray) -> np.ndarray:
    """A zero canvas of ``shape`` holding ``array`` with its top left at ``shift``."""
    moved = np.zeros(shape, array.dtype)
    r, c = (int(v) for v in shift)
    moved[r : r + array.shape[0], c : c + array.shape[1]] = array
    return moved
