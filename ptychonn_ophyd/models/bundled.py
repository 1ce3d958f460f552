"""The demo model that ships inside the package, trained on simulated data."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Literal

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


Stitching = Literal["plain", "aligned", "tilt"]
"""How a training recipe's held-out check stitched the patches: a plain average, the
live view's mosaic (offsets matched in arrival order), or each patch's tilt from its
frame with all offsets solved at once (replay's ``--probe`` path)."""


def held_out_keys(stitching: Stitching) -> tuple[str, str]:
    """A recipe's metric names of the held-out SSIM and phase rms for ``stitching``."""
    return f"held_out_ssim_{stitching}", f"held_out_phase_rms_{stitching}"


def recorded_accuracy(model: str | Path, stitching: Stitching = "aligned") -> str:
    """The held-out accuracy that ``model``'s training recipe records for ``stitching``,
    in words, or "" (no recipe, or one that did not judge that stitching).

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
        ssim, rms = (metrics[key] for key in held_out_keys(stitching))
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    return f"the model's held-out test in training: SSIM {ssim:.2f}, phase rms {rms:.2f} rad"
