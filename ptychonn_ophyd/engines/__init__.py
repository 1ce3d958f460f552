"""Inference backends behind one interface: TensorRT, PyTorch (CUDA graphs), ONNX Runtime."""

from .base import EngineConfig, InferenceEngine, Precision, Prediction
from .selection import BACKENDS, choose_backend, create_engine, unavailable_reason

__all__ = [
    "BACKENDS",
    "EngineConfig",
    "InferenceEngine",
    "Precision",
    "Prediction",
    "choose_backend",
    "create_engine",
    "unavailable_reason",
]
