"""Turning a detector frame into model input: crop, mean-bin, threshold, cast.

A 516x516 frame cropped by 2 pixels a side and binned 4x4 becomes the 128x128 input
of the small models, as the Jetson deployment did.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ptychonn_ophyd.errors import FrameRejected


class PreprocessConfig(BaseModel):
    """How frames are reduced to the model's input size.

    Attributes
    ----------
    crop
        Pixels removed from each side: one number for all four, or
        ``(top, bottom, left, right)``.
    bin
        Side of the square of pixels averaged into one.
    threshold
        Counts below it become 0; ``None`` keeps every count.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    crop: tuple[int, int, int, int] = (0, 0, 0, 0)
    bin: int = Field(1, ge=1)
    threshold: float | None = None

    def pattern_position(self, xy: np.ndarray) -> np.ndarray:
        """Positions ``(..., 2)`` ``(x, y)`` (column, row) on the detector, in its pixels,
        as positions on the model's input, in its pixels: cropped, then binned, a binned
        block's centre becoming its pixel (a centroid of a frame to one of its input)."""
        top, _, left, _ = self.crop
        origin = np.array([left, top]) + (self.bin - 1) / 2
        return (np.asarray(xy, np.float64) - origin) / self.bin

    @field_validator("crop", mode="before")
    @classmethod
    def _expand_crop(cls, value: object) -> object:
        if isinstance(value, int):
            value = (value,) * 4
        if any(int(v) < 0 for v in value):
            raise ValueError(f"crop must not be negative: {value}")
        return value

    def output_shape(self, frame_shape: tuple[int, int]) -> tuple[int, int] | None:
        """Shape after preprocessing, or ``None`` when the frame cannot be binned evenly."""
        top, bottom, left, right = self.crop
        h, w = frame_shape[0] - top - bottom, frame_shape[1] - left - right
        if h <= 0 or w <= 0 or h % self.bin or w % self.bin:
            return None
        return h // self.bin, w // self.bin


class Preprocessor:
    """Applies a :class:`PreprocessConfig` for a model taking ``input_shape`` frames."""

    def __init__(self, config: PreprocessConfig, input_shape: tuple[int, int]) -> None:
        self.config = config
        self.input_shape = tuple(input_shape)

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """Model input for ``frame`` as float32 ``[H, W]``.

        Raises
        ------
        FrameRejected
            Empty frame, unsupported dtype, a size that does not give the model's input,
            or NaN or infinity in what would be the model's input.
        """
        out = np.empty(self.input_shape, np.float32)
        self.into(frame, out)
        return out

    def into(self, frame: np.ndarray, out: np.ndarray) -> None:
        """Write the model input for ``frame`` into ``out`` (a slot of a batch buffer)."""
        self.check(frame)
        top, bottom, left, right = self.config.crop
        h, w = frame.shape
        region = frame[top : h - bottom, left : w - right]
        if self.config.bin > 1:
            region = _mean_bin(region, self.config.bin)
        np.copyto(out, region, casting="unsafe")
        if self.config.threshold is not None:
            out[out < self.config.threshold] = 0
        if frame.dtype.kind == "f":
            _check_finite(out)

    def check(self, frame: np.ndarray) -> None:
        """Raise :class:`FrameRejected` unless ``frame`` can become model input."""
        if frame.size == 0:
            raise FrameRejected("empty", "empty frame")
        if frame.dtype.kind not in "iuf":
            raise FrameRejected("dtype", f"unsupported dtype {frame.dtype}")
        if frame.ndim != 2:
            raise FrameRejected("shape", f"frame has {frame.ndim} dimensions, expected 2")
        if self.config.output_shape(frame.shape) != self.input_shape:
            raise FrameRejected(
                "shape",
                f"a {frame.shape[0]}x{frame.shape[1]} frame does not become the model's "
                f"{self.input_shape[0]}x{self.input_shape[1]} input with crop "
                f"{self.config.crop} and bin {self.config.bin}",
            )


def _check_finite(out: np.ndarray) -> None:
    """Raise ``FrameRejected("nonfinite")`` if model input ``out`` holds NaN or infinity.

    Only float frames can hold them.  It runs per frame: ``isfinite(out).all()`` takes
    about 4 µs for 128x128 on one core, less than a sum, a min and max, or error state.
    """
    finite = np.isfinite(out)
    if finite.all():
        return
    n = out.size - int(np.count_nonzero(finite))
    raise FrameRejected("nonfinite", f"{n} of the model input's {out.size} values are NaN or inf")


def _mean_bin(region: np.ndarray, b: int) -> np.ndarray:
    """Mean of each ``b x b`` block; two contiguous sums run 3.5x faster than one 4-D mean."""
    hb, wb = region.shape[0] // b, region.shape[1] // b
    rows = region.astype(np.float32).reshape(hb, b, wb * b).sum(axis=1)
    binned = rows.reshape(hb, wb, b).sum(axis=2)
    binned *= np.float32(1 / b**2)
    return binned
