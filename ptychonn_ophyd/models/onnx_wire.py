"""The few fields of an ONNX file that a PtychoNN graph's interface needs, read straight
from protobuf's wire format.

Importing the ``onnx`` package costs about a second (most of it ``ml_dtypes``, which it
loads for types a PtychoNN graph never uses), and every worker process opens its model
at start: reading the graph's inputs, outputs and weights from the bytes costs a few
milliseconds instead.  The field numbers are those of ``onnx.proto`` (ModelProto,
GraphProto, TensorProto, ValueInfoProto, TypeProto, TensorShapeProto), which ONNX keeps
stable across versions.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ptychonn_ophyd.errors import OnnxWireError

MODEL_GRAPH = 7
GRAPH_INITIALIZER, GRAPH_INPUT, GRAPH_OUTPUT = 5, 11, 12
TENSOR_DIMS, TENSOR_DATA_TYPE, TENSOR_NAME, TENSOR_RAW_DATA = 1, 2, 8, 9
TENSOR_DATA_LOCATION = 14
VALUE_NAME, VALUE_TYPE = 1, 2
TYPE_TENSOR, TENSOR_TYPE_SHAPE, SHAPE_DIM, DIM_VALUE = 1, 2, 1, 1
"""Field numbers of ``onnx.proto``."""
FIXED_SIZE = {1: 8, 5: 4}
"""Bytes of protobuf's fixed-size wire types (1: 64-bit, 5: 32-bit)."""

DTYPES = {
    1: np.float32,
    2: np.uint8,
    3: np.int8,
    4: np.uint16,
    5: np.int16,
    6: np.int32,
    7: np.int64,
    9: np.bool_,
    10: np.float16,
    11: np.float64,
    12: np.uint32,
    13: np.uint64,
}
"""numpy types of ``TensorProto.DataType`` values (bfloat16, strings and the 8-bit
floats have none in numpy)."""

FIXED_DATA = {1: (4, "<f4"), 11: (10, "<f8")}
"""For tensors whose values are not ``raw_data``: data type -> (the packed field of
fixed-size values that holds them, its element's layout): ``float_data``, ``double_data``."""
VARINT_DATA = {6: 5, 7: 7, 13: 11, 2: 5, 3: 5, 4: 5, 5: 5, 9: 5, 10: 5, 12: 5}
"""Data type -> the packed varint field that holds its values: ``int64_data`` (7),
``uint64_data`` (11), else ``int32_data`` (5), which holds the narrower integers, the
booleans and float16 (as its bits)."""


@dataclass(frozen=True)
class ValueInfo:
    """A graph input or output: its name and dimensions (``None`` for a named one)."""

    name: str
    dims: list[int | None]


@dataclass(frozen=True)
class Graph:
    """What :func:`read_graph` reads of a ModelProto's graph."""

    inputs: list[ValueInfo]
    outputs: list[ValueInfo]
    initializers: dict[str, np.ndarray]


def read_graph(data: bytes) -> Graph:
    """The inputs, outputs and initializers of the ONNX model ``data``.

    Raises
    ------
    OnnxWireError
        ``data`` is not a protobuf message, has no graph, or holds weights that cannot be
        read here (stored outside the file, or of a type numpy lacks).
    """
    graph = _only(_fields(memoryview(data)), MODEL_GRAPH, "graph")
    inputs, outputs, initializers = [], [], {}
    for number, value in _fields(graph):
        if number == GRAPH_INPUT:
            inputs.append(_value_info(value))
        elif number == GRAPH_OUTPUT:
            outputs.append(_value_info(value))
        elif number == GRAPH_INITIALIZER:
            name, array = _tensor(value)
            initializers[name] = array
    return Graph(inputs, outputs, initializers)


def _fields(message: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """``(field number, value)`` of each field of ``message``: an int for a varint, the
    bytes (a view) for the other wire types."""
    pos, end = 0, len(message)
    while pos < end:
        key, pos = _varint(message, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(message, pos)
        elif wire in (1, 2, 5):
            size = FIXED_SIZE.get(wire)
            if size is None:  # length-delimited: the length comes first
                size, pos = _varint(message, pos)
            value, pos = message[pos : pos + size], pos + size
            if pos > end:
                raise OnnxWireError(f"field {number} runs past the end of its message")
        else:
            raise OnnxWireError(f"wire type {wire} (field {number}) is not protobuf's")
        yield number, value


def _varint(message: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(message):
            raise OnnxWireError("a number runs past the end of its message")
        byte = message[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise OnnxWireError("a number longer than 64 bits")


def _only(fields: Iterator[tuple[int, int | memoryview]], number: int, what: str) -> memoryview:
    for found, value in fields:
        if found == number and isinstance(value, memoryview):
            return value
    raise OnnxWireError(f"no {what}")


def _text(value: int | memoryview) -> str:
    if not isinstance(value, memoryview):
        raise OnnxWireError("a name that is not text")
    return bytes(value).decode()


def _value_info(message: memoryview) -> ValueInfo:
    name, dims = "", []
    for number, value in _fields(message):
        if number == VALUE_NAME:
            name = _text(value)
        elif number == VALUE_TYPE:
            dims = _dims(value)
    return ValueInfo(name, dims)


def _dims(type_proto: memoryview) -> list[int | None]:
    """The dimensions of a tensor type (``[]`` for another type, or no shape)."""
    tensor = dict(_fields(type_proto)).get(TYPE_TENSOR)
    shape = dict(_fields(tensor)).get(TENSOR_TYPE_SHAPE) if tensor is not None else None
    if shape is None:
        return []
    return [
        dict(_fields(dim)).get(DIM_VALUE) for number, dim in _fields(shape) if number == SHAPE_DIM
    ]


def _tensor(message: memoryview) -> tuple[str, np.ndarray]:
    name, dims, data_type, raw, typed = "", [], 0, None, {}
    for number, value in _fields(message):
        if number == TENSOR_NAME:
            name = _text(value)
        elif number == TENSOR_DIMS:
            dims += _signed(_varints(value)).tolist()
        elif number == TENSOR_DATA_TYPE:
            data_type = value
        elif number == TENSOR_RAW_DATA:
            raw = value
        elif number == TENSOR_DATA_LOCATION and value == 1:
            raise OnnxWireError(f"weight {name or '?'} is stored outside the file")
        else:
            typed[number] = value
    if data_type not in DTYPES:
        raise OnnxWireError(f"weight {name!r} has ONNX data type {data_type}, which numpy lacks")
    dtype = np.dtype(DTYPES[data_type])
    if raw is not None:
        array = np.frombuffer(raw, dtype.newbyteorder("<")).astype(dtype)
    else:
        array = _typed_values(typed, data_type, dtype)
    if array.size != int(np.prod(dims)):
        raise OnnxWireError(f"weight {name!r} holds {array.size} values for dimensions {dims}")
    return name, array.reshape(dims)


def _typed_values(typed: dict, data_type: int, dtype: np.dtype) -> np.ndarray:
    if data_type in FIXED_DATA:
        field, layout = FIXED_DATA[data_type]
        return np.frombuffer(typed.get(field, b""), layout).astype(dtype)
    values = _signed(_varints(typed.get(VARINT_DATA[data_type], memoryview(b""))))
    if data_type == 10:  # float16 values travel as their bits
        return values.astype(np.uint16).view(np.float16)
    if data_type == 13:
        return values.view(np.uint64)
    return values.astype(dtype)


def _signed(numbers: list[int]) -> np.ndarray:
    """Varints as int64 (protobuf writes a negative integer as its 64-bit complement)."""
    return np.array(numbers, np.uint64).view(np.int64)


def _varints(value: int | memoryview) -> list[int]:
    if not isinstance(value, memoryview):
        return [value]
    numbers, pos = [], 0
    while pos < len(value):
        number, pos = _varint(value, pos)
        numbers.append(number)
    return numbers
