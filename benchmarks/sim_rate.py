"""Frames per second the simulated detector delivers to a PVA monitor in another process.

For each requested rate the simulated areaDetector free-runs for a few seconds while a
separate process monitors the channel, counting the frames it receives and the gaps in
``uniqueId``.  Reported: the rate the server sent at, the rate the monitor received at,
and frames lost.  PV Access stays on loopback.

    python benchmarks/sim_rate.py --rates 1000 5000 10000 0 --seconds 5
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import time
import uuid

from ptychonn_ophyd.loopback import use_loopback


def monitor(channel: str, queue_size: int, after_id: int, ready, stop, results) -> None:
    """Count updates with ``uniqueId > after_id`` on ``channel`` until ``stop`` is set."""
    import pvaccess as pva

    state = {"received": 0, "first": None, "last": None, "t_first": None, "t_last": None}

    def on_update(pv) -> None:
        unique_id = pv["uniqueId"]
        if unique_id <= after_id:  # the value current at connection
            ready.set()
            return
        now = time.perf_counter()
        if state["first"] is None:
            state["first"], state["t_first"] = unique_id, now
        state["received"] += 1
        state["last"], state["t_last"] = unique_id, now
        ready.set()

    pv_channel = pva.Channel(channel)
    request = f"record[queueSize={queue_size}]field(uniqueId,value,dimension,attribute)"
    pv_channel.monitor(on_update, request)
    stop.wait()
    pv_channel.stopMonitor()
    results.put(state)


def measure(
    server, frames, positions, rate: float, seconds: float, queue_size: int
) -> dict[str, float]:
    """Free-run at ``rate`` (0: flat out) for ``seconds`` and count what a monitor got."""
    ctx = mp.get_context("spawn")
    ready, stop, results = ctx.Event(), ctx.Event(), ctx.Queue()
    args = (server.channel, queue_size, server.last_unique_id, ready, stop, results)
    process = ctx.Process(target=monitor, args=args)
    process.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("monitor did not connect")
        before = server.frames_sent
        n_frames = int(rate * seconds) if rate else None
        server.start_free_run(frames, positions, rate, n_frames)
        if not server.wait_free_run(seconds + 5):
            server.stop_free_run()
        sent = server.frames_sent - before
        time.sleep(1.0)
        stop.set()
        state = results.get(timeout=30)
    finally:
        process.join(10)
    received = state["received"]
    span = (state["t_last"] or 0) - (state["t_first"] or 0)
    return {
        "target_hz": rate,
        "sent_hz": server.free_run_rate,
        "received_hz": (received - 1) / span if span > 0 else 0.0,
        "sent": sent,
        "received": received,
        "lost": sent - received,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[1000, 5000, 10000, 0])
    parser.add_argument("--seconds", type=float, default=5.0, help="run length per rate")
    parser.add_argument("--frame-size", type=int, default=128, choices=[128, 516])
    parser.add_argument("--distinct", type=int, default=200, help="distinct frames cycled")
    parser.add_argument(
        "--queue-size", type=int, default=100, help="server-side monitor queue (record[queueSize])"
    )
    args = parser.parse_args()
    use_loopback()

    from ptychonn_ophyd.physics.diffraction import DetectorConfig, PtychoSimulation
    from ptychonn_ophyd.physics.objects import held_out_object
    from ptychonn_ophyd.physics.probe import make_probe
    from ptychonn_ophyd.physics.scan import fermat_spiral
    from ptychonn_ophyd.sim.server import SimDetectorServer

    large = args.frame_size == 516
    detector = DetectorConfig(bin_factor=4 if large else 1, border=2 if large else 0)
    positions = fermat_spiral(1.2, 0.1)[: args.distinct]
    sim = PtychoSimulation(held_out_object(), make_probe(), positions, detector)
    frames = sim.frames()
    channel = f"bench{uuid.uuid4().hex[:8]}:image"
    print(f"{len(frames)} distinct {args.frame_size}x{args.frame_size} int16 frames on {channel}")
    print(f"{'target Hz':>10} {'sent Hz':>10} {'received Hz':>12} {'sent':>8} {'lost':>7}")
    with SimDetectorServer(channel) as server:
        for rate in args.rates:
            r = measure(server, frames, positions, rate, args.seconds, args.queue_size)
            target = f"{rate:.0f}" if rate else "max"
            print(
                f"{target:>10} {r['sent_hz']:10.0f} {r['received_hz']:12.0f} "
                f"{r['sent']:8d} {r['lost']:7d}"
            )


if __name__ == "__main__":
    main()
