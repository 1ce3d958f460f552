"""One suite for every backend: shapes, batching, and agreement with a float64 reference.

Backends that cannot run here are skipped with the reason, never passed.
"""

from __future__ import annotations

import numpy as np
import pytest
from frames import poisson_frames

from ptychonn_ophyd.engines import EngineConfig, create_engine, unavailable_reason
from ptychonn_ophyd.engines.selection import choose_backend
from ptychonn_ophyd.errors import BackendUnavailable
from ptychonn_ophyd.models import build_torch_model, open_model

TOLERANCE = {"fp32": 1e-5, "tf32": 1e-3, "fp16": 2e-2, "bf16": 2e-2}

VARIANTS = [
    ("onnxruntime", "fp32", "cpu"),
    ("torch", "fp32", "cpu"),
    *[("torch", p, "cuda:0") for p in ("fp32", "tf32", "fp16", "bf16")],
    *[("tensorrt", p, "cuda:0") for p in ("fp32", "tf32", "fp16")],
]


def _skip_reason(backend: str, device: str) -> str | None:
    reason = unavailable_reason(backend)
    if reason or device == "cpu":
        return reason
    import torch

    return None if torch.cuda.is_available() else "no CUDA GPU"


@pytest.fixture(params=VARIANTS, ids=["-".join(v) for v in VARIANTS])
def variant(request):
    backend, precision, device = request.param
    reason = _skip_reason(backend, device)
    if reason:
        pytest.skip(f"{backend} on {device}: {reason}")
    return EngineConfig(backend=backend, precision=precision, device=device, max_batch=8)


def reference(model_path, frames: np.ndarray) -> list[np.ndarray]:
    """The model in float64 on the CPU: (phase,) or (amplitude, phase)."""
    torch = pytest.importorskip("torch", reason="the float64 reference needs PyTorch")
    model = open_model(model_path)
    net = build_torch_model(model.spec, model.state_dict()).double()
    with torch.no_grad():
        outputs = net(torch.from_numpy(frames.astype(np.float64))[:, None])
    return [o[:, 0].numpy() for o in outputs]


def relative_error(result: np.ndarray, expected: np.ndarray) -> float:
    """Norm-wise relative error ``||result - expected|| / ||expected||``."""
    return float(np.linalg.norm(result - expected) / np.linalg.norm(expected))


@pytest.mark.parametrize("preset", ["small_phase", "small_amp_phase", "original"])
def test_engine_agrees_with_float64_reference(variant, make_checkpoint, preset):
    pth, onnx_path = make_checkpoint(preset)
    size = 64 if preset == "original" else 128
    frames = poisson_frames(5, (size, size)).astype(np.float32)
    expected = reference(pth, frames)
    with create_engine(onnx_path if variant.backend != "torch" else pth, variant) as engine:
        result = engine.infer(frames)
    assert result.phase.dtype == np.float32 and result.phase.shape == (5, size, size)
    assert not np.isnan(result.phase).any()
    assert relative_error(result.phase, expected[-1]) <= TOLERANCE[variant.precision]
    if preset == "small_phase":
        assert result.amplitude is None
    else:
        assert relative_error(result.amplitude, expected[0]) <= TOLERANCE[variant.precision]


@pytest.mark.parametrize("n", [1, 3, 8])
def test_engine_takes_any_batch_up_to_its_maximum(variant, small_phase_onnx, n):
    frames = poisson_frames(8).astype(np.float32)
    with create_engine(small_phase_onnx, variant) as engine:
        alone = np.concatenate([engine.infer(f[None]).phase for f in frames[:n]])
        together = engine.infer(frames[:n]).phase
    np.testing.assert_allclose(together, alone, rtol=0, atol=TOLERANCE[variant.precision] * np.pi)


def test_engine_refuses_a_batch_above_its_maximum(variant, small_phase_onnx):
    with (
        create_engine(small_phase_onnx, variant) as engine,
        pytest.raises(ValueError, match="1 to 8"),
    ):
        engine.infer(np.zeros((9, 128, 128), np.float32))


def test_engine_refuses_frames_of_the_wrong_size(variant, small_phase_onnx):
    with (
        create_engine(small_phase_onnx, variant) as engine,
        pytest.raises(ValueError, match="128, 128"),
    ):
        engine.infer(np.zeros((2, 64, 64), np.float32))


def test_published_checkpoint_matches_its_authors_onnx_export(variant, shared_models):
    frames = poisson_frames(4, seed=3).astype(np.float32)
    authors = create_engine(
        shared_models / "ptychonn_small_phase_nconv16_b1.onnx", backend="onnxruntime"
    )
    expected = authors.infer_all(frames).phase
    with create_engine(shared_models / "ptychonn_small_phase_nconv16.pth", variant) as engine:
        result = engine.infer(frames).phase
    assert relative_error(result, expected) <= max(TOLERANCE[variant.precision], 1e-5)


def test_static_batch_model_takes_any_number_of_frames(variant, shared_models):
    """edgePtychoNN's batch-8 graph: 13 frames are padded to 16 and the padding dropped."""
    path = shared_models / "edgeptychonn_ptychoNN_8.onnx"
    frames = poisson_frames(13, seed=4).astype(np.float32)
    expected = reference(path, frames)[-1]
    with create_engine(path, variant) as engine:
        result = engine.infer_all(frames).phase
    assert result.shape == (13, 128, 128)
    assert relative_error(result, expected) <= TOLERANCE[variant.precision]


def test_auto_says_which_backend_it_picked_and_why():
    backend, reason = choose_backend(EngineConfig(backend="auto"))
    assert backend in reason
    if unavailable_reason("tensorrt"):
        assert "not tensorrt" in reason


def test_asking_for_a_missing_backend_says_why():
    reason = unavailable_reason("tensorrt")
    if reason is None:
        pytest.skip("TensorRT is installed here")
    with pytest.raises(
        BackendUnavailable, match="tensorrt cannot run here: TensorRT is not installed"
    ):
        choose_backend(EngineConfig(backend="tensorrt"))
