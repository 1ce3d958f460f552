"""Command-line options shared by several subcommands."""

from __future__ import annotations

import argparse
import typing
from pathlib import Path
from typing import get_args

from ptychonn_ophyd.engines import Backend, EngineConfig, Precision
from ptychonn_ophyd.preprocess import PreprocessConfig
from ptychonn_ophyd.settings import PoolConfig

BACKEND_CHOICES = list(get_args(Backend))
PRECISION_CHOICES = list(get_args(Precision))

COMPOSITE = {"preprocess": "--crop, --bin, --threshold", "outputs": "--amplitude"}
"""Settings given by options of their own (see :func:`settings_from_args`)."""


def positive_int(text: str) -> int:
    """An argparse ``type``: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is less than 1")
    return value


def positive_float(text: str) -> float:
    """An argparse ``type``: a number greater than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value} is not greater than 0")
    return value


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


def add_settings_options(
    parser: argparse.ArgumentParser, defaults: dict[str, object] | None = None
) -> None:
    """One option per :class:`~ptychonn_ophyd.settings.PoolConfig` field, from its schema.

    The flag is the field's name with dashes (or its ``flag``), the help its
    description; ``defaults`` overrides a field's default for this command.
    """
    defaults = defaults or {}
    for name, field in PoolConfig.model_fields.items():
        if name in COMPOSITE:
            continue
        extra = field.json_schema_extra or {}
        flag = "--" + str(extra.get("flag", name)).replace("_", "-")
        default = defaults.get(name, None if field.is_required() else field.default)
        kind, choices = _argument_type(field.annotation)
        options: dict = {"dest": name, "help": field.description, "default": default}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options.update(type=kind, choices=choices)
        if field.is_required() and name not in defaults:
            options["required"] = True
        parser.add_argument(flag, **options)
    parser.add_argument("--amplitude", action="store_true", help="also publish amplitude")
    add_preprocess_options(parser)


def settings_from_args(args: argparse.Namespace) -> dict[str, object]:
    """The :class:`~ptychonn_ophyd.settings.PoolConfig` fields that ``args`` give."""
    settings = {
        name: getattr(args, name) for name in PoolConfig.model_fields if name not in COMPOSITE
    }
    settings["preprocess"] = preprocess_config(args)
    settings["outputs"] = ("phase", "amplitude") if args.amplitude else ("phase",)
    return settings


def _argument_type(annotation: object) -> tuple[type, list[str] | None]:
    """The argparse ``type`` (and ``choices``) for a settings annotation."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return str, [str(a) for a in args]
    if annotation in (int, float, bool, str, Path):
        return annotation, None
    if len(args) == 1:  # Optional[X]
        return _argument_type(args[0])
    return str, None  # unions such as gpus: validated by the schema
