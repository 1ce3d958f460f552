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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeAlias

import numpy as np

from ptychonn_ophyd.analysis.canvas import Canvas
from ptychonn_ophyd.analysis.stitch import StitchedImage, patch_corners

SUPPORT = 1e-3
"""Window values below this fraction of its maximum are left out (cost, not accuracy)."""
MIN_OVERLAP = 1e-3
"""Overlap weight ``sum(w * W)``, in units of the window's maximum squared, below which
a phase patch keeps its own offset."""

Patches: TypeAlias = np.ndarray | Sequence[np.ndarray]
"""Patches ``(N, h, w)``, or the batches ``(n_k, h, w)`` they arrived in, in order: a
stitcher takes the batches as they are, since joining them copies every patch."""


class Stitcher(Protocol):
    """What the live view and replay need of a stitcher: patches in, images out."""

    frames: int
    window: np.ndarray
    stitching: str
    """How it stitches, in words, for pictures and the stored mosaic."""

    @property
    def has_amplitude(self) -> bool: ...

    def add(
        self,
        phase: Patches,
        positions_um: np.ndarray,
        amplitude: Patches | None = None,
        moments: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> int: ...

    def phase(self) -> StitchedImage:
        """The phase of every patch added, final."""

    def preview(self, between: Callable[[], object] | None = None) -> StitchedImage:
        """The phase so far, as cheaply as a live display needs it; a long one calls
        ``between`` now and then, which may add patches (the next preview shows them)."""

    def amplitude(self) -> StitchedImage | None: ...


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

    stitching = "the network's tilts, each offset matched to the patches before it"

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
        self._cut, self._cut_corner = support_cut(self.window)
        self._w = np.ascontiguousarray(self.window[self._cut], dtype=np.float64)
        self._min_overlap = MIN_OVERLAP * float(self.window.max()) ** 2
        self.frames = 0
        layers = ("total", "weight", "amplitude") if amplitude else ("total", "weight")
        self._canvas = Canvas(layers, self.patch_shape)

    @property
    def has_amplitude(self) -> bool:
        return "amplitude" in self._canvas.layers

    def add(
        self,
        phase: Patches,
        positions_um: np.ndarray,
        amplitude: Patches | None = None,
        moments: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> int:
        """Add patches ``(N, h, w)`` (or their batches, :data:`Patches`) at
        ``positions_um`` ``(N, 2)`` in their order.

        Frames without a finite position are left out; returns how many were added.
        ``moments`` (the frames' totals and centroids) are not used: this stitcher
        keeps each patch's own tilt.
        """
        batches = patch_batches(phase, self.patch_shape)
        placed = placement(batches, positions_um, self.pixel_size_um, self.patch_shape)
        if placed is None:
            return 0
        amplitudes = matching_batches(amplitude, batches, self.patch_shape)
        self._canvas.cover(placed.corners)
        starts = placed.corners + self._canvas.origin + self._cut_corner
        h, w = self._w.shape
        for index, (batch, frames, at) in enumerate(placed.rows):
            for i, (r, c) in zip(frames, starts[at], strict=True):
                self._add_phase(batch[i][self._cut], np.s_[r : r + h, c : c + w])
            if self.has_amplitude and amplitudes is not None:
                cut = amplitudes[index][frames][(slice(None), *self._cut)]
                add_amplitude(self._canvas, self._w, starts[at], cut)
        self.frames += len(starts)
        return len(starts)

    def _add_phase(self, patch: np.ndarray, where: tuple[slice, slice]) -> None:
        layers = self._canvas.layers
        total, weight, w = layers["total"][where], layers["weight"][where], self._w
        both = w * weight
        overlap = both.sum()
        offset = 0.0
        if overlap > self._min_overlap:
            offset = ((w * total).sum() - (both * patch).sum()) / overlap
        total += w * (patch + offset)
        weight += w

    def phase(self) -> StitchedImage:
        """The phase so far over the bounding box of the patches; NaN where none landed."""
        return self._canvas.image(self._canvas.layers["total"], self.pixel_size_um)

    def preview(self, between: Callable[[], object] | None = None) -> StitchedImage:
        """The phase so far (:meth:`phase`: each patch's offset is final once added; a
        preview is too short to call ``between``)."""
        return self.phase()

    def amplitude(self) -> StitchedImage | None:
        """The amplitude so far (``None`` without amplitude patches)."""
        if not self.has_amplitude:
            return None
        return self._canvas.image(self._canvas.layers["amplitude"], self.pixel_size_um)


@dataclass(frozen=True)
class Placement:
    """Where one call's patches go: those with a finite position, batch by batch."""

    kept: np.ndarray
    """Boolean ``(N,)``: which of the call's frames have a position."""
    corners: np.ndarray
    """``(n, 2)`` top-left pixel of each kept patch (:func:`.stitch.patch_corners`)."""
    rows: list[tuple[np.ndarray, np.ndarray, slice]]
    """Each batch of patches, the indices of its kept ones, and where those are among
    the kept (in :attr:`corners`), in order."""


def patch_batches(patches: Patches, patch_shape: tuple[int, int]) -> list[np.ndarray]:
    """``patches`` ``(N, h, w)``, or a sequence of batches of them, as a list of
    C-contiguous float32 batches (copied only where they are not already)."""
    if isinstance(patches, np.ndarray):
        patches = [patches]
    return [
        np.ascontiguousarray(batch, dtype=np.float32).reshape(-1, *patch_shape) for batch in patches
    ]


def placement(
    batches: list[np.ndarray],
    positions_um: np.ndarray,
    pixel_size_um: float,
    patch_shape: tuple[int, int],
) -> Placement | None:
    """The placement of ``batches`` (from :func:`patch_batches`) at ``positions_um``
    ``(N, 2)``; ``None`` where no patch has a finite position.

    Raises
    ------
    ValueError
        Patches and positions differ in number.
    """
    positions_um = np.asarray(positions_um, dtype=np.float64).reshape(-1, 2)
    count = sum(len(batch) for batch in batches)
    if count != len(positions_um):
        raise ValueError(f"{count} patches but {len(positions_um)} positions")
    kept = np.isfinite(positions_um).all(axis=1)
    if not kept.any():
        return None
    corners = patch_corners(positions_um[kept], pixel_size_um, patch_shape)
    rows, end, done = [], 0, 0
    for batch in batches:
        frames = np.flatnonzero(kept[end : end + len(batch)])
        rows.append((batch, frames, slice(done, done + len(frames))))
        end, done = end + len(batch), done + len(frames)
    return Placement(kept, corners, rows)


def matching_batches(
    amplitude: Patches | None, batches: list[np.ndarray], patch_shape: tuple[int, int]
) -> list[np.ndarray] | None:
    """The amplitude patches as the phase's ``batches`` came (``None`` without them).

    Raises
    ------
    ValueError
        They come in other batches than the phase patches.
    """
    if amplitude is None:
        return None
    amplitudes = patch_batches(amplitude, patch_shape)
    if [len(a) for a in amplitudes] != [len(b) for b in batches]:
        raise ValueError("amplitude patches must come in the phase patches' batches")
    return amplitudes


def support_cut(
    window: np.ndarray, support: float = SUPPORT
) -> tuple[tuple[slice, slice], np.ndarray]:
    """The slices of ``window``'s support (where it reaches ``support`` of its maximum)
    and their top-left ``(row, col)``."""
    rows, cols = np.nonzero(window >= support * window.max())
    cut = np.s_[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    return cut, np.array([rows.min(), cols.min()])


def add_amplitude(
    canvas: Canvas, window: np.ndarray, starts: np.ndarray, patches: np.ndarray
) -> None:
    """Add window-weighted amplitude ``patches`` (cut to ``window``) at canvas ``starts``."""
    h, w = window.shape
    layer = canvas.layers["amplitude"]
    for (r, c), patch in zip(starts, patches, strict=True):
        layer[r : r + h, c : c + w] += window * patch


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
