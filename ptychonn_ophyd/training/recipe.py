"""One training run from recipe to files: the model, its ONNX export and the recipe.

The recipe file (``<preset>_recipe.json``) holds the configuration, seeds, per-epoch
history, held-out metrics, timings and the machine, so the model can be made again with
``ptychonn-ophyd train`` and the numbers in it checked.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ptychonn_ophyd.models import export_onnx_bytes, open_model
from ptychonn_ophyd.models.network import PtychoNN
from ptychonn_ophyd.training.config import TRAIN_OPTIONS, TrainingConfig
from ptychonn_ophyd.training.evaluation import HeldOutCheck, validate
from ptychonn_ophyd.training.fit import fit
from ptychonn_ophyd.training.sampler import FrameSampler

log = logging.getLogger(__name__)


@dataclass
class TrainingResult:
    """What :func:`train` made and measured; ``to_dict`` is the recipe file's content."""

    config: TrainingConfig
    name: str
    metrics: dict[str, float]
    history: list[dict[str, float]]
    files: dict[str, str]
    seconds: float
    machine: dict[str, str]

    def to_dict(self) -> dict:
        return {
            "config": dataclasses.asdict(self.config),
            "metrics": self.metrics,
            "history": self.history,
            "files": self.files,
            "training_seconds": round(self.seconds, 1),
            "machine": self.machine,
            "initial_weights_sha256": initial_weights_hash(self.config),
            "initial_weights_recipe": initial_weights_recipe(self.config),
            "command": command_line(self.config, self.name),
        }


def train(
    config: TrainingConfig,
    out_dir: str | Path | None = None,
    name: str | None = None,
    progress: bool = True,
) -> TrainingResult:
    """Train ``config.spec`` and judge it; with ``out_dir``, write the model and recipe.

    Files written to ``out_dir``: ``<name>.pth`` (a PtychoNN state_dict),
    ``<name>.onnx`` (dynamic batch) and ``<name>_recipe.json``; ``name`` defaults to
    the preset.
    """
    name = name or config.preset
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    device = pick_device(config.device)
    sampler = FrameSampler(config, device, config.seed)
    validation = FrameSampler(config, device, config.seed + 1).draw(config.n_validation_frames)
    held_out = HeldOutCheck(config)

    def on_epoch(model: PtychoNN, metrics: dict[str, float]) -> None:
        metrics.update(validate(model, validation))
        last = metrics["epoch"] == config.epochs
        if last or (config.check_every and metrics["epoch"] % config.check_every == 0):
            metrics.update(held_out(model))
        log.info(", ".join(f"{k} {_short(v)}" for k, v in metrics.items()))

    model, history = fit(config, sampler, validation, on_epoch, progress)
    files = save(model, Path(out_dir), name) if out_dir is not None else {}
    seconds = time.perf_counter() - start
    result = TrainingResult(
        config, name, dict(history[-1]), history, files, seconds, machine(device)
    )
    if out_dir is not None:
        recipe = Path(out_dir) / f"{name}_recipe.json"
        recipe.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        result.files["recipe"] = recipe.name
    return result


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def save(model: PtychoNN, out_dir: Path, name: str) -> dict[str, str]:
    """Write ``<name>.pth`` (float32 state_dict on the CPU) and ``<name>.onnx``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    pth = out_dir / f"{name}.pth"
    torch.save(state, pth)
    onnx = out_dir / f"{name}.onnx"
    onnx.write_bytes(export_onnx_bytes(model.spec, {k: v.numpy() for k, v in state.items()}))
    return {"pth": pth.name, "onnx": onnx.name}


def machine(device: torch.device) -> dict[str, str]:
    """Where the training ran, for the recipe."""
    described = {
        "device": str(device),
        "cpu_count": str(os.cpu_count()),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        described["gpu"] = torch.cuda.get_device_name(device)
    return described


def initial_weights_hash(config: TrainingConfig) -> str:
    """SHA-256 of the checkpoint training started from (``""`` for fresh weights)."""
    return open_model(config.initial_weights).sha256 if config.initial_weights else ""


def initial_weights_recipe(config: TrainingConfig) -> dict | None:
    """The recipe written beside the checkpoint training started from, so that a chain
    of runs is described whole; ``None`` for fresh weights or a checkpoint without one."""
    if not config.initial_weights:
        return None
    weights = Path(config.initial_weights)
    recipe = weights.with_name(f"{weights.stem}_recipe.json")
    try:
        return json.loads(recipe.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.warning("the recipe is left out: %s is unreadable (%s)", recipe, err)
        return None


def command_line(config: TrainingConfig, name: str) -> str:
    """The ``ptychonn-ophyd train`` command that makes this recipe again: every option,
    but those left empty (no initial weights, no contrast term) as by default."""
    defaults = TrainingConfig()
    parts = [f"ptychonn-ophyd train --out DIR --name {name}"]
    for flag, (field, _) in TRAIN_OPTIONS.items():
        value = getattr(config, field)
        if value or value != getattr(defaults, field):
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def _short(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
