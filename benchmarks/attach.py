"""How long a session takes to attach to a pool that runs as services, and which ports
the services listen on (what a firewall between the hosts must let through).

Starts ``--shares`` ``ptychonn-ophyd pool --consumer-ids`` services on loopback (each
``--per-share`` workers of the pool, ONNX Runtime, one thread each), waits until they
are ready, then attaches a :class:`~ptychonn_ophyd.pool.RemotePool` to them
``--repeats`` times, each time as a new process does (new channels, first status
updates awaited), and prints each time and the median; then every worker's listening
TCP and UDP ports.

    python benchmarks/attach.py --shares 2 --per-share 2 --repeats 10
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from ptychonn_ophyd.loopback import use_loopback

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shares", type=int, default=2)
    parser.add_argument("--per-share", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    use_loopback()
    from ptychonn_ophyd.models.bundled import demo_model_path
    from ptychonn_ophyd.pool import RemotePool
    from ptychonn_ophyd.settings import PoolConfig

    n = args.shares * args.per_share
    prefix = f"attach{os.getpid()}"
    model = demo_model_path()
    folder = Path(tempfile.mkdtemp(prefix="attach-"))
    services = [
        start_share(model, prefix, k, args.per_share, n, folder) for k in range(args.shares)
    ]
    try:
        config = PoolConfig(
            model=model,
            input_channel=f"{prefix}:image",
            output_prefix=prefix,
            n_workers=n,
            attach=True,
            wait_for_input=False,
        )
        times = []
        for _ in range(args.repeats):
            pool = RemotePool(config)
            began = time.perf_counter()
            pool.start(timeout=30)
            times.append(time.perf_counter() - began)
            pids = pool.pids
            pool.stop()
        print(
            f"attach to {n} workers in {args.shares} services: "
            + ", ".join(f"{t * 1e3:.0f}" for t in times)
            + f" ms; median {statistics.median(times) * 1e3:.0f} ms"
        )
        for pid in pids:
            print(f"worker pid {pid} listens on: {listening(pid)}")
        print(f"services (pool parents) listen on: {[listening(s.pid) for s in services]}")
    finally:
        for service in services:
            os.killpg(service.pid, signal.SIGTERM)
        for service in services:
            service.wait(60)


def start_share(model: Path, prefix: str, k: int, per_share: int, n: int, folder: Path):
    ids = ",".join(str(k * per_share + i + 1) for i in range(per_share))
    command = [
        *(sys.executable, "-m", "ptychonn_ophyd", "pool", "--model", str(model)),
        *("--input-channel", f"{prefix}:image", "--output-prefix", prefix),
        *("--workers", str(n), "--consumer-ids", ids, "--no-wait-for-input"),
        *("--backend", "onnxruntime", "--threads", "1", "--log-dir", str(folder / f"s{k}")),
    ]
    service = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        start_new_session=True,
    )  # fmt: skip
    ready = service.stdout.readline()
    if " ready: " not in ready:
        sys.exit(f"attach: the pool service {ids} did not start")
    return service


def listening(pid: int) -> str:
    """The TCP ports ``pid`` listens on and the UDP ports it has bound."""
    ports = set()
    for conn in psutil.Process(pid).net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN:
            ports.add(f"tcp {conn.laddr.port}")
        elif conn.type == 2 and conn.laddr:  # SOCK_DGRAM
            ports.add(f"udp {conn.laddr.port}")
    return ", ".join(sorted(ports))


if __name__ == "__main__":
    main()
