"""Every phase patch's offset at once, from all its overlaps: for a finished scan.

The live :class:`~ptychonn_ophyd.analysis.mosaic.Mosaic` matches each patch's offset
to the patches before it, the only ones it has.  With the whole scan at hand, the
offsets ``c`` can instead minimise the disagreement of every patch with the image all
the others make::

    E(c) = sum_i sum_x w_i(x) (p_i(x) + c_i - M(x))**2,   M = sum_j w_j (p_j + c_j) / W

(``w_i`` the window placed at patch ``i``, ``W = sum_j w_j``), whose minimum solves the
linear system ``sum_x w_k (c_k - C / W) = -sum_x w_k (p_k - P / W)`` with ``C`` and
``P`` the window-weighted sums of offsets and patches.  :func:`solved_offsets` solves
it by conjugate gradients, each step two passes over the patches.  The sequential
matching passes an error on to every patch after it; this spreads it over all of them.
It helps once the patches' tilts are right (:mod:`ptychonn_ophyd.analysis.tilt`):
errors shared by overlapping patches do not average out.
"""

from __future__ import annotations

import numpy as np

from ptychonn_ophyd.analysis.stitch import StitchedImage, patch_corners, smallest_canvas, stitch

TOLERANCE = 1e-6
"""Relative residual at which the conjugate gradients stop."""
MAX_STEPS = 500
"""Conjugate-gradient steps at most (the demo's 625-point raster needs about 35)."""


class _Overlaps:
    """The patches' places on one canvas, and the two sums the system needs."""

    def __init__(self, corners: np.ndarray, window: np.ndarray) -> None:
        self.window = np.asarray(window, np.float64)
        p, q = self.window.shape
        shift, self.shape = smallest_canvas(corners, (p, q))
        self._slices = [np.s_[r : r + p, c : c + q] for r, c in corners + shift]
        self.weight = self.spread(np.ones(len(corners)))

    def spread(self, values: np.ndarray) -> np.ndarray:
        """``sum_i w_i values_i`` on the canvas (``values`` ``(n, p, q)`` or ``(n,)``)."""
        canvas = np.zeros(self.shape)
        for where, value in zip(self._slices, values, strict=True):
            canvas[where] += self.window * value
        return canvas

    def against(self, values: np.ndarray, canvas: np.ndarray) -> np.ndarray:
        """``sum_x w_k (values_k - canvas / W)`` for every patch ``k``."""
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(self.weight > 0, canvas / self.weight, 0.0)
        return np.array(
            [
                (self.window * (value - mean[where])).sum()
                for where, value in zip(self._slices, values, strict=True)
            ]
        )


def solved_offsets(
    phase: np.ndarray, positions_um: np.ndarray, pixel_size_um: float, window: np.ndarray
) -> np.ndarray:
    """The offsets ``(n,)`` (mean zero) that make phase patches ``(n, p, q)`` agree best.

    Parameters
    ----------
    phase
        Phase patches at ``positions_um`` ``(n, 2)``, finite.
    pixel_size_um
        Object pixel size.
    window
        ``(p, q)`` trust of each patch pixel (e.g. the probe intensity).
    """
    phase = np.asarray(phase)  # each patch meets the float64 window one at a time
    overlaps = _Overlaps(patch_corners(positions_um, pixel_size_um, phase.shape[1:]), window)
    n = len(phase)

    def apply(c: np.ndarray) -> np.ndarray:
        return overlaps.against(np.broadcast_to(c[:, None, None], phase.shape), overlaps.spread(c))

    rhs = -overlaps.against(phase, overlaps.spread(phase))
    offsets, residual = np.zeros(n), rhs.copy()
    direction, size = residual.copy(), residual @ residual
    goal = TOLERANCE**2 * size
    for _ in range(MAX_STEPS):
        if size <= goal:
            break
        applied = apply(direction)
        step = size / (direction @ applied)
        offsets += step * direction
        residual -= step * applied
        size, previous = residual @ residual, size
        direction = residual + (size / previous) * direction
    return offsets - offsets.mean()


def stitch_with_solved_offsets(
    phase: np.ndarray,
    positions_um: np.ndarray,
    pixel_size_um: float,
    window: np.ndarray,
    shape: tuple[int, int] | None = None,
) -> StitchedImage:
    """Phase patches, each shifted by its :func:`solved_offsets`, averaged into one image
    (:func:`~ptychonn_ophyd.analysis.stitch.stitch`, whose ``shape`` this passes on)."""
    phase = np.asarray(phase)
    offsets = solved_offsets(phase, positions_um, pixel_size_um, window)
    shifted = phase + offsets.astype(np.result_type(phase.dtype, np.float32))[:, None, None]
    return stitch(shifted, positions_um, pixel_size_um, shape, window)
