"""How soon the workers hear a detector again after it stops and comes back.

    python benchmarks/reconnect.py --outages 10 20 --workers 2 [--no-announce]

A simulated detector free-runs at ``--rate`` Hz into a pool of workers, stops for each
outage in turn and starts again on the same channel (its uniqueIds from a new base).
For each worker it prints the seconds from the source's return to the send time of the
first frame the worker received after it (frames sent before were missed by it) and to
that frame's result reaching this process.  ``--no-announce`` starts the source without
telling this host's PV Access clients (:func:`ptychonn_ophyd.loopback.announce_server`),
so the workers find it only at their search back-off: what a restart cost before.

``--network`` keeps the EPICS address settings of the environment instead of loopback's:
with pvAccess's defaults, in a private network namespace with a subnet of its own,
the server's own broadcast beacons stand for an IOC's, as at a beamline (nothing leaves
the namespace)::

    unshare -rn sh -c 'ip link set lo up; ip link add v0 type veth peer name v1;
      ip addr add 10.9.9.1/24 brd + dev v0; ip link set v0 up; ip link set v1 up;
      env -u EPICS_PVA_ADDR_LIST python benchmarks/reconnect.py --network --no-announce'
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid

import numpy as np

from ptychonn_ophyd.loopback import use_loopback

FRAMES_BEFORE_STOP = 40
"""Results per worker to see before each outage, so every worker is receiving."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outages", type=float, nargs="+", default=[10.0, 20.0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rate", type=float, default=40.0, help="frames per second")
    parser.add_argument("--no-announce", dest="announce", action="store_false")
    parser.add_argument("--deadline", type=float, default=60.0, help="seconds to wait")
    parser.add_argument("--network", action="store_true", help="not loopback: see above")
    args = parser.parse_args()
    if not args.network:
        use_loopback()
    from ptychonn_ophyd.models.bundled import demo_model_path
    from ptychonn_ophyd.pool import ConsumerPool
    from ptychonn_ophyd.settings import PoolConfig
    from ptychonn_ophyd.sim.server import SimDetectorServer
    from ptychonn_ophyd.store.monitor import ResultMonitor

    prefix = f"reconnect{uuid.uuid4().hex[:8]}"
    channel = f"{prefix}:image"
    frames = np.random.default_rng(0).poisson(5, (8, 128, 128)).astype(np.int16)
    positions = np.zeros((len(frames), 2))
    config = PoolConfig(
        model=demo_model_path(),
        backend="onnxruntime",
        threads=1,
        n_workers=args.workers,
        input_channel=channel,
        output_prefix=prefix,
        distributor_updates=1,
    )
    firsts: dict[tuple[int, int], tuple[float, float]] = {}
    counts: dict[int, int] = {}
    lock = threading.Lock()
    base = [1]

    def on_batch(batch) -> None:
        ids = batch.unique_ids
        with lock:
            counts[batch.consumer_id] = counts.get(batch.consumer_id, 0) + len(batch)
            after = np.flatnonzero(ids >= base[0])
            if after.size:
                sent = float(batch.frames["frameTime"][after[0]])
                firsts.setdefault((base[0], batch.consumer_id), (sent, time.time()))

    def wait(condition, what: str) -> None:
        deadline = time.monotonic() + args.deadline
        while not condition():
            if time.monotonic() > deadline:
                raise SystemExit(f"no {what} in {args.deadline:g} s")
            time.sleep(0.01)

    workers = range(1, args.workers + 1)
    source = SimDetectorServer(channel, announce=args.announce).start()
    pool = ConsumerPool(config)
    monitor = None
    try:
        pool.start(timeout=120)
        monitor = ResultMonitor(pool.batch_channels, on_batch)
        monitor.start()
        for k, outage in enumerate(args.outages):
            source.start_free_run(frames, positions, args.rate)
            seen = dict(counts)
            wait(
                lambda s=seen: all(
                    counts.get(w, 0) >= s.get(w, 0) + FRAMES_BEFORE_STOP for w in workers
                ),
                "results before the outage",
            )
            source.stop()
            time.sleep(outage)
            base[0] = (k + 1) * 1_000_000
            source = SimDetectorServer(channel, base[0], announce=args.announce).start()
            back = time.time()
            source.start_free_run(frames, positions, args.rate)
            wait(lambda: all((base[0], w) in firsts for w in workers), "frame after the return")
            source.stop_free_run()
            delays = [[t - back for t in firsts[base[0], w]] for w in workers]
            sent = ", ".join(
                f"worker {w} {frame:.2f} s (result {result:.2f} s)"
                for w, (frame, result) in zip(workers, delays, strict=True)
            )
            mode = "announced" if args.announce else "not announced"
            print(
                f"outage {outage:g} s, {mode}: first frame received was sent at {sent}", flush=True
            )
    finally:
        source.stop()
        pool.stop()
        if monitor is not None:
            monitor.stop()


if __name__ == "__main__":
    main()
