"""Training on simulated frames: the torch forward model, the sampler, the loop, the files."""

# ruff: noqa: E402  (imports follow the PyTorch skip)

from __future__ import annotations

import json
from importlib.resources import files

import numpy as np
import onnxruntime
import pytest

torch = pytest.importorskip("torch", reason="training needs PyTorch")

from ptychonn_ophyd.cli import build_parser
from ptychonn_ophyd.cli import main as cli
from ptychonn_ophyd.cli.train import training_config
from ptychonn_ophyd.models import build_torch_model, open_model
from ptychonn_ophyd.models.architecture import HEAD_DECODERS
from ptychonn_ophyd.models.bundled import DEMO_RECIPE
from ptychonn_ophyd.models.export import INPUT_NAME
from ptychonn_ophyd.physics import diffraction, forward_torch
from ptychonn_ophyd.physics.held_out import DemoScan
from ptychonn_ophyd.physics.objects import held_out_object
from ptychonn_ophyd.physics.probe import make_probe
from ptychonn_ophyd.training import TrainingConfig
from ptychonn_ophyd.training.evaluation import HeldOutCheck, phase_rms_error, predict
from ptychonn_ophyd.training.fit import contrast_error, new_model
from ptychonn_ophyd.training.recipe import command_line, train
from ptychonn_ophyd.training.sampler import FrameSampler

DATA = files("ptychonn_ophyd") / "data"


def tiny(**overrides) -> TrainingConfig:
    settings = dict(
        nconv=16,
        epochs=3,
        frames_per_epoch=64,
        n_validation_frames=32,
        batch_size=16,
        learning_rate=2e-3,
        device="cpu",
        check_every=0,
        demo=DemoScan(radius_um=0.3),
    )
    return TrainingConfig(**{**settings, **overrides})


def test_torch_forward_model_gives_the_numpy_intensity():
    obj = held_out_object(size=192)
    patches = obj.transmission[None, 10:138, 20:148] * np.ones((3, 1, 1), np.complex64)
    waves = make_probe() * patches
    expected = diffraction.far_field_intensity(waves)
    got = forward_torch.far_field_intensity(torch.as_tensor(waves)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-9 * expected.max())


def test_torch_photon_counts_have_the_numpy_statistics_and_saturate_alike():
    expected = np.array([0.5, 3.0, 40.0, 1e5], np.float32).repeat(20000).reshape(4, -1)
    numpy_counts = diffraction.count_photons(
        expected, diffraction.DetectorConfig(), np.random.default_rng(0)
    )
    torch_counts = forward_torch.count_photons(
        torch.as_tensor(expected), "int16", torch.Generator().manual_seed(0)
    ).numpy()
    for row in range(3):
        for counts in (numpy_counts[row], torch_counts[row]):
            assert counts.mean() == pytest.approx(expected[row, 0], rel=0.03)
            assert counts.var() == pytest.approx(expected[row, 0], rel=0.05)
    assert numpy_counts[3].max() == torch_counts[3].max() == np.iinfo(np.int16).max


def test_sampler_draws_the_same_batch_from_the_same_seed_within_the_recipe_ranges():
    config = tiny()
    a = FrameSampler(config, "cpu", seed=3).draw(24)
    b = FrameSampler(config, "cpu", seed=3).draw(24)
    c = FrameSampler(config, "cpu", seed=4).draw(24)
    torch.testing.assert_close(a.frames, b.frames, rtol=0, atol=0)
    assert not torch.equal(a.frames, c.frames)
    assert a.frames.shape == (24, 128, 128) and a.frames.min() >= 0
    assert a.frames.max() <= np.iinfo(np.int16).max
    weighted_mean = (a.phase * a.weight).sum((-2, -1)) / a.weight.sum((-2, -1))
    torch.testing.assert_close(weighted_mean, torch.zeros(24), atol=1e-4, rtol=0)
    assert float(a.phase.abs().max()) < np.pi
    floor = config.variation.amplitude_floor_range[0]
    assert floor - 1e-5 <= float(a.amplitude.min()) and float(a.amplitude.max()) <= 1 + 1e-5
    assert float(a.phase.std((-2, -1)).median()) > 0.1, "patches must carry structure"


def test_phase_error_ignores_a_constant_offset_per_patch():
    truth = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(0))
    lit = torch.ones(8, 8, dtype=torch.bool)
    shifted = truth + torch.tensor([0.5, -1.0, 2.0])[:, None, None]
    assert phase_rms_error(shifted, truth, lit) == pytest.approx(0.0, abs=1e-6)
    assert phase_rms_error(truth + 0.1 * torch.randn(3, 8, 8), truth, lit) > 0.05


def test_a_few_training_steps_lower_the_loss_and_write_loadable_artefacts(tmp_path):
    result = train(tiny(), tmp_path, name="tiny", progress=False)
    losses = [epoch["val_loss"] for epoch in result.history]
    assert losses[-1] < losses[0], f"validation loss did not fall: {losses}"
    assert set(result.files) == {"pth", "onnx", "recipe"}
    pth, onnx = (open_model(tmp_path / result.files[kind]) for kind in ("pth", "onnx"))
    assert pth.spec == onnx.spec == tiny().spec and onnx.static_batch is None
    recipe = json.loads((tmp_path / "tiny_recipe.json").read_text())
    assert recipe["config"]["frames_per_epoch"] == 64
    assert [epoch["epoch"] for epoch in recipe["history"]] == [0, 1, 2, 3]
    assert recipe["command"].startswith("ptychonn-ophyd train --out DIR --name tiny")
    held_out = {f"held_out_ssim_{way}" for way in ("plain", "aligned", "tilt")}
    assert held_out | {"val_phase_rms"} <= set(recipe["metrics"])
    assert recipe["initial_weights_sha256"] == "" and recipe["initial_weights_recipe"] is None


def test_a_run_from_a_trained_model_keeps_that_models_recipe_in_its_own(tmp_path):
    train(tiny(epochs=1), tmp_path / "first", name="tiny", progress=False)
    first = tmp_path / "first" / "tiny.pth"
    train(tiny(epochs=1, initial_weights=str(first)), tmp_path, name="tiny", progress=False)
    recipe = json.loads((tmp_path / "tiny_recipe.json").read_text())
    first_recipe = json.loads((tmp_path / "first" / "tiny_recipe.json").read_text())
    assert recipe["initial_weights_recipe"] == first_recipe
    assert recipe["initial_weights_sha256"] == open_model(first).sha256
    assert recipe["command"].endswith(f"--initial-weights {first}")


def test_a_recipes_command_makes_the_same_recipe_again(tmp_path):
    config = TrainingConfig(
        nconv=4, epochs=3, learning_rate=2e-3, check_every=0, contrast_weight=0.5
    )
    words = command_line(config, "tiny").split()
    args = build_parser().parse_args([w.replace("DIR", str(tmp_path)) for w in words[1:]])
    assert training_config(args) == config


def test_contrast_error_ignores_an_offset_and_sees_shrunk_contrast():
    batch = FrameSampler(tiny(), "cpu", seed=5).draw(8)
    assert float(contrast_error(batch.phase + 0.7, batch)) == pytest.approx(0.0, abs=1e-10)
    shrunk = (0.85 * batch.phase).requires_grad_()
    error = contrast_error(shrunk, batch)
    assert float(error.detach()) > 1e-4
    error.backward()
    spread_gradient = (shrunk.grad * batch.phase * batch.weight).sum()
    assert float(spread_gradient) < 0, "descending the error must widen the spread"


def test_training_with_a_contrast_weight_lowers_the_loss_and_records_it(tmp_path):
    result = train(tiny(contrast_weight=1.0), tmp_path, name="tiny", progress=False)
    losses = [epoch["val_loss"] for epoch in result.history]
    assert losses[-1] < losses[0], f"validation loss did not fall: {losses}"
    recipe = json.loads((tmp_path / "tiny_recipe.json").read_text())
    assert recipe["config"]["contrast_weight"] == 1.0
    assert recipe["command"].endswith("--contrast-weight 1.0")


def test_train_command_refuses_a_negative_contrast_weight(tmp_path, capsys):
    code = cli(["train", "--out", str(tmp_path), "--contrast-weight", "-1"])
    assert code == 2
    assert capsys.readouterr().err.strip() == "error: contrast_weight must be at least 0, got -1.0"


def test_train_command_refuses_an_epoch_shorter_than_a_batch(tmp_path, capsys):
    code = cli(["train", "--out", str(tmp_path), "--frames-per-epoch", "8", "--batch-size", "16"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: frames_per_epoch 8 is less than one batch (16)"
    assert not any(tmp_path.iterdir())


def test_train_command_refuses_initial_weights_of_another_network(tmp_path, capsys):
    wide = str(DATA / "ptychonn_demo_small_phase.pth")
    code = cli(["train", "--out", str(tmp_path), "--nconv", "8", "--initial-weights", wide])
    assert code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and wide in line and "not ArchitectureSpec" in line
    assert not any(tmp_path.iterdir())


def test_a_two_head_model_starts_from_a_phase_model_with_its_amplitude_decoder_copied():
    phase_only = str(DATA / "ptychonn_demo_small_phase.pth")
    nconv = open_model(phase_only).spec.encoder_channels[0]
    config = tiny(preset="small_amp_phase", nconv=nconv, initial_weights=phase_only)
    model, _ = new_model(config, FrameSampler(config, "cpu", seed=0))
    state = model.state_dict()
    for key, value in open_model(phase_only).state_dict().items():
        np.testing.assert_array_equal(state[key].numpy(), np.asarray(value))
        copied = key.replace(HEAD_DECODERS["phase"] + ".", HEAD_DECODERS["amplitude"] + ".")
        np.testing.assert_array_equal(state[copied].numpy(), np.asarray(value))
    assert any(key.startswith(HEAD_DECODERS["amplitude"] + ".") for key in state)


@pytest.fixture(scope="module")
def demo_recipe() -> dict:
    return json.loads((DATA / DEMO_RECIPE).read_text())


def test_shipped_demo_models_runs_go_back_to_fresh_weights_all_on_a_gpu(demo_recipe):
    runs = [demo_recipe]
    while runs[-1].get("initial_weights_recipe") is not None:
        assert runs[-1]["initial_weights_sha256"], "a run from weights names their hash"
        runs.append(runs[-1]["initial_weights_recipe"])
    assert runs[-1]["config"]["initial_weights"] == "", "the first run starts fresh"
    for run in runs:
        assert run["command"].startswith("ptychonn-ophyd train")
        assert "gpu" in run["machine"], "the shipped model was trained on a GPU"


def test_shipped_demo_model_is_the_one_its_recipe_describes(demo_recipe):
    pth = open_model(DATA / demo_recipe["files"]["pth"])
    assert pth.spec == TrainingConfig(nconv=demo_recipe["config"]["nconv"]).spec
    frames = HeldOutCheck(TrainingConfig(demo=DemoScan(radius_um=0.2))).frames
    model = build_torch_model(pth.spec, pth.state_dict())
    from_pth = predict(model, frames)["phase"].numpy()
    session = onnxruntime.InferenceSession(str(DATA / demo_recipe["files"]["onnx"]))
    (from_onnx,) = session.run(["phase"], {INPUT_NAME: frames[:, None].astype(np.float32)})
    np.testing.assert_allclose(from_onnx[:, 0], from_pth, atol=1e-4)


def test_shipped_demo_model_reconstructs_the_held_out_object(demo_recipe):
    model_file = open_model(DATA / demo_recipe["files"]["pth"])
    model = build_torch_model(model_file.spec, model_file.state_dict())
    metrics = HeldOutCheck(TrainingConfig(demo=DemoScan(radius_um=0.6)))(model)
    assert metrics["held_out_ssim_aligned"] > 0.62
    assert metrics["held_out_phase_rms_aligned"] < 0.12
    assert metrics["held_out_ssim_tilt"] > 0.85
    assert metrics["held_out_phase_rms_tilt"] < 0.10
    # trained for the phase about the lit mean, its patches stitch fairly even unaligned
    assert metrics["held_out_ssim_plain"] > 0.35
