"""``ptychonn-ophyd replay``: stitch a run's inference stream from the catalog into a PNG."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "replay", help="stitch a run from the catalog into a PNG", description=__doc__
    )
    parser.add_argument("uid", help="run uid, its first characters, a scan id, or -1 (latest)")
    parser.add_argument(
        "--catalog",
        help="catalog folder or Tiled URI (default: TILED_URI, PTYCHONN_CATALOG, or "
        "~/.local/share/ptychonn-ophyd/catalog)",
    )
    parser.add_argument("-o", "--output", type=Path, help="PNG to write")
    parser.add_argument(
        "--pixel-size", type=float, help="object pixel size in µm (default: from the run)"
    )
    parser.add_argument("--positions", action="store_true", help="mark the scan positions")
    parser.add_argument(
        "--probe",
        type=Path,
        help="the probe (complex, numpy .npy) the frames were taken with: give each patch "
        "the tilt its frame's centre of mass says (needs a run that recorded its frames' "
        "statistics)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    from ptychonn_ophyd.analysis.replay import replay
    from ptychonn_ophyd.physics.probe import load_probe

    try:
        probe = load_probe(args.probe) if args.probe else None
        path = replay(
            args.uid,
            args.catalog,
            args.output,
            args.pixel_size,
            positions=args.positions,
            probe=probe,
        )
    except (LookupError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
