"""PtychoNN architectures and model files (``.pth`` and ONNX)."""

from .architecture import PRESETS, ArchitectureSpec, spec_from_shapes
from .checkpoint import ModelFile, open_model
from .export import build_torch_model, export_onnx, export_onnx_bytes

__all__ = [
    "PRESETS",
    "ArchitectureSpec",
    "ModelFile",
    "build_torch_model",
    "export_onnx",
    "export_onnx_bytes",
    "open_model",
    "spec_from_shapes",
]
