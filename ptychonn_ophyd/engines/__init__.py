"""Inference backends behind one interface: TensorRT, PyTorch (CUDA graphs), ONNX Runtime."""

from ptychonn_ophyd.engines.base import (
    Backend,
    EngineConfig,
    InferenceEngine,
    Precision,
    Prediction,
)
from ptychonn_ophyd.engines.selection import (
    BACKENDS,
    choose_backend,
    create_engine,
    unavailable_reason,
)

__all__ = [
    "BACKENDS",
    "Backend",
    "EngineConfig",
    "InferenceEngine",
    "Precision",
    "Prediction",
    "choose_backend",
    "create_engine",
    "unavailable_reason",
]
