"""The ONNX wire reader agrees with the ``onnx`` package on what it reads."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ptychonn_ophyd.errors import OnnxWireError
from ptychonn_ophyd.models.bundled import demo_model_path
from ptychonn_ophyd.models.onnx_wire import read_graph


def _onnx_reading(data: bytes) -> tuple[dict, list, list]:
    graph = onnx.load_model_from_string(data).graph

    def dims(value) -> list:
        shape = value.type.tensor_type.shape.dim
        return [d.dim_value if d.HasField("dim_value") else None for d in shape]

    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    return (
        weights,
        [(i.name, dims(i)) for i in graph.input],
        [(o.name, dims(o)) for o in graph.output],
    )


def _assert_reads_as_onnx_does(data: bytes) -> None:
    graph = read_graph(data)
    weights, inputs, outputs = _onnx_reading(data)
    assert [(i.name, i.dims) for i in graph.inputs] == inputs
    assert [(o.name, o.dims) for o in graph.outputs] == outputs
    assert graph.initializers.keys() == weights.keys()
    for name, array in weights.items():
        assert graph.initializers[name].dtype == array.dtype, name
        np.testing.assert_array_equal(graph.initializers[name], array, err_msg=name)


def test_published_and_bundled_onnx_models_read_as_the_onnx_package_reads_them(shared_models):
    for path in [*sorted(shared_models.glob("*.onnx")), demo_model_path()]:
        _assert_reads_as_onnx_does(path.read_bytes())


@pytest.mark.parametrize("raw", [True, False], ids=["raw_data", "typed_fields"])
@pytest.mark.parametrize(
    ("data_type", "values"),
    [
        (TensorProto.FLOAT, [1.5, -2.0]),
        (TensorProto.DOUBLE, [1e300, -1.0]),
        (TensorProto.FLOAT16, [1.5, -0.25]),
        (TensorProto.INT64, [-3, 2**40]),
        (TensorProto.INT32, [-7, 5]),
        (TensorProto.INT8, [-5, 7]),
        (TensorProto.UINT8, [200, 3]),
        (TensorProto.UINT64, [2**63 + 5, 1]),
        (TensorProto.BOOL, [True, False]),
    ],
)
def test_weights_of_each_numeric_type_and_layout_read_as_the_onnx_package_reads_them(
    data_type, values, raw
):
    array = np.array(values, helper.tensor_dtype_to_np_dtype(data_type)).reshape(2, 1)
    weight = helper.make_tensor("w", data_type, [2, 1], array.tobytes() if raw else array, raw=raw)
    frames = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 4, 4])
    phase = helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 1, 4, 4])
    graph = helper.make_graph([], "g", [frames], [phase], [weight])
    _assert_reads_as_onnx_does(helper.make_model(graph).SerializeToString())


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"not onnx at all", "wire type 6"),
        (b"\x3a\x10\x00", "runs past the end"),
        (b"\x08\x07", "no graph"),
        (b"\x08\xff", "runs past the end"),
    ],
)
def test_bytes_that_are_no_onnx_model_say_what_is_wrong(data, why):
    with pytest.raises(OnnxWireError, match=why):
        read_graph(data)


def test_weights_stored_outside_the_file_are_refused_by_name():
    weight = helper.make_tensor("w", TensorProto.FLOAT, [1], [0.0])
    weight.data_location = TensorProto.EXTERNAL
    graph = helper.make_graph([], "g", [], [], [weight])
    with pytest.raises(OnnxWireError, match="weight w is stored outside the file"):
        read_graph(helper.make_model(graph).SerializeToString())


@pytest.mark.processes
def test_a_worker_opens_an_onnx_model_without_importing_the_onnx_package():
    script = (
        "import sys; import ptychonn_ophyd.worker.processor; "
        "from ptychonn_ophyd.models import open_model; "
        f"open_model({str(demo_model_path())!r}); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'ml_dtypes')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
