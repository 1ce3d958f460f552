"""Command-line options shared by several subcommands."""

from __future__ import annotations

import argparse
from typing import get_args

from ..engines import BACKENDS, EngineConfig, Precision
from ..preprocess import PreprocessConfig

BACKEND_CHOICES = ["auto", *BACKENDS]
PRECISION_CHOICES = list(get_args(Precision))


def add_backend_options(parser: argparse.ArgumentParser) -> None:
    """``--backend`` and ``--precision``."""
    parser.add_argument("--backend", default="auto", choices=BACKEND_CHOICES)
    parser.add_argument("--precision", default="fp32", choices=PRECISION_CHOICES)


def add_engine_options(parser: argparse.ArgumentParser, max_batch: int = 8) -> None:
    """``--backend``, ``--precision``, ``--batch``, ``--device``, ``--threads``."""
    add_backend_options(parser)
    parser.add_argument("--batch", type=int, default=max_batch, help="maximum batch size")
    parser.add_argument("--device", default="auto", help="cuda:N, cpu or auto")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime CPU threads")


def engine_config(args: argparse.Namespace, **overrides: object) -> EngineConfig:
    settings = dict(
        backend=args.backend,
        precision=args.precision,
        max_batch=args.batch,
        device=args.device,
        threads=args.threads,
    )
    return EngineConfig(**{**settings, **overrides})


def add_preprocess_options(parser: argparse.ArgumentParser) -> None:
    """``--crop``, ``--bin``, ``--threshold``."""
    parser.add_argument(
        "--crop",
        type=int,
        nargs="+",
        default=[0],
        metavar="PX",
        help="pixels cropped from every side, or TOP BOTTOM LEFT RIGHT",
    )
    parser.add_argument("--bin", type=int, default=1, help="mean-bin N x N pixels")
    parser.add_argument("--threshold", type=float, default=None, help="counts below become 0")


def preprocess_config(args: argparse.Namespace) -> PreprocessConfig:
    crop = args.crop[0] if len(args.crop) == 1 else tuple(args.crop)
    return PreprocessConfig(crop=crop, bin=args.bin, threshold=args.threshold)
