"""Choosing a backend and building its engine."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import get_args

from ptychonn_ophyd.engines.base import Backend, EngineConfig, InferenceEngine
from ptychonn_ophyd.errors import BackendUnavailable
from ptychonn_ophyd.models import ModelFile, open_model

log = logging.getLogger(__name__)

BACKENDS = tuple(b for b in get_args(Backend) if b != "auto")
"""In the order ``auto`` tries them."""


def unavailable_reason(backend: str) -> str | None:
    """Why ``backend`` cannot run on this machine, or ``None`` when it can."""
    if backend == "onnxruntime":
        return None if importlib.util.find_spec("onnxruntime") else "onnxruntime is not installed"
    if backend == "torch":
        if not importlib.util.find_spec("torch"):
            return "PyTorch is not installed"
        return None
    if backend == "tensorrt":
        if not importlib.util.find_spec("tensorrt"):
            return "TensorRT is not installed"
        return None if cuda_gpu_count() else "no CUDA GPU"
    raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)} or auto")


def cuda_gpu_count() -> int:
    """Number of CUDA GPUs this process can see (0 without PyTorch or cuda-python)."""
    if importlib.util.find_spec("torch"):
        import torch

        return torch.cuda.device_count()
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return 0
    err, count = cudart.cudaGetDeviceCount()
    return count if int(err) == 0 else 0


def choose_backend(config: EngineConfig) -> tuple[str, str]:
    """The backend to use and why: TensorRT, then torch on CUDA, then ONNX Runtime."""
    if config.backend != "auto":
        reason = unavailable_reason(config.backend)
        if reason:
            raise BackendUnavailable(f"backend {config.backend} cannot run here: {reason}")
        return config.backend, "asked for"
    skipped = []
    for backend in BACKENDS:
        reason = unavailable_reason(backend)
        if backend == "torch" and reason is None and not cuda_gpu_count():
            reason = "no CUDA GPU for PyTorch"
        if reason is None:
            because = "; ".join(skipped) or "first choice"
            return backend, f"auto picked {backend} ({because})"
        skipped.append(f"not {backend}: {reason}")
    raise BackendUnavailable("no backend can run here: " + "; ".join(skipped))


def create_engine(
    model: str | Path | ModelFile, config: EngineConfig | None = None, **settings: object
) -> InferenceEngine:
    """Open ``model`` and build the engine ``config`` (or ``settings``) asks for.

    Examples
    --------
    >>> engine = create_engine("ptychonn.onnx", backend="onnxruntime", max_batch=8)
    >>> engine.infer(frames).phase.shape
    (8, 128, 128)
    """
    config = config or EngineConfig(**settings)
    if not isinstance(model, ModelFile):
        model = open_model(model)
    backend, reason = choose_backend(config)
    log.info("%s for %s", reason, model.path)
    if backend == "tensorrt":
        from ptychonn_ophyd.engines.tensorrt_engine import TensorRTEngine as engine_class
    elif backend == "torch":
        from ptychonn_ophyd.engines.torch_engine import TorchEngine as engine_class
    else:
        from ptychonn_ophyd.engines.onnxruntime_engine import OnnxRuntimeEngine as engine_class
    engine = engine_class(model, config)
    engine.selection_reason = reason
    return engine
