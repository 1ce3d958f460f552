"""Reading what an ONNX PtychoNN graph takes and gives, without running it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ptychonn_ophyd.errors import ModelError, OnnxWireError
from ptychonn_ophyd.models.onnx_wire import ValueInfo, read_graph


@dataclass(frozen=True)
class OnnxGraph:
    """The interface of an ONNX model, checked to be a PtychoNN-like one.

    Attributes
    ----------
    input_name
        Name of the single ``[batch, 1, H, W]`` input.
    input_shape
        ``(H, W)``.
    static_batch
        Fixed batch size, or ``None`` for a dynamic batch axis.
    output_heads
        Output name to head (``"phase"`` or ``"amplitude"``), in graph order.
    initializers
        Weights by name, as numpy arrays.
    """

    input_name: str
    input_shape: tuple[int, int]
    static_batch: int | None
    output_heads: dict[str, str]
    initializers: dict[str, np.ndarray] = field(repr=False)

    @property
    def heads(self) -> tuple[str, ...]:
        return tuple(sorted(self.output_heads.values()))


def read_onnx(path: Path, data: bytes) -> OnnxGraph:
    """Parse ``data`` (the bytes of ``path``) and check its inputs and outputs.

    Raises
    ------
    ModelError
        Not a readable ONNX model, or not one-channel 2-D frames in and out.
    """
    try:
        graph = read_graph(data)
    except (OnnxWireError, UnicodeDecodeError) as err:
        raise ModelError(path, f"not a valid ONNX model ({err})") from None
    weights = set(graph.initializers)
    inputs = [i for i in graph.inputs if i.name not in weights]
    if len(inputs) != 1:
        raise ModelError(path, f"expected one input, found {len(inputs)}")
    batch, shape = _frame_input(path, inputs[0])
    return OnnxGraph(
        input_name=inputs[0].name,
        input_shape=shape,
        static_batch=batch,
        output_heads=_output_heads(path, [o.name for o in graph.outputs]),
        initializers=graph.initializers,
    )


def _frame_input(path: Path, value_info: ValueInfo) -> tuple[int | None, tuple[int, int]]:
    dims = value_info.dims
    if len(dims) != 4 or dims[1] != 1 or None in dims[2:]:
        raise ModelError(
            path,
            f"input {value_info.name!r} has shape {dims}; a PtychoNN model takes one-channel "
            "2-D frames [batch, 1, H, W] of fixed H and W",
        )
    return dims[0], (dims[2], dims[3])


def _output_heads(path: Path, names: list[str]) -> dict[str, str]:
    if set(names) <= {"phase", "amplitude"} and "phase" in names:
        return {name: name for name in names}
    if len(names) == 1:
        return {names[0]: "phase"}
    if len(names) == 2:
        return {names[0]: "amplitude", names[1]: "phase"}
    raise ModelError(path, f"expected one or two outputs (phase, amplitude), found {len(names)}")


def with_dynamic_batch(data: bytes) -> bytes:
    """The same graph with its batch axis named ``batch`` instead of a fixed number.

    PtychoNN graphs have no shape-dependent nodes, so a static-batch export (such as
    edgePtychoNN's batch-8 model) runs at any batch once its inputs and outputs say so.
    """
    import onnx

    model = onnx.load_model_from_string(data)
    del model.graph.value_info[:]
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = "batch"
    return model.SerializeToString()
