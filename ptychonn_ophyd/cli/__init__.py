"""The ``ptychonn-ophyd`` command: one subcommand per module in this package.

Each module ``cli/<name>.py`` exposes ``add_parser(subparsers)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import logging

COMMANDS = ["demo", "infer", "export", "bench", "pool", "sim", "train", "replay"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ptychonn-ophyd", description="Live PtychoNN inference for Bluesky beamlines."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"{__name__}.{name}")
        module.add_parser(subparsers).set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    return args.handler(args)


def configure_logging(verbose: bool) -> None:
    """Warnings from everything; with ``-v`` this project's INFO lines too.

    Only ``ptychonn_ophyd`` loggers get INFO: the libraries below it (Tiled, alembic,
    httpx, numexpr) log at INFO what a user cannot act on.
    """
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if verbose:
        logging.getLogger("ptychonn_ophyd").setLevel(logging.INFO)
