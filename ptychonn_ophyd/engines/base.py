"""The one interface every inference backend implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ptychonn_ophyd.models import ModelFile

Precision = Literal["fp32", "tf32", "fp16", "bf16"]
Backend = Literal["auto", "tensorrt", "torch", "onnxruntime"]
"""``auto`` picks the first of the others that can run here (see ``engines.selection``)."""


class EngineConfig(BaseModel):
    """How to run a model.

    Attributes
    ----------
    backend
        ``"auto"``, ``"tensorrt"``, ``"torch"`` or ``"onnxruntime"``.
    precision
        Arithmetic on the GPU; ONNX Runtime on the CPU always computes in fp32.
    max_batch
        Largest stack of frames one :meth:`InferenceEngine.infer` call takes.
    device
        ``"cuda:N"``, ``"cpu"``, or ``"auto"`` (the first GPU when there is one).
    threads
        CPU threads for ONNX Runtime (``None``: its default, all cores).
    cache_dir
        Where TensorRT engines are kept between starts (``None``: the user cache).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Backend = "auto"
    precision: Precision = "fp32"
    max_batch: int = Field(8, ge=1, le=65536)
    device: str = "auto"
    threads: int | None = Field(None, ge=1)
    cache_dir: str | None = None


@dataclass(frozen=True)
class Prediction:
    """What a model says about a stack of ``n`` frames.

    ``phase`` (radians) and ``amplitude`` are float32 ``[n, H, W]``; ``amplitude`` is
    ``None`` for phase-only models.
    """

    phase: np.ndarray
    amplitude: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.phase)


class InferenceEngine(ABC):
    """Runs one model on stacks of 1 to ``max_batch`` preprocessed frames."""

    backend: ClassVar[str]

    def __init__(self, model: ModelFile, config: EngineConfig) -> None:
        self.model = model
        self.config = config
        self.max_batch = config.max_batch

    @property
    def input_shape(self) -> tuple[int, int]:
        return self.model.input_shape

    @property
    def model_hash(self) -> str:
        return self.model.model_hash

    @property
    @abstractmethod
    def description(self) -> str:
        """Backend, precision and device, for logs and run metadata."""

    def infer(self, frames: np.ndarray) -> Prediction:
        """Run the model on ``frames``, float32 ``[n, H, W]`` with ``1 <= n <= max_batch``."""
        frames = self._checked(frames)
        if not 1 <= len(frames) <= self.max_batch:
            raise ValueError(
                f"batch of {len(frames)} frames; this engine takes 1 to {self.max_batch}"
            )
        return self._run(frames)

    def infer_all(self, frames: np.ndarray) -> Prediction:
        """Run the model on any number of frames, ``max_batch`` at a time."""
        frames = self._checked(frames)
        parts = [
            self._run(frames[i : i + self.max_batch]) for i in range(0, len(frames), self.max_batch)
        ]
        amplitude = None
        if parts and parts[0].amplitude is not None:
            amplitude = np.concatenate([p.amplitude for p in parts])
        return Prediction(np.concatenate([p.phase for p in parts]), amplitude)

    @abstractmethod
    def close(self) -> None:
        """Release the device memory and sessions this engine holds."""

    def __enter__(self) -> InferenceEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _checked(self, frames: np.ndarray) -> np.ndarray:
        frames = np.asarray(frames)
        if frames.ndim != 3 or frames.shape[1:] != self.input_shape:
            raise ValueError(
                f"frames of shape {frames.shape}; expected [n, {self.input_shape[0]}, "
                f"{self.input_shape[1]}]"
            )
        return np.ascontiguousarray(frames, dtype=np.float32)

    @abstractmethod
    def _run(self, frames: np.ndarray) -> Prediction:
        """Infer a contiguous float32 stack of at most ``max_batch`` frames."""
