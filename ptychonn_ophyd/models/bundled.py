"""The demo model that ships inside the package, trained on simulated data."""

from __future__ import annotations

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
