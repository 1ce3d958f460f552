"""The ``ptychonn-ophyd`` command: one subcommand per module in this package.

Each module ``cli/<name>.py`` exposes ``add_parser(subparsers)`` and ``run(args) -> int``.
A :class:`~ptychonn_ophyd.errors.PtychoNNError` ends any of them with its message as one
``error:`` line and exit status 2 (as argparse's own errors), Ctrl-C with one
``interrupted`` line and 130; ``-v`` prints the traceback too.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys

from ptychonn_ophyd.errors import PtychoNNError

log = logging.getLogger(__name__)

ERROR_STATUS = 2
INTERRUPTED_STATUS = 130

COMMANDS = ["demo", "infer", "export", "bench", "pool", "sim", "train", "replay"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ptychonn-ophyd", description="Live PtychoNN inference for Bluesky beamlines."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"{__name__}.{name}")
        command = module.add_parser(subparsers)
        command.set_defaults(handler=module.run)
        command.description = plain_text(command.description or "")
        command.formatter_class = argparse.RawDescriptionHelpFormatter  # keep paragraphs
    return parser


_ROLE = re.compile(r":\w+:`~?(?:([^`<]*?)\s*<[^`>]*>|([^`]*))`")


def plain_text(docstring: str) -> str:
    """A module docstring as ``--help`` shows it: without reStructuredText markup
    (double backquotes, and roles such as ``:class:`~a.B``` shown as their last name)."""
    plain = _ROLE.sub(lambda m: m[1] or m[2].rsplit(".", 1)[-1], docstring)
    return plain.replace("``", "")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        return args.handler(args)
    except PtychoNNError as error:
        return _ended(args, f"ptychonn-ophyd {args.command}: error: {error}", ERROR_STATUS)
    except KeyboardInterrupt as interrupt:
        said = f": {interrupt}" if str(interrupt) else ""
        return _ended(args, f"ptychonn-ophyd {args.command}: interrupted{said}", INTERRUPTED_STATUS)


def _ended(args: argparse.Namespace, line: str, status: int) -> int:
    if args.verbose:
        log.exception("ptychonn-ophyd %s", args.command)
    print(line, file=sys.stderr)
    return status


def configure_logging(verbose: bool) -> None:
    """Warnings from everything (bluesky's errors only, without ``-v``); with ``-v`` this
    project's INFO lines too.

    Only ``ptychonn_ophyd`` loggers get INFO: the libraries below it (Tiled, alembic,
    httpx, numexpr) log at INFO what a user cannot act on.
    """
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if verbose:
        logging.getLogger("ptychonn_ophyd").setLevel(logging.INFO)
    else:  # bluesky warns of its tracing and of each pause, which a command cannot act on
        logging.getLogger("bluesky").setLevel(logging.ERROR)
