"""Exporting PtychoNN weights to ONNX with a dynamic batch axis (needs PyTorch)."""

from __future__ import annotations

import io
import warnings

import numpy as np

from ptychonn_ophyd.models.architecture import ArchitectureSpec

INPUT_NAME = "frames"
OPSET = 17


def build_torch_model(spec: ArchitectureSpec, state_dict: dict[str, np.ndarray]):
    """A :class:`PtychoNN` module in eval mode holding ``state_dict``'s weights."""
    import torch

    from ptychonn_ophyd.models.network import PtychoNN

    model = PtychoNN(spec)
    model.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in state_dict.items()})
    return model.eval()


def export_onnx_bytes(spec: ArchitectureSpec, state_dict: dict[str, np.ndarray]) -> bytes:
    """ONNX bytes taking ``frames`` ``[batch, 1, H, W]`` and giving named heads."""
    import torch

    model = build_torch_model(spec, state_dict)
    example = torch.zeros(2, 1, spec.input_size, spec.input_size)
    outputs = ["amplitude", "phase"] if "amplitude" in spec.heads else ["phase"]
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but exports in 0.2 s, the dynamo one in 4 s.
        warnings.simplefilter("ignore", DeprecationWarning)
        _export(torch, model, example, buffer, outputs)
    return buffer.getvalue()


def _export(torch, model, example, buffer, outputs) -> None:
    torch.onnx.export(
        model,
        (example,),
        buffer,
        input_names=[INPUT_NAME],
        output_names=outputs,
        dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *outputs]},
        opset_version=OPSET,
        dynamo=False,
    )
