"""Reading PtychoNN model files: architectures from shapes, clear errors, ONNX export."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from ptychonn_ophyd.errors import ModelError
from ptychonn_ophyd.models import PRESETS, open_model, spec_from_shapes


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_architecture_is_recovered_from_checkpoint_shapes(preset):
    spec = PRESETS[preset]
    assert spec_from_shapes(spec.parameter_shapes()) == spec


def test_parameter_counts_match_the_published_models():
    counts = {
        k: sum(int(np.prod(s)) for s in p.parameter_shapes().values()) for k, p in PRESETS.items()
    }
    assert counts["small_phase"] == 733_921
    assert counts["original"] == 1_247_074


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_pth_checkpoint_opens_without_being_told_its_variant(make_checkpoint, preset):
    pth, onnx_path = make_checkpoint(preset)
    model = open_model(pth)
    assert model.spec == PRESETS[preset]
    assert model.heads == PRESETS[preset].heads
    assert open_model(onnx_path).heads == PRESETS[preset].heads


def test_published_checkpoint_is_the_small_phase_model(shared_models):
    model = open_model(shared_models / "ptychonn_small_phase_nconv16.pth")
    assert model.spec == PRESETS["small_phase"]
    assert model.input_shape == (128, 128)


def test_published_onnx_files_report_their_static_batch(shared_models):
    assert open_model(shared_models / "edgeptychonn_ptychoNN_8.onnx").static_batch == 8
    assert open_model(shared_models / "ptychonn_small_phase_nconv16_b1.onnx").static_batch == 1


def test_export_gives_a_dynamic_batch_axis(make_checkpoint, tmp_path):
    from ptychonn_ophyd.models import export_onnx

    pth, _ = make_checkpoint("small_amp_phase")
    out = export_onnx(pth, tmp_path / "m.onnx")
    model = open_model(out)
    assert model.static_batch is None
    assert [o.name for o in onnx.load(out).graph.output] == ["amplitude", "phase"]


def test_missing_file_error_names_it(tmp_path):
    with pytest.raises(ModelError, match=r"nope\.pth: no such model file"):
        open_model(tmp_path / "nope.pth")


def test_truncated_checkpoint_error_names_it(make_checkpoint, tmp_path):
    pth, _ = make_checkpoint("small_phase")
    cut = tmp_path / "cut.pth"
    cut.write_bytes(pth.read_bytes()[:5000])
    with pytest.raises(ModelError, match=r"cut\.pth: a truncated or damaged PyTorch checkpoint"):
        open_model(cut)


def test_truncated_onnx_error_names_it(small_phase_onnx, tmp_path):
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(small_phase_onnx.read_bytes()[:5000])
    with pytest.raises(ModelError, match=r"cut\.onnx: not a valid ONNX model"):
        open_model(cut)


def test_checkpoint_with_wrong_keys_is_not_a_ptychonn_model(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3)}, path)
    with pytest.raises(ModelError, match=r"resnet\.pth: not a PtychoNN checkpoint: no encoder"):
        open_model(path)


def test_checkpoint_with_wrong_shapes_names_the_tensor(make_checkpoint, tmp_path):
    torch = pytest.importorskip("torch")
    pth, _ = make_checkpoint("small_phase")
    state = torch.load(pth)
    state["decoder2.2.weight"] = torch.zeros(128, 64, 3, 3)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(ModelError, match=r"decoder2\.2\.weight has shape"):
        open_model(bad)


def test_pickle_that_is_not_a_state_dict_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(ModelError, match=r"list\.pth: not a PtychoNN checkpoint"):
        open_model(path)


def test_onnx_with_three_channel_input_is_refused(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 64, 64])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "rgb", [x], [y])
    path = tmp_path / "rgb.onnx"
    onnx.save(helper.make_model(graph), path)
    with pytest.raises(ModelError, match=r"rgb\.onnx: input 'x' has shape \[1, 3, 64, 64\]"):
        open_model(path)


def test_unknown_extension_is_refused(tmp_path):
    path = tmp_path / "model.h5"
    path.write_bytes(b"x")
    with pytest.raises(ModelError, match="unknown model format"):
        open_model(path)


def test_random_bytes_pth_error_says_it_is_no_checkpoint(tmp_path):
    pytest.importorskip("torch")
    path = tmp_path / "random.pth"
    path.write_bytes(np.random.default_rng(3).bytes(4096).replace(b"\x80", b"\x00", 1))
    with pytest.raises(ModelError) as raised:
        open_model(path)
    assert str(raised.value) == (
        f"{path}: not a PyTorch checkpoint (no zip archive or pickle inside)"
    )


def test_pickle_of_python_objects_pth_error_says_to_save_a_state_dict(tmp_path):
    pytest.importorskip("torch")
    import pickle

    path = tmp_path / "objects.pth"
    path.write_bytes(pickle.dumps({"model": ModelError}, protocol=2))
    with pytest.raises(ModelError, match=r"objects\.pth: a pickle, but not a PyTorch checkpoint"):
        open_model(path)
