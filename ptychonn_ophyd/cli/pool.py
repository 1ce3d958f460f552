"""``ptychonn-ophyd pool``: run N streaming inference workers until Ctrl-C or SIGTERM.

Each worker is a stock ``pvapy-hpc-consumer`` running the PtychoNN processor on its
share of the detector frames, publishing ``<prefix>:<k>:output``; a line of frame
accounting is printed every ``--report-period`` seconds.  With ``--consumer-ids`` a
host runs its share of a pool whose workers run on several hosts.  With ``--attach`` it
starts nothing: it finds and checks workers running elsewhere, as the ophyd device
does, and prints their accounting.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from ptychonn_ophyd.cli.options import add_settings_options, positive_float, settings_from_args
from ptychonn_ophyd.errors import ArgsError, PoolStartError, WorkerDiedError
from ptychonn_ophyd.pool import START_TIMEOUT_S, PoolStats, WorkerPool, open_pool
from ptychonn_ophyd.settings import PoolConfig, validated


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "pool", help="run streaming inference workers on a PVA stream", description=__doc__
    )
    add_settings_options(parser, defaults={"input_channel": "ad:image"})
    parser.add_argument(
        "--start-timeout",
        type=positive_float,
        default=START_TIMEOUT_S,
        help="seconds the start waits for every worker to load its model and connect to the "
        "input channel, saying what it waits for meanwhile",
    )
    parser.add_argument(
        "--consumer-ids",
        type=consumer_ids,
        default=None,
        metavar="K,L",
        help="the workers of the --workers in all that this host runs (e.g. 3,4 of 4), "
        "when the pool's workers run on several hosts; default: all of them",
    )
    parser.add_argument("--report-period", type=float, default=5.0, help="seconds")
    parser.add_argument(
        "--runtime",
        type=float,
        default=0.0,
        help="seconds to run once ready (0: until Ctrl-C); the start gives up after as long",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        config = validated(PoolConfig, settings_from_args(args))
        pool = open_pool(config, args.consumer_ids)
    except ArgsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)  # a service manager's stop: stop cleanly
    with pool:
        try:
            pool.start(timeout=_start_timeout(args), progress=_progress)
            print(_describe(pool.facts()), flush=True)
            _watch(pool, args.report_period, args.runtime)
        except (PoolStartError, WorkerDiedError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            pass
        print(_summary(pool.stats()), flush=True)
    return 0


def consumer_ids(text: str) -> tuple[int, ...]:
    """An argparse ``type``: worker ids as ``"3,4"`` or ``"3 4"``."""
    try:
        return tuple(int(k) for k in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of worker ids") from None


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM as Ctrl-C: the workers drain and stop, and the last counts are printed."""
    raise KeyboardInterrupt


def _start_timeout(args: argparse.Namespace) -> float:
    """How long the start may wait: ``--start-timeout``, and never past ``--runtime``."""
    if args.runtime > 0:
        return min(args.start_timeout, args.runtime)
    return args.start_timeout


def _progress(line: str) -> None:
    """Say what the start waits for on stderr; stdout keeps the ready and stats lines."""
    print(line, file=sys.stderr, flush=True)


def _watch(pool: WorkerPool, period: float, runtime: float) -> None:
    end = time.monotonic() + runtime if runtime > 0 else float("inf")
    while time.monotonic() < end:
        time.sleep(min(period, max(end - time.monotonic(), 0.0)))
        pool.check_health()
        print(_summary(pool.stats()), flush=True)


def _describe(facts: dict) -> str:
    gpus = f" on {', '.join(facts['gpu_names'])}" if facts["gpu_names"] else ""
    ids, n = facts["consumer_ids"], facts["n_workers"]
    share = f" ({', '.join(map(str, ids))} of {n})" if len(ids) < n else ""
    hosts = sorted(set(facts["hosts"].values()))
    where = f" attached on {', '.join(hosts)}" if facts["attached"] else ""
    return (
        f"{len(ids)} worker{'s' * (len(ids) != 1)}{share}{where} ready: {facts['engine']}{gpus}, "
        f"model {facts['model']} "
        f"({facts['model_hash']}); {facts['input_channel']} -> "
        f"{', '.join(facts['output_channels'])}"
    )


def _summary(stats: PoolStats) -> str:
    rejected = sum(stats.rejected.values())
    return (
        f"received {stats.received}  inferred {stats.inferred}  dropped {stats.dropped}  "
        f"rejected {rejected}  missed {stats.missed}  queued {stats.queue_depth}  "
        f"published {stats.published}  "
        f"{stats.rate_hz:.0f} frames/s  latency p50 {stats.latency_p50_s * 1e3:.1f} ms  "
        f"p99 {stats.latency_p99_s * 1e3:.1f} ms"
    )
