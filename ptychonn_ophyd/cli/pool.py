"""``ptychonn-ophyd pool``: run N streaming inference workers until Ctrl-C.

Each worker is a stock ``pvapy-hpc-consumer`` running the PtychoNN processor on its
share of the detector frames, publishing ``<prefix>:<k>:output``; a line of frame
accounting is printed every ``--report-period`` seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from pydantic import ValidationError

from ..pool import ConsumerPool, PoolConfig, PoolStartError, PoolStats, WorkerDiedError
from .options import add_backend_options, add_preprocess_options, preprocess_config


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "pool", help="run streaming inference workers on a PVA stream", description=__doc__
    )
    parser.add_argument("--model", required=True, type=Path, help=".onnx or .pth model")
    parser.add_argument("--input-channel", default="ad:image", help="detector NTNDArray channel")
    parser.add_argument("--output-prefix", default="inference", help="<prefix>:<k>:output")
    parser.add_argument("--workers", type=int, default=1, help="consumer processes")
    add_backend_options(parser)
    parser.add_argument(
        "--gpus", default="auto", help='"auto" or comma-separated GPU indices, dealt round-robin'
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batch-timeout", type=float, default=0.005, help="seconds")
    parser.add_argument("--distributor-updates", type=int, default=8)
    parser.add_argument("--amplitude", action="store_true", help="also publish amplitude")
    parser.add_argument("--warmup-queue-size", type=int, default=4096, help="frames")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime CPU threads")
    parser.add_argument("--server-queue-size", type=int, default=100)
    parser.add_argument("--log-dir", type=Path, default=None, help="worker-<k>.log files")
    parser.add_argument("--start-timeout", type=float, default=300.0, help="seconds")
    parser.add_argument("--report-period", type=float, default=5.0, help="seconds")
    parser.add_argument("--runtime", type=float, default=0.0, help="seconds; 0: until Ctrl-C")
    add_preprocess_options(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        config = PoolConfig(
            model=args.model,
            input_channel=args.input_channel,
            output_prefix=args.output_prefix,
            n_workers=args.workers,
            backend=args.backend,
            precision=args.precision,
            gpus=_gpus(args.gpus),
            batch_size=args.batch_size,
            batch_timeout=args.batch_timeout,
            preprocess=preprocess_config(args),
            distributor_updates=args.distributor_updates,
            outputs=("phase", "amplitude") if args.amplitude else ("phase",),
            warmup_queue_size=args.warmup_queue_size,
            threads=args.threads,
            server_queue_size=args.server_queue_size,
            log_dir=args.log_dir,
        )
    except (ValidationError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with ConsumerPool(config) as pool:
        try:
            pool.start(timeout=args.start_timeout)
            print(_describe(pool.facts()), flush=True)
            _watch(pool, args.report_period, args.runtime)
        except (PoolStartError, WorkerDiedError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            pass
        print(_summary(pool.stats()), flush=True)
    return 0


def _gpus(text: str) -> str | tuple[int, ...]:
    if text == "auto":
        return "auto"
    return tuple(int(part) for part in text.split(","))


def _watch(pool: ConsumerPool, period: float, runtime: float) -> None:
    end = time.monotonic() + runtime if runtime > 0 else float("inf")
    while time.monotonic() < end:
        time.sleep(min(period, max(end - time.monotonic(), 0.0)))
        pool.check_health()
        print(_summary(pool.stats()), flush=True)


def _describe(facts: dict) -> str:
    gpus = f" on {', '.join(facts['gpu_names'])}" if facts["gpu_names"] else ""
    return (
        f"{facts['n_workers']} workers ready: {facts['engine']}{gpus}, model {facts['model']} "
        f"({facts['model_hash']}); {facts['input_channel']} -> "
        f"{', '.join(facts['output_channels'])}"
    )


def _summary(stats: PoolStats) -> str:
    rejected = sum(stats.rejected.values())
    return (
        f"received {stats.received}  inferred {stats.inferred}  dropped {stats.dropped}  "
        f"rejected {rejected}  missed {stats.missed}  queued {stats.queue_depth}  "
        f"{stats.rate_hz:.0f} frames/s  latency p50 {stats.latency_p50_s * 1e3:.1f} ms  "
        f"p99 {stats.latency_p99_s * 1e3:.1f} ms"
    )
