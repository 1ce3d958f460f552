"""``ptychonn-ophyd bench engines``: frames/s and latency of every available backend."""

from __future__ import annotations

import argparse
import sys

from ptychonn_ophyd.cli.options import add_engine_options, engine_config
from ptychonn_ophyd.engines import BACKENDS, create_engine, unavailable_reason
from ptychonn_ophyd.engines.benchmark import DEFAULT_BATCHES, bench_engine, format_table
from ptychonn_ophyd.errors import BackendUnavailable, ModelError
from ptychonn_ophyd.models.bundled import demo_model_path


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("bench", help="benchmarks", description=__doc__)
    parser.add_argument("what", choices=["engines"], help="what to measure")
    parser.add_argument("--model", help="model file (default: the bundled demo model)")
    parser.add_argument("--batches", type=int, nargs="+", default=list(DEFAULT_BATCHES))
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per batch size")
    add_engine_options(parser)
    parser.set_defaults(backend="all")
    return parser


def run(args: argparse.Namespace) -> int:
    backends = BACKENDS if args.backend in ("all", "auto") else [args.backend]
    results = []
    for backend in backends:
        reason = unavailable_reason(backend)
        if reason:
            print(f"skipped {backend}: {reason}")
            continue
        try:
            engine = create_engine(
                args.model or demo_model_path(),
                engine_config(args, backend=backend, max_batch=max(args.batches)),
            )
        except (BackendUnavailable, ModelError) as err:
            print(f"skipped {backend}: {err}")
            continue
        with engine:
            results += [bench_engine(engine, b, args.seconds) for b in args.batches]
    if not results:
        print("error: no backend could run", file=sys.stderr)
        return 2
    print(format_table(results))
    return 0
