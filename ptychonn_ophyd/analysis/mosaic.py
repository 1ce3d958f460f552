"""The one stitching path: patches added in arrival order into a growing object image.

No diffraction frame tells its patch's absolute phase, so every predicted phase patch
carries its own constant offset.  :class:`Mosaic` takes the patches one by one, in the
order they arrive (live) or the order the run's inference stream stored them (replay,
the same order), and shifts each phase patch ``p`` by the constant that makes it agree
best with what is already there::

    c = sum(w * W * (M - p)) / sum(w * W)     over the patch's pixels

where ``w`` is the window (how much each patch pixel is trusted, e.g. the probe
intensity), ``M = T / W`` the mosaic so far (accumulated total ``T`` over accumulated
weight ``W``), and ``c = 0`` where the overlap weighs next to nothing (the first patch).
Then ``T += (p + c) * w`` and ``W += w``.  Amplitude patches are added without offsets.
Because it needs only what came before, the live image and the replayed one are the
same computation and agree to float precision.  Each patch is cut to the window's
support (where ``w`` reaches :data:`SUPPORT` of its maximum), which with the demo's
probe is a quarter of the pixels.
"""

from __future__ import annotations

import numpy as np

from ptychonn_ophyd.analysis.stitch import StitchedImage, patch_corners

SUPPORT = 1e-3
"""Window values below this fraction of its maximum are left out (cost, not accuracy)."""
MIN_OVERLAP = 1e-3
"""Overlap weight ``sum(w * W)``, in units of the window's maximum squared, below which
a phase patch keeps its own offset."""
GROWTH = 256
"""Pixels the canvas grows by beyond a patch that falls outside it."""


class Mosaic:
    """An object image growing from phase (and amplitude) patches at scan positions.

    Parameters
    ----------
    pixel_size_um
        Object pixel size; positions follow :mod:`ptychonn_ophyd.analysis.stitch`.
    window
        ``(h, w)`` trust of each patch pixel (non-negative, finite); ``None`` or a
        ``patch_shape`` gives a flat window.
    patch_shape
        Needed only without a window.
    amplitude
        Also accumulate amplitude patches.
    """

    def __init__(
        self,
        pixel_size_um: float,
        window: np.ndarray | None = None,
        *,
        patch_shape: tuple[int, int] | None = None,
        amplitude: bool = False,
    ) -> None:
        if not pixel_size_um or pixel_size_um <= 0:
            raise ValueError(f"pixel size must be positive, got {pixel_size_um}")
        self.pixel_size_um = float(pixel_size_um)
        self.window = check_window(window, patch_shape)
        self.patch_shape: tuple[int, int] = self.window.shape
        rows, cols = np.nonzero(self.window >= SUPPORT * self.window.max())
        self._cut = np.s_[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        self._cut_corner = np.array([rows.min(), cols.min()])
        self._w = np.ascontiguousarray(self.window[self._cut], dtype=np.float64)
        self._min_overlap = MIN_OVERLAP * float(self.window.max()) ** 2
        self.frames = 0
        self._origin = np.zeros(2, np.int64)  # canvas pixel of relative corner (0, 0)
        self._low = self._high = None  # bounding box of whole patches, relative
        self._total = np.zeros((0, 0))
        self._weight = np.zeros((0, 0))
        self._amplitude = np.zeros((0, 0)) if amplitude else None

    @property
    def has_amplitude(self) -> bool:
        return self._amplitude is not None

    def add(
        self, phase: np.ndarray, positions_um: np.ndarray, amplitude: np.ndarray | None = None
    ) -> int:
        """Add patches ``(N, h, w)`` at ``positions_um`` ``(N, 2)`` in their order.

        Frames without a finite position are left out; returns how many were added.
        """
        phase = np.asarray(phase, dtype=np.float32).reshape(-1, *self.patch_shape)
        positions_um = np.asarray(positions_um, dtype=np.float64).reshape(-1, 2)
        if len(phase) != len(positions_um):
            raise ValueError(f"{len(phase)} patches but {len(positions_um)} positions")
        placed = np.isfinite(positions_um).all(axis=1)
        if not placed.all():
            phase, positions_um = phase[placed], positions_um[placed]
            amplitude = None if amplitude is None else np.asarray(amplitude)[placed]
        if not len(phase):
            return 0
        corners = patch_corners(positions_um, self.pixel_size_um, self.patch_shape)
        self._cover(corners)
        starts = corners + self._origin + self._cut_corner
        h, w = self._w.shape
        for i, (r, c) in enumerate(starts):
            self._add_phase(phase[i][self._cut], np.s_[r : r + h, c : c + w])
        if self._amplitude is not None and amplitude is not None:
            cut = np.asarray(amplitude, dtype=np.float32)[(slice(None), *self._cut)]
            for (r, c), patch in zip(starts, cut, strict=True):
                self._amplitude[r : r + h, c : c + w] += self._w * patch
        self.frames += len(phase)
        return len(phase)

    def _add_phase(self, patch: np.ndarray, where: tuple[slice, slice]) -> None:
        total, weight, w = self._total[where], self._weight[where], self._w
        both = w * weight
        overlap = both.sum()
        offset = 0.0
        if overlap > self._min_overlap:
            offset = ((w * total).sum() - (both * patch).sum()) / overlap
        total += w * (patch + offset)
        weight += w

    def _cover(self, corners: np.ndarray) -> None:
        """Grow the canvas so that every whole patch at ``corners`` fits."""
        low, high = corners.min(axis=0), corners.max(axis=0) + self.patch_shape
        if self._low is not None:
            low, high = np.minimum(low, self._low), np.maximum(high, self._high)
        self._low, self._high = low, high
        have_low = -self._origin
        have_high = have_low + self._total.shape
        if (low >= have_low).all() and (high <= have_high).all():
            return
        new_low = np.where(low < have_low, low - GROWTH, have_low)
        new_high = np.where(high > have_high, high + GROWTH, have_high)
        if not self._total.size:
            new_low, new_high = low - GROWTH, high + GROWTH
        shift = have_low - new_low
        shape = tuple(int(s) for s in new_high - new_low)
        self._total = _moved(self._total, shape, shift)
        self._weight = _moved(self._weight, shape, shift)
        if self._amplitude is not None:
            self._amplitude = _moved(self._amplitude, shape, shift)
        self._origin = -new_low

    def phase(self) -> StitchedImage:
        """The phase so far over the bounding box of the patches; NaN where none landed."""
        return self._image(self._total)

    def amplitude(self) -> StitchedImage | None:
        """The amplitude so far (``None`` without amplitude patches)."""
        return None if self._amplitude is None else self._image(self._amplitude)

    def _image(self, total: np.ndarray) -> StitchedImage:
        if self._low is None:
            empty = np.zeros((0, 0), np.float32)
            return StitchedImage(empty, empty, (0, 0), self.pixel_size_um)
        (r0, c0), (r1, c1) = self._low + self._origin, self._high + self._origin
        weight = self._weight[r0:r1, c0:c1]
        with np.errstate(invalid="ignore", divide="ignore"):
            image = np.where(weight > 0, total[r0:r1, c0:c1] / weight, np.nan)
        center = (int(-self._low[0]), int(-self._low[1]))
        return StitchedImage(
            image.astype(np.float32), weight.astype(np.float32), center, self.pixel_size_um
        )


def check_window(
    window: np.ndarray | None, patch_shape: tuple[int, int] | None = None
) -> np.ndarray:
    """``window`` as float32, checked: 2-D, finite, non-negative, somewhere positive.

    ``None`` gives a flat window of ``patch_shape``.
    """
    if window is None:
        if patch_shape is None:
            raise ValueError("give a window or the patch shape")
        return np.ones(patch_shape, np.float32)
    window = np.asarray(window, dtype=np.float32)
    if window.ndim != 2 or not np.isfinite(window).all() or (window < 0).any():
        raise ValueError(f"the window must be a finite non-negative 2-D array, got {window.shape}")
    if not window.max() > 0:
        raise ValueError("the window is zero everywhere")
    if patch_shape is not None and window.shape != tuple(patch_shape):
        raise ValueError(f"window {window.shape} does not fit patches {tuple(patch_shape)}")
    return window


def _moved(array: np.ndarray, shape: tuple[int, int], shift: np.ndarray) -> np.ndarray:
    """A zero canvas of ``shape`` holding ``array`` with its top left at ``shift``."""
    moved = np.zeros(shape, np.float64)
    r, c = (int(v) for v in shift)
    moved[r : r + array.shape[0], c : c + array.shape[1]] = array
    return moved


def stitch_in_order(
    phase: np.ndarray,
    positions_um: np.ndarray,
    pixel_size_um: float,
    window: np.ndarray | None = None,
    amplitude: np.ndarray | None = None,
) -> tuple[StitchedImage, StitchedImage | None]:
    """Phase (and amplitude) of patches added to one :class:`Mosaic` in their order."""
    mosaic = Mosaic(
        pixel_size_um,
        window,
        patch_shape=np.shape(phase)[1:],
        amplitude=amplitude is not None,
    )
    mosaic.add(phase, positions_um, amplitude)
    return mosaic.phase(), mosaic.amplitude()
