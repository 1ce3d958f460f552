"""PtychoNN architectures and model files (``.pth`` and ONNX)."""

from ptychonn_ophyd.models.architecture import PRESETS, ArchitectureSpec, spec_from_shapes
from ptychonn_ophyd.models.checkpoint import ModelFile, export_onnx, model_hash_of, open_model
from ptychonn_ophyd.models.export import build_torch_model, export_onnx_bytes

__all__ = [
    "PRESETS",
    "ArchitectureSpec",
    "ModelFile",
    "build_torch_model",
    "export_onnx",
    "export_onnx_bytes",
    "model_hash_of",
    "open_model",
    "spec_from_shapes",
]
