"""Training on simulated frames, the files it writes, and the shipped demo model."""

# ruff: noqa: E402  (imports follow the PyTorch skip)

from __future__ import annotations

import json
from importlib.resources import files

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs PyTorch")

from ptychonn_ophyd.models import PRESETS, build_torch_model, open_model
from ptychonn_ophyd.physics.held_out import DemoScan
from ptychonn_ophyd.training import (
    TrainingConfig,
    held_out_check,
    phase_rms_error,
    simulate_set,
    train,
)

DATA = files("ptychonn_ophyd") / "data"


def tiny(**overrides) -> TrainingConfig:
    settings = dict(
        n_frames=48,
        n_validation_frames=16,
        epochs=1,
        batch_size=16,
        device="cpu",
        demo=DemoScan(radius_um=0.3),
    )
    return TrainingConfig(**{**settings, **overrides})


@pytest.mark.parametrize("preset", ["small_phase", "small_amp_phase"])
def test_tiny_training_writes_loadable_pth_onnx_and_recipe(tmp_path, preset):
    result = train(tiny(preset=preset), tmp_path, workers=1)
    pth = open_model(tmp_path / result.files["pth"])
    onnx = open_model(tmp_path / result.files["onnx"])
    assert pth.spec == PRESETS[preset]
    assert onnx.static_batch is None and onnx.heads == pth.heads
    recipe = json.loads((tmp_path / result.files["recipe"]).read_text())
    assert recipe["config"]["preset"] == preset and recipe["config"]["n_frames"] == 48
    assert 0 < recipe["metrics"]["val_phase_rms"] < np.pi
    assert "held_out_ssim_aligned" in recipe["metrics"]
    if preset == "small_amp_phase":
        assert 0 < recipe["metrics"]["val_amplitude_rms"] < 1


def test_simulated_set_does_not_depend_on_the_number_of_workers():
    config = tiny()
    one = simulate_set(12, config, np.random.SeedSequence(4), workers=1)
    two = simulate_set(12, config, np.random.SeedSequence(4), workers=2)
    np.testing.assert_array_equal(one.frames, two.frames)
    np.testing.assert_array_equal(one.phase, two.phase)
    assert one.frames.dtype == np.int16 and one.frames.shape == (12, 128, 128)


def test_phase_error_ignores_a_constant_offset_per_patch():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(3, 8, 8))
    lit = np.ones((8, 8), bool)
    shifted = truth + np.array([0.5, -1.0, 2.0])[:, None, None]
    assert phase_rms_error(shifted, truth, lit) == pytest.approx(0.0, abs=1e-12)
    assert phase_rms_error(truth + rng.normal(0, 0.1, truth.shape), truth, lit) > 0.05


def test_shipped_demo_model_reconstructs_the_held_out_object():
    recipe = json.loads((DATA / "demo_model_recipe.json").read_text())
    model_file = open_model(DATA / recipe["files"]["pth"])
    model = build_torch_model(model_file.spec, model_file.state_dict())
    metrics = held_out_check(model, TrainingConfig(demo=DemoScan(radius_um=0.6)), "cpu")
    assert metrics["held_out_ssim_aligned"] > 0.6
    assert metrics["held_out_phase_rms_aligned"] < 0.15
    assert metrics["held_out_ssim_aligned"] > metrics["held_out_ssim_plain"]
