"""``ptychonn-ophyd demo``: scan a simulated sample with live inference, end to end."""

from __future__ import annotations

import argparse
from pathlib import Path

from ptychonn_ophyd.cli.options import BACKEND_CHOICES, positive_int
from ptychonn_ophyd.demo import SIZES, DemoConfig, run_demo


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo", help="simulated beamline, pool, scan, catalog, replay", description=__doc__
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=Path("ptychonn-demo"),
        help="folder for the picture, the catalog and the worker logs (default: %(default)s)",
    )
    parser.add_argument(
        "--catalog", help="catalog folder or Tiled URI (default: OUTPUT_DIR/catalog)"
    )
    parser.add_argument(
        "--size",
        choices=list(SIZES),
        default="default",
        help="scan of 121, 625 or 2401 points (default: %(default)s)",
    )
    parser.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default="auto",
        help="inference backend of the workers (default: %(default)s, the GPU where there is one)",
    )
    parser.add_argument(
        "--workers", type=positive_int, default=1, help="worker processes (default: 1)"
    )
    return parser


def run(args: argparse.Namespace) -> int:
    config = DemoConfig(args.output_dir, args.catalog, args.size, args.backend, args.workers)
    for line in run_demo(config).lines():
        print(line)
    return 0
