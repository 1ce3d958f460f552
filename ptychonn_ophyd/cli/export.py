"""``ptychonn-ophyd export``: a PyTorch checkpoint to ONNX with a dynamic batch."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ptychonn_ophyd.errors import ModelError
from ptychonn_ophyd.models import export_onnx


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("export", help="export .pth to ONNX", description=__doc__)
    parser.add_argument("source", type=Path, help="PtychoNN .pth state_dict")
    parser.add_argument("destination", type=Path, help="ONNX file to write")
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        path = export_onnx(args.source, args.destination)
    except ModelError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported {args.source} -> {path} (input 'frames' [batch, 1, H, W])")
    return 0
