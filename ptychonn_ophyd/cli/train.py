"""``ptychonn-ophyd train``: train a PtychoNN model on simulated ptychography.

Simulates Poisson-noisy diffraction frames of random views of the training images,
trains the chosen small model (GPU when present), reports the validation phase error
and the held-out demo reconstruction, and writes ``<model>.pth``, ``<model>.onnx`` and
``<model>_recipe.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ptychonn_ophyd.training import PRESETS_TRAINED, TrainingConfig, train


def add_parser(subparsers) -> argparse.ArgumentParser:
    defaults = TrainingConfig()
    parser = subparsers.add_parser(
        "train", help="train PtychoNN on simulated frames", description=__doc__
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the model files")
    parser.add_argument("--frames", type=int, default=defaults.n_frames, help="training frames")
    parser.add_argument("--validation-frames", type=int, default=defaults.n_validation_frames)
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--model", choices=PRESETS_TRAINED, default=defaults.preset)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument(
        "--lr", type=float, default=defaults.learning_rate, help="peak Adam learning rate"
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--workers", type=int, default=None, help="simulation processes (default: one per CPU)"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        config = TrainingConfig(
            preset=args.model,
            n_frames=args.frames,
            n_validation_frames=args.validation_frames,
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.lr,
            seed=args.seed,
            device=args.device,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    logging.getLogger("ptychonn_ophyd.training").setLevel(logging.INFO)
    result = train(config, args.out, workers=args.workers)
    print(json.dumps(result.metrics, indent=2))
    files = ", ".join(str(args.out / name) for name in result.files.values())
    print(f"trained on {result.device} in {result.seconds:.0f} s; wrote {files}")
    return 0
