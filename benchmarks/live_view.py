"""What the live mosaic costs per frame and the highest result rate it keeps.

A :class:`~ptychonn_ophyd.session.live_view.LiveView` (the PVA channel on loopback)
stitches 128x128 float32 results with their frames' moments on a grid scan, with the
demo's probe (``--stitching solved``: each patch its frame's tilt, offsets solved over
the scan) or with its window only (``--stitching ordered``: each patch matched to the
ones before it):

1. ``adding alone`` (with the probe): ``SolvedMosaic.add`` over the results, given as
   the stitching thread drains them (up to its ``BATCH`` rows a call, in the workers'
   batches);
2. ``ceiling``: all results queued at once; the time until the queue is empty (the
   stitching thread's cost per frame, its previews included: a preview adds what
   arrives between its solver's steps), the pictures shown meanwhile, then
   ``finish()`` (the final solve) timed apart;
3. for each ``--rates``: a producer thread calls ``take()`` with batches of ``BATCH``
   rows at that rate of frames (as the result monitor's pvapy thread does) for
   ``--seconds``; reported: the rate reached, the producer's time per frame in
   ``take()``, the queue's largest backlog (in batches), the process's CPU over the
   trial in cores, the pictures shown during it (and the longest time without a new
   one), and how long ``finish()`` (the final solve) took after the last result.
   Kept: every frame in the mosaic and no backlog left when the last result came (the
   queue held less than a second of results).

    python benchmarks/live_view.py --rates 5000 10000 20000 40000 --seconds 5
"""

from __future__ import annotations

import argparse
import threading
import time
import uuid

import numpy as np

from ptychonn_ophyd.analysis.solved_mosaic import SolvedMosaic
from ptychonn_ophyd.loopback import use_loopback
from ptychonn_ophyd.physics.probe import make_probe, probe_weight
from ptychonn_ophyd.run_schema import INPUT_MOMENTS
from ptychonn_ophyd.session.live_view import BATCH as DRAINED_ROWS
from ptychonn_ophyd.session.live_view import LiveView

PIXEL_UM = 0.01
STEP_UM = 0.05


BATCH = 8
"""Rows a ``take()`` brings, as one worker batch does."""
DRAINED = DRAINED_ROWS // BATCH
"""Batches the stitching thread adds in one call at most."""


DISTINCT = 2048
"""Distinct batches of images at most (1 GiB): the results of a long trial repeat them,
each still far larger than the caches, so that every patch is read from memory as a
freshly received one is."""


def results(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``n`` rows on a snake-free square grid, random phase (16 distinct patches in
    :data:`DISTINCT` batch arrays) and moments, in batches of :data:`BATCH`."""
    side = int(np.ceil(np.sqrt(n)))
    rng = np.random.default_rng(seed)
    patches = rng.normal(0, 0.3, (16, 128, 128)).astype(np.float32)
    images = [patches[rng.integers(0, 16, BATCH)] for _ in range(min(DISTINCT, -(-n // BATCH)))]
    index = np.arange(n)
    row, col = np.divmod(index, side)
    batches = []
    for start in range(0, n, BATCH):
        rows = index[start : start + BATCH]
        total, x, y = rng.uniform(0.9e6, 1.1e6, len(rows)), *rng.normal(64, 0.5, (2, len(rows)))
        batches.append(
            {
                "phase": images[(start // BATCH) % len(images)][: len(rows)],
                "x": (col[rows] - side / 2) * STEP_UM,
                "y": (row[rows] - side / 2) * STEP_UM,
                **dict(zip(INPUT_MOMENTS, (total, x, y), strict=True)),
            }
        )
    return batches


def new_run(live: LiveView, prefix: str) -> None:
    live.begin(uuid.uuid4().hex, PIXEL_UM, (128, 128), amplitude=False)
    live.publish_on(prefix)


def adding(n: int, chunk: int = DRAINED) -> None:
    """The mosaic's ``add`` alone, the rows given as the stitching thread drains them."""
    batches = results(n)
    mosaic = SolvedMosaic(PIXEL_UM, make_probe())
    mosaic.add(batches[0]["phase"][:1], np.zeros((1, 2)))  # compiled before timing
    mosaic = SolvedMosaic(PIXEL_UM, make_probe())
    start, cpu = time.perf_counter(), time.process_time()
    for first in range(0, len(batches), chunk):
        drained = batches[first : first + chunk]
        positions = np.concatenate([np.stack([b["x"], b["y"]], axis=1) for b in drained])
        total, x, y = (np.concatenate([b[key] for b in drained]) for key in INPUT_MOMENTS)
        moments = total, np.stack([x, y], axis=1)
        mosaic.add([b["phase"] for b in drained], positions, None, moments)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(
        f"adding alone: {n} frames in {chunk}-batch calls, {seconds / n * 1e6:.1f} µs/frame "
        f"= {n / seconds:,.0f} frames/s (CPU {cpu / seconds:.2f} cores)"
    )


def ceiling(live: LiveView, prefix: str, n: int) -> None:
    batch = results(n)
    new_run(live, prefix)
    start, cpu = time.perf_counter(), time.process_time()
    for rows in batch:
        live.take(rows)
    queued = time.perf_counter()
    shown = []  # snapshots kept, so compared by identity
    while live.backlog:
        latest = live.latest
        if latest is not None and not any(latest is seen for seen in shown):
            shown.append(latest)
        time.sleep(0.001)
    added, added_cpu = time.perf_counter(), time.process_time()
    final = live.finish()
    done = time.perf_counter()
    assert final is not None and final.frames == n
    per_frame = (added - start) / n
    print(
        f"ceiling: {n} frames, take {(queued - start) / n * 1e6:.2f} µs/frame, all taken "
        f"from the queue in {added - start:.2f} s = {per_frame * 1e6:.1f} µs/frame = "
        f"{1 / per_frame:,.0f} frames/s (CPU {(added_cpu - cpu) / (added - start):.2f} cores, "
        f"previews included, {len(shown)} pictures), final solve {done - added:.2f} s"
    )


def paced(live: LiveView, prefix: str, rate: float, seconds: float) -> None:
    n = int(rate * seconds)
    batch = results(n)
    new_run(live, prefix)
    backlog = [0]
    taking = [0.0]
    shown: list[tuple[float, object]] = []  # (when, snapshot): kept, so never confused

    def produce() -> None:
        t0 = time.perf_counter()
        for i, rows in enumerate(batch):
            ahead = t0 + i * BATCH / rate - time.perf_counter()
            if ahead > 0.001:
                time.sleep(ahead)
            t = time.perf_counter()
            live.take(rows)
            taking[0] += time.perf_counter() - t
            if i % 32 == 0:
                backlog[0] = max(backlog[0], live.backlog)
                latest = live.latest
                if latest is not None and (not shown or shown[-1][1] is not latest):
                    shown.append((time.perf_counter(), latest))

    start, cpu = time.perf_counter(), time.process_time()
    producer = threading.Thread(target=produce)
    producer.start()
    producer.join()
    sent, sent_cpu = time.perf_counter(), time.process_time()
    left = live.backlog
    final = live.finish()
    done = time.perf_counter()
    used = final.frames if final else 0
    cores = (sent_cpu - cpu) / (sent - start)
    kept = used == n and left * BATCH < rate
    times = [start] + [when for when, _ in shown] + [sent]
    print(
        f"rate {rate:>6,.0f}/s: sent {n / (sent - start):>7,.0f}/s, take "
        f"{taking[0] / n * 1e6:.2f} µs, CPU {cores:.2f} cores, {len(shown)} pictures "
        f"(at most {max(np.diff(times)):.1f} s apart), largest backlog {backlog[0]}, left "
        f"{left}, final solve {done - sent:.2f} s, {used}/{n} frames used: "
        f"{'kept' if kept else 'NOT kept'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[5000, 10000, 20000, 40000])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--ceiling-frames", type=int, default=20000)
    parser.add_argument("--stitching", choices=("solved", "ordered"), default="solved")
    args = parser.parse_args()
    use_loopback()
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    if args.stitching == "solved":
        live = LiveView(probe=make_probe(), figure=False)
    else:
        live = LiveView(probe_weight(make_probe()), figure=False)
    try:
        if args.stitching == "solved":
            adding(args.ceiling_frames)
        ceiling(live, prefix, args.ceiling_frames)
        for rate in args.rates:
            paced(live, prefix, rate, args.seconds)
    finally:
        live.close()


if __name__ == "__main__":
    main()
