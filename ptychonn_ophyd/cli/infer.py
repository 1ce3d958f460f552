"""``ptychonn-ophyd infer``: offline inference on a saved stack of frames."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from ptychonn_ophyd.cli.options import (
    add_engine_options,
    add_preprocess_options,
    engine_config,
    preprocess_config,
)
from ptychonn_ophyd.engines import create_engine
from ptychonn_ophyd.errors import BackendUnavailable, FrameRejected, ModelError
from ptychonn_ophyd.preprocess import Preprocessor


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "infer", help="run a model on frames saved as .npy", description=__doc__
    )
    parser.add_argument("--model", required=True, help=".pth or .onnx PtychoNN model")
    parser.add_argument("--input", required=True, type=Path, help=".npy stack [n, H, W]")
    parser.add_argument("--output", required=True, type=Path, help=".npz to write")
    add_engine_options(parser)
    add_preprocess_options(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        _check_output(args.output)
        frames = _load_frames(args.input)
        engine = create_engine(args.model, engine_config(args))
        preprocess = Preprocessor(preprocess_config(args), engine.input_shape)
        inputs = np.empty((len(frames), *engine.input_shape), np.float32)
        for frame, slot in zip(frames, inputs, strict=True):
            preprocess.into(frame, slot)
    except (ModelError, BackendUnavailable, FrameRejected, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    prediction = engine.infer_all(inputs)
    elapsed = time.perf_counter() - start
    arrays = {"phase": prediction.phase}
    if prediction.amplitude is not None:
        arrays["amplitude"] = prediction.amplitude
    np.savez(args.output, **arrays)
    print(
        f"{len(frames)} frames -> {args.output} ({', '.join(arrays)}) with "
        f"{engine.description} [{engine.selection_reason}]: {len(frames) / elapsed:.0f} frames/s"
    )
    return 0


def _check_output(path: Path) -> None:
    """Refuse an output the results could not be written to, before any inference runs."""
    folder = path.parent
    if not folder.is_dir():
        raise ValueError(f"{path}: cannot write the output, folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{path}: cannot write the output, folder {folder} is not writable")
    if path.is_dir():
        raise ValueError(f"{path}: cannot write the output, it is a folder")


def _load_frames(path: Path) -> np.ndarray:
    try:
        frames = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read as a .npy array ({err})") from None
    if frames.ndim == 2:
        frames = frames[None]
    if frames.ndim != 3:
        raise ValueError(f"{path}: expected frames [n, H, W], got shape {frames.shape}")
    return frames
