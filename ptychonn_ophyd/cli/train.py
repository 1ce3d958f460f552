"""``ptychonn-ophyd train``: train a PtychoNN model on simulated ptychography.

Draws fresh Poisson-noisy diffraction frames of random objects on the training device
(a GPU when present), trains the chosen small model with a progress bar, reports each
epoch's training and validation loss and, at the end, the held-out demo scan's SSIM and
phase error, and writes ``<model>.pth``, ``<model>.onnx`` and ``<model>_recipe.json``
into ``--out``.  The defaults are the first of the shipped demo model's two runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ptychonn_ophyd.training import PRESETS_TRAINED, TRAIN_OPTIONS, TrainingConfig


def add_parser(subparsers) -> argparse.ArgumentParser:
    defaults = TrainingConfig()
    parser = subparsers.add_parser(
        "train", help="train PtychoNN on simulated frames", description=__doc__
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the model files")
    parser.add_argument(
        "--name", default=None, help="file name stem: NAME.pth, NAME.onnx, NAME_recipe.json"
    )
    for flag, (name, text) in TRAIN_OPTIONS.items():
        default = getattr(defaults, name)
        choices = {"preset": PRESETS_TRAINED, "device": ("auto", "cpu", "cuda")}.get(name)
        parser.add_argument(
            flag,
            dest=name,
            type=type(default),
            default=default,
            choices=choices,
            help=text if "default" in text else f"{text} (default {default})",
        )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def training_config(args: argparse.Namespace) -> TrainingConfig:
    """The recipe the parsed options ask for (``ValueError`` names a bad one)."""
    return TrainingConfig(**{name: getattr(args, name) for name, _ in TRAIN_OPTIONS.values()})


def run(args: argparse.Namespace) -> int:
    try:
        config = training_config(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        from ptychonn_ophyd.training.recipe import train
    except ImportError as err:
        print(
            f"error: training needs PyTorch (pip install 'ptychonn-ophyd[torch]'): {err}",
            file=sys.stderr,
        )
        return 2
    logging.getLogger("ptychonn_ophyd.training").setLevel(logging.INFO)
    result = train(config, args.out, args.name, progress=not args.quiet)
    print(json.dumps(result.metrics, indent=2))
    files = ", ".join(str(args.out / name) for name in result.files.values())
    print(f"trained on {result.machine['device']} in {result.seconds:.0f} s; wrote {files}")
    return 0
