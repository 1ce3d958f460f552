"""The demo model that ships inside the package, trained on simulated data."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

from ptychonn_ophyd.errors import ModelError

DEMO_MODEL = "ptychonn_demo_small_phase.onnx"


def demo_model_path(name: str = DEMO_MODEL) -> Path:
    """Path of a model file shipped in ``ptychonn_ophyd/data``."""
    path = Path(str(files("ptychonn_ophyd").joinpath("data", name)))
    if not path.is_file():
        raise ModelError(path, "the bundled demo model is missing from this installation")
    return path


DEMO_RECIPE = f"{Path(DEMO_MODEL).stem}_recipe.json"
"""How the bundled demo model was made (the recipe ``ptychonn-ophyd train`` wrote with
it), and what it scored on the held-out object."""


def recorded_accuracy(model: str | Path) -> str:
    """The held-out accuracy that ``model``'s training recipe records, in words, or "".

    ``ptychonn-ophyd train`` writes ``<name>_recipe.json`` beside ``<name>.onnx``; the
    bundled demo model's recipe is :data:`DEMO_RECIPE`.
    """
    path = Path(model)
    if not path.name:
        return ""
    recipe = path.with_name(f"{path.stem}_recipe.json")
    if path.stem == Path(DEMO_MODEL).stem:
        recipe = Path(str(files("ptychonn_ophyd").joinpath("data", DEMO_RECIPE)))
    try:
        metrics = json.loads(recipe.read_text())["metrics"]
        ssim, rms = metrics["held_out_ssim_aligned"], metrics["held_out_phase_rms_aligned"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    return f"trained to held-out SSIM {ssim:.2f}, phase rms {rms:.2f} rad"
