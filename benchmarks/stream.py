"""End-to-end streaming benchmark: source -> consumer pool -> batch channels -> collectors.

A source process publishes NTNDArray frames (Poisson counts, ``x``/``y``/``point``
attributes) at a set rate; a :class:`~ptychonn_ophyd.pool.ConsumerPool` infers them, and
each worker publishes every inferred batch as one update of its batch channel
``<prefix>:<k>:batch`` (:class:`~ptychonn_ophyd.wire.ResultBatch`).  Collector processes
(``--collectors K``) share the batch channels out among themselves and read them as a
real reader does, :func:`~ptychonn_ophyd.wire.parse_result_batch` on each update, phase
included; each records every frame's stream, uniqueId, latency (arrival minus the frame's
own time) and arrival in arrays that grow as they fill, so no count is capped.  With
``--streams K`` the rate is split over K sources on K channels, each with a pool of its
own, as the seed split its input for 12 kHz.  The benchmark reads only the batch
channels: ``--frame-outputs none`` spares the workers the per-frame NTNDArrays.

Each trial accounts for every frame sent (:class:`Trial`): lost (sent minus distinct
results) = dropped by the workers (by reason) + rejected + missed (never received by a
worker) + not in time (received, but no result arrived by the end of the wait).  It
prints the sustained rate (distinct results over the time from the first frame sent to
the last result received), the end-to-end latency p50/p99, how long it waited for results
after the burst and why the wait ended, and the CPU per frame of the workers, the sources
and the collectors, with each collector's busy fraction (its CPU seconds over the trial's
wall seconds): a collector near a whole core may be the limit the trial measured.

``--passthrough`` measures, instead of our pool, one stock ``pvapy-hpc-consumer``
running pvapy's own ``AdImageProcessor`` (each frame republished on an output channel
nobody reads), from its status channel: a trial is lossless when it processed every
frame sent, missed none and kept the offered pace, as our pool's trials.
``--compare-passthrough`` runs both sweeps in one invocation, our pool first, and
prints both highest lossless rates and their ratio (ours over pvapy's).

Examples
--------
One trial at 200 Hz, then the highest rate without loss, on the CPU::

    python benchmarks/stream.py --rate 200 --backend onnxruntime --threads 2
    python benchmarks/stream.py --sweep --rate 100 --backend onnxruntime --workers 2 --threads 1

The pipeline's own ceiling (a model that copies its input) against pvapy's passthrough,
same source, same run::

    python benchmarks/stream.py --compare-passthrough --copy-model --backend onnxruntime \\
        --threads 1 --rate 500 --seconds 2 --refine 1 --frame-outputs none

pvapy's passthrough alone, and the bare engine's throughput on the same settings::

    python benchmarks/stream.py --passthrough --sweep --rate 500 --seconds 2 --refine 1
    python benchmarks/stream.py --bare --backend onnxruntime --threads 2

Four input streams of three workers each, 40 kHz in all for 60 s, on a GPU host::

    python benchmarks/stream.py --streams 4 --workers 3 --rate 40000 --seconds 60 \\
        --backend torch --batch-size 32 --frame-outputs none --json soak.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import psutil

from ptychonn_ophyd.cli.options import add_settings_options, settings_from_args
from ptychonn_ophyd.loopback import use_loopback

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from ptychonn_ophyd.pool import ConsumerPool

RECORD = np.dtype(
    [("stream", np.int64), ("id", np.int64), ("latency", np.float64), ("arrived", np.float64)]
)
"""One result as a collector records it: its stream, uniqueId, latency (arrival minus the
frame's ``frameTime``, s) and arrival (``time.perf_counter()``: on Linux the system-wide
monotonic clock, so arrivals in a collector compare with the parent's burst start)."""

BUSY_WARNING = 0.8
"""A collector busier than this fraction of a core may have limited the trial."""
CONNECT_TIMEOUT = 30.0
"""Seconds a collector waits for the first value of every batch channel it reads."""
BATCH_QUEUE = 256
"""Batch updates PV Access queues per channel for a collector that falls behind."""
PASSTHROUGH_PROCESSOR = "pvapy.hpc.adImageProcessor.AdImageProcessor"
"""pvapy's own processor for areaDetector frames: it republishes each frame as it came."""


# -- the source -------------------------------------------------------------------------


class Burst(NamedTuple):
    """What a source sent: ``sent`` frames with uniqueIds from ``first_id``, in ``seconds``."""

    sent: int
    seconds: float
    first_id: int


def serve(channel: str, shape: tuple[int, int], dtype: str, commands: Connection) -> None:
    """Source process: publish bursts of frames on ``channel`` as ``commands`` ask.

    Each command is ``(rate_hz, n_frames)``; the answer is a :class:`Burst` as a plain
    tuple (this module is ``__mp_main__`` here, so its classes do not unpickle in the
    parent).  ``None`` ends the process.
    """
    use_loopback()
    import pvaccess as pva

    from ptychonn_ophyd.sim.server import make_frame
    from ptychonn_ophyd.wire import stamp

    rng = np.random.default_rng(0)
    frames = (rng.poisson(50, shape).astype(dtype) for _ in range(64))
    cache = [make_frame(f, 0.5 * point, -0.5 * point, point) for point, f in enumerate(frames)]
    server = pva.PvaServer()
    server.addRecord(channel, pva.NtNdArray(), None)
    server.start()
    commands.send("ready")
    unique_id = 0
    while (command := commands.recv()) is not None:
        rate, n = command
        first = unique_id + 1
        start = time.perf_counter()
        for i in range(n):
            due = start + i / rate
            while (ahead := due - time.perf_counter()) > 0:
                time.sleep(min(ahead, 0.001))
            unique_id += 1
            array = cache[unique_id % len(cache)]
            stamp(array, unique_id)
            server.updateUnchecked(channel, array)
        commands.send((n, time.perf_counter() - start, first))
    server.stop()


class Source:
    """The source process and the pipe that drives it."""

    def __init__(self, channel: str, shape: tuple[int, int], dtype: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe()
        self._process = context.Process(
            target=serve, args=(channel, shape, dtype, child), daemon=True
        )
        self._process.start()
        if not self._pipe.poll(60) or self._pipe.recv() != "ready":
            raise RuntimeError("the source process did not start")

    def start_burst(self, rate: float, n: int) -> None:
        """Start publishing ``n`` frames at ``rate``."""
        self._pipe.send((rate, n))

    def end_burst(self) -> Burst:
        """Wait for the burst to end."""
        return Burst(*self._pipe.recv())

    @property
    def pid(self) -> int:
        return self._process.pid

    def close(self) -> None:
        self._pipe.send(None)
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()


# -- recording results ------------------------------------------------------------------


class Recorder:
    """Results in :data:`RECORD` rows, stored in chunks that double in size as they fill.

    Nothing has a capacity: however many results arrive, each is kept (a fixed-size
    store once reported 302,844 frames of a 60 s soak as lost that were only past its
    end).
    """

    def __init__(self, first_chunk: int = 1 << 16) -> None:
        self._first_chunk = first_chunk
        self.clear()

    def clear(self) -> None:
        """Forget every result."""
        self._chunks = [np.empty(self._first_chunk, RECORD)]
        self._used = 0  # rows filled in the last chunk
        self._before = 0  # rows in the chunks before it

    def __len__(self) -> int:
        return self._before + self._used

    def add(self, stream: int, ids: np.ndarray, latency: np.ndarray, arrived: float) -> None:
        """Record the results ``ids`` of ``stream`` (one batch), which arrived together."""
        done = 0
        while done < len(ids):
            chunk = self._chunks[-1]
            if self._used == len(chunk):
                self._before += self._used
                chunk = np.empty(2 * len(chunk), RECORD)
                self._chunks.append(chunk)
                self._used = 0
            k = min(len(ids) - done, len(chunk) - self._used)
            rows = chunk[self._used : self._used + k]
            rows["stream"] = stream
            rows["id"] = ids[done : done + k]
            rows["latency"] = latency[done : done + k]
            rows["arrived"] = arrived
            self._used += k
            done += k

    def records(self) -> np.ndarray:
        """Every result recorded, in the order they were recorded."""
        return np.concatenate([*self._chunks[:-1], self._chunks[-1][: self._used]])


class Tally(NamedTuple):
    """A burst's results counted: ``received`` results of its frames, ``distinct``
    (stream, uniqueId) pairs among them, their ``duplicates``, frames ``lost`` (sent minus
    distinct), and ``stale`` results of earlier bursts that arrived meanwhile."""

    received: int
    distinct: int
    duplicates: int
    lost: int
    stale: int


def tally(records: np.ndarray, bursts: list[Burst]) -> Tally:
    """Count ``records`` against ``bursts`` (``bursts[k]`` is what stream ``k`` sent)."""
    first = np.array([b.first_id for b in bursts], np.int64)
    end = first + np.array([b.sent for b in bursts], np.int64)
    streams, ids = records["stream"], records["id"]
    ours = (ids >= first[streams]) & (ids < end[streams])
    distinct = len(np.unique(streams[ours] << 40 | ids[ours]))
    received = int(ours.sum())
    sent = int(sum(b.sent for b in bursts))
    return Tally(received, distinct, received - distinct, sent - distinct, len(records) - received)


# -- collector processes ----------------------------------------------------------------


class BatchReader:
    """Reads batch channels in a collector process: every frame of every batch after a
    channel's first value (its value on connecting) goes into a :class:`Recorder`.

    ``shard`` lists ``(stream, channel)`` pairs.  A batch whose ``framesBefore`` is past
    the frames seen so far on its channel reveals batches this reader never received
    (PV Access dropped them while it lagged); their frames add up in ``gap_frames``.
    """

    def __init__(self, shard: list[tuple[int, str]], first_chunk: int) -> None:
        import pvaccess as pva

        self._recorder = Recorder(first_chunk)
        self._lock = threading.Lock()
        self._next: dict[str, int] = {}  # each channel's framesBefore of its next batch
        self._connected = threading.Event()
        self._n_channels = len(shard)
        self._gap_frames = 0
        self._cpu, self._wall = time.process_time(), time.perf_counter()
        self._channels = []
        request = f"record[queueSize={BATCH_QUEUE}]field()"
        for stream, name in shard:
            channel = pva.Channel(name)
            channel.monitor(lambda pv, k=stream, name=name: self._receive(k, name, pv), request)
            self._channels.append(channel)

    def _receive(self, stream: int, name: str, pv) -> None:
        from ptychonn_ophyd.wire import parse_result_batch

        arrived, now = time.perf_counter(), time.time()
        batch = parse_result_batch(pv)
        with self._lock:
            expected = self._next.get(name)
            self._next[name] = batch.frames_before + len(batch)
            if expected is None:
                if len(self._next) == self._n_channels:
                    self._connected.set()
                return
            self._gap_frames += max(batch.frames_before - expected, 0)
            latency = now - batch.frames["frameTime"]
            self._recorder.add(stream, batch.unique_ids, latency, arrived)

    def wait_connected(self, timeout: float) -> bool:
        """Whether every channel delivered its first value within ``timeout`` s."""
        return self._connected.wait(timeout)

    def missing(self) -> list[str]:
        """Channels that have not delivered their first value."""
        with self._lock:
            return [c.getName() for c in self._channels if c.getName() not in self._next]

    def count(self) -> int:
        """Results recorded since the last :meth:`take`."""
        with self._lock:
            return len(self._recorder)

    def take(self) -> tuple[np.ndarray, float, float, int]:
        """``(records, CPU s, wall s, gap frames)`` since the last take, then start afresh."""
        with self._lock:
            records = self._recorder.records()
            self._recorder.clear()
            gaps, self._gap_frames = self._gap_frames, 0
        cpu, wall = time.process_time(), time.perf_counter()
        taken = (records, cpu - self._cpu, wall - self._wall, gaps)
        self._cpu, self._wall = cpu, wall
        return taken

    def close(self) -> None:
        for channel in self._channels:
            channel.stopMonitor()


def collect(shard: list[tuple[int, str]], first_chunk: int, pipe: Connection) -> None:
    """Collector process: read the batch channels of ``shard`` and answer the parent.

    It says ``"ready"`` once every channel is connected (or why not), then answers
    ``"count"`` with :meth:`BatchReader.count` and ``"take"`` with
    :meth:`BatchReader.take` until it is sent ``None``.
    """
    use_loopback()
    reader = BatchReader(shard, first_chunk)
    try:
        if not reader.wait_connected(CONNECT_TIMEOUT):
            pipe.send(f"no first value in {CONNECT_TIMEOUT:g} s from {reader.missing()}")
            return
        pipe.send("ready")
        while (request := pipe.recv()) is not None:
            pipe.send(reader.count() if request == "count" else reader.take())
    finally:
        reader.close()


class Wait(NamedTuple):
    """How long a trial waited for results after its burst, and why it stopped:
    ``"all arrived"``, ``"none for Q s"`` (the quiet period) or ``"deadline D s"``."""

    seconds: float
    end: str

    def line(self, what: str = "results") -> str:
        return f"waited {self.seconds:.1f} s for {what} after the burst ({self.end})"


def wait_for(count: Callable[[], int], expected: int, quiet: float, deadline: float) -> Wait:
    """Poll ``count()`` until it reaches ``expected``, stays put ``quiet`` s, or
    ``deadline`` s pass."""
    start = time.monotonic()
    last, since = -1, start
    while True:
        now, n = time.monotonic(), count()
        if n >= expected:
            return Wait(now - start, "all arrived")
        if n != last:
            last, since = n, now
        elif now - since > quiet:
            return Wait(now - start, f"none for {quiet:g} s")
        if now - start > deadline:
            return Wait(now - start, f"deadline {deadline:g} s")
        time.sleep(0.05)


class Collected(NamedTuple):
    """What the collectors recorded over one trial: the results, and per collector its
    CPU seconds and wall seconds, and frames of batches it never received."""

    records: np.ndarray
    cpu_s: list[float]
    wall_s: list[float]
    gap_frames: int


def default_collectors(n_channels: int) -> int:
    """A quarter of the cores, at least one, at most one per batch channel.

    A collector reads one update per batch, but takes the whole batch as a reader does,
    64 KB of phase per 128x128 frame: on the 2-core machine that costs it about 0.03 ms
    of CPU per frame (batch 8 or 32), so one collector would fill a core near 30,000
    frames/s, short of a 40 kHz soak.  A quarter of the cores gives 4 collectors on a
    16-core GPU host (10,000 frames/s and a third of a core each at 40 kHz, for 12
    batch channels) and leaves three quarters of the cores to the workers and sources
    being measured; on 2 cores it is 1.
    """
    return min(n_channels, max(1, (os.cpu_count() or 1) // 4))


class Collectors:
    """Collector processes (spawned), each reading a share of the batch channels.

    ``channels[k]`` lists the batch channels of stream ``k``; they are dealt out
    round-robin among ``n`` processes (no more processes than channels).
    """

    def __init__(self, channels: list[list[str]], n: int, first_chunk: int = 1 << 16) -> None:
        pairs = [(k, name) for k, names in enumerate(channels) for name in names]
        n = max(1, min(n, len(pairs)))
        context = multiprocessing.get_context("spawn")
        self._pipes: list[Connection] = []
        self._processes = []
        for i in range(n):
            mine, theirs = context.Pipe()
            process = context.Process(
                target=collect, args=(pairs[i::n], first_chunk, theirs), daemon=True
            )
            process.start()
            self._pipes.append(mine)
            self._processes.append(process)
        for i, pipe in enumerate(self._pipes):
            answer = pipe.recv() if pipe.poll(CONNECT_TIMEOUT + 60) else "no answer"
            if answer != "ready":
                self.close()
                raise RuntimeError(f"collector {i + 1}: {answer}")

    def __len__(self) -> int:
        return len(self._processes)

    def _ask(self, request: str) -> list:
        for pipe in self._pipes:
            pipe.send(request)
        return [pipe.recv() for pipe in self._pipes]

    def count(self) -> int:
        """Results recorded since the last :meth:`take`, over all collectors."""
        return sum(self._ask("count"))

    def take(self) -> Collected:
        """Every collector's records and CPU since the last take, merged; then afresh."""
        answers = self._ask("take")
        return Collected(
            np.concatenate([a[0] for a in answers]),
            [a[1] for a in answers],
            [a[2] for a in answers],
            sum(a[3] for a in answers),
        )

    def close(self) -> None:
        for pipe in self._pipes:
            with contextlib.suppress(OSError):
                pipe.send(None)
        for process in self._processes:
            process.join(10)
            if process.is_alive():
                process.kill()


# -- trials of our pool -----------------------------------------------------------------


@dataclass
class Trial:
    """The outcome of one burst of frames at one rate through our pool.

    Every frame sent is accounted for: ``lost`` (sent minus ``distinct`` results) =
    ``dropped`` (by the workers; ``dropped_by_reason``) + ``rejected`` + ``missed``
    (frames no worker received: sent minus the workers' ``received`` count) +
    ``not_in_time`` (frames the workers received whose result never arrived by the end
    of the wait).  ``pvapy_missed`` is pvapy's own count of uniqueId gaps, which sees a
    gap only at the next frame a worker receives, so frames lost at the very end of a
    burst show there one trial late.  ``collector_gap_frames`` are frames of batches
    that workers published and the collectors never received (part of ``not_in_time``).
    ``stale`` results belong to an earlier burst and count nowhere else.  CPU figures are
    milliseconds per frame sent; ``collector_busy`` is each collector's CPU seconds over
    the trial's wall seconds (burst start to the end of the wait).
    """

    offered_hz: float
    sent: int
    received: int
    distinct: int
    duplicates: int
    lost: int
    dropped: int
    dropped_by_reason: dict[str, int]
    rejected: int
    missed: int
    not_in_time: int
    sustained_hz: float
    latency_p50_ms: float
    latency_p99_ms: float
    latency_p99_ms_by_second: list[float]
    worker_latency_p99_ms: float
    worker_cpu_ms: float
    source_cpu_ms: float
    collector_cpu_ms: float
    collector_busy: list[float]
    collectors: int
    waited_s: float
    wait_end: str
    pvapy_missed: int
    collector_gap_frames: int
    stale: int

    @property
    def kept_up(self) -> bool:
        """No frame lost and the results kept pace with the frames (within 2 %)."""
        return self.lost == 0 and self.sustained_hz >= 0.98 * self.offered_hz

    def line(self) -> str:
        """The trial in one line: rates, where frames were lost, latency, CPU."""
        return (
            f"offered {self.offered_hz:8.1f} Hz  sustained {self.sustained_hz:8.1f} Hz  "
            f"sent {self.sent:7d}  lost {self.lost:6d} (dropped {self.dropped}, rejected "
            f"{self.rejected}, missed {self.missed}, not in time {self.not_in_time})  "
            f"dup {self.duplicates}  latency p50 {self.latency_p50_ms:7.2f} ms  "
            f"p99 {self.latency_p99_ms:7.2f} ms  (worker p99 {self.worker_latency_p99_ms:.2f} "
            f"ms; CPU per frame: workers {self.worker_cpu_ms:.3f} ms, sources "
            f"{self.source_cpu_ms:.3f} ms, {self.collectors} collector(s) "
            f"{self.collector_cpu_ms:.3f} ms, busiest {max(self.collector_busy):.0%} of a core)"
        )

    def notes(self) -> list[str]:
        """The wait, the latency tail second by second, and a warning if a collector may
        have been the limit."""
        notes = [Wait(self.waited_s, self.wait_end).line()]
        by_second = ", ".join(f"{ms:g}" for ms in self.latency_p99_ms_by_second)
        notes.append(f"latency p99 (ms) of each second's results: {by_second}")
        busiest = max(self.collector_busy)
        if busiest > BUSY_WARNING:
            notes.append(
                f"warning: a collector was busy {busiest:.0%} of a core; these figures may "
                "be the collectors' limit (try more --collectors)"
            )
        return notes


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of processes ``pids``, all their threads included."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def pool_totals(pools: list[ConsumerPool]) -> dict:
    """Frames received, dropped (by reason), rejected and missed over all pools, from a
    status every worker made after this call, and the worst worker's p99 latency."""
    from ptychonn_ophyd.wire import DROP_REASONS

    stats = [pool.stats(since=time.time()) for pool in pools]
    return {
        "received": sum(s.received for s in stats),
        "dropped_by_reason": {
            r: sum(s.dropped_by_reason.get(r, 0) for s in stats) for r in DROP_REASONS
        },
        "rejected": sum(sum(s.rejected.values()) for s in stats),
        "missed": sum(s.missed for s in stats),
        "latency_p99_s": max(s.latency_p99_s for s in stats),
    }


def pool_deltas(after: dict, before: dict) -> dict:
    """The counts of :func:`pool_totals` gained between ``before`` and ``after``."""
    dropped = {r: n - before["dropped_by_reason"][r] for r, n in after["dropped_by_reason"].items()}
    counts = {key: after[key] - before[key] for key in ("received", "rejected", "missed")}
    return {**counts, "dropped_by_reason": dropped}


def p99_by_second(records: np.ndarray, started: float) -> list[float]:
    """p99 latency in ms of the results that arrived in each second after ``started``
    (a ``perf_counter``; an empty second gives 0): places a tail in the trial's time."""
    if not len(records):
        return []
    second = (records["arrived"] - started).clip(0).astype(np.int64)
    p99 = []
    for k in range(int(second.max()) + 1):
        latency = records["latency"][second == k]
        p99.append(round(float(np.percentile(latency, 99)) * 1e3, 2) if len(latency) else 0.0)
    return p99


def make_trial(
    bursts: list[Burst],
    elapsed: float,
    started: float,
    collected: Collected,
    counts: dict,
    worker_p99_s: float,
    cpu_ms: tuple[float, float],
    waited: Wait,
) -> Trial:
    """A :class:`Trial` from what the sources sent (``elapsed`` s from ``started``, a
    ``perf_counter``), what the collectors recorded, the pools' :func:`pool_deltas`,
    and the workers' and sources' CPU per frame."""
    sent = sum(b.sent for b in bursts)
    counted = tally(collected.records, bursts)
    records = collected.records
    span = records["arrived"].max() - started if len(records) else float("inf")
    p50, p99 = np.percentile(records["latency"], (50, 99)) if len(records) else (0.0, 0.0)
    dropped = sum(counts["dropped_by_reason"].values())
    missed = sent - counts["received"]
    return Trial(
        offered_hz=sent / elapsed if elapsed > 0 else float("nan"),
        sent=sent,
        received=counted.received,
        distinct=counted.distinct,
        duplicates=counted.duplicates,
        lost=counted.lost,
        dropped=dropped,
        dropped_by_reason=counts["dropped_by_reason"],
        rejected=counts["rejected"],
        missed=missed,
        not_in_time=counted.lost - dropped - counts["rejected"] - missed,
        sustained_hz=counted.distinct / span,
        latency_p50_ms=float(p50) * 1e3,
        latency_p99_ms=float(p99) * 1e3,
        latency_p99_ms_by_second=p99_by_second(records, started),
        worker_latency_p99_ms=worker_p99_s * 1e3,
        worker_cpu_ms=cpu_ms[0],
        source_cpu_ms=cpu_ms[1],
        collector_cpu_ms=sum(collected.cpu_s) / sent * 1e3,
        collector_busy=[c / w for c, w in zip(collected.cpu_s, collected.wall_s, strict=True)],
        collectors=len(collected.cpu_s),
        waited_s=waited.seconds,
        wait_end=waited.end,
        pvapy_missed=counts["missed"],
        collector_gap_frames=collected.gap_frames,
        stale=counted.stale,
    )


@dataclass
class PoolBench:
    """Our pools, their sources, and the collectors of the pools' batch channels."""

    sources: list[Source]
    pools: list[ConsumerPool]
    collectors: Collectors
    seconds: float
    quiet: float
    deadline: float

    def trial(self, rate: float) -> Trial:
        """Send a burst of ``rate * seconds`` frames, split over the sources; account for all."""
        before = pool_totals(self.pools)
        self.collectors.take()  # start afresh: CPU clocks from here, earlier results gone
        n = max(int(rate * self.seconds / len(self.sources)), 1)
        workers = [pid for pool in self.pools for pid in pool.pids]
        senders = [source.pid for source in self.sources]
        cpu_before = cpu_seconds(workers), cpu_seconds(senders)
        started = time.perf_counter()
        for source in self.sources:
            source.start_burst(rate / len(self.sources), n)
        bursts = [source.end_burst() for source in self.sources]
        sent, elapsed = sum(b.sent for b in bursts), max(b.seconds for b in bursts)
        waited = wait_for(self.collectors.count, sent, self.quiet, self.deadline)
        cpu_after = cpu_seconds(workers), cpu_seconds(senders)
        collected = self.collectors.take()
        after = pool_totals(self.pools)
        cpu_ms = tuple((a - b) / sent * 1e3 for a, b in zip(cpu_after, cpu_before, strict=True))
        counts = pool_deltas(after, before)
        p99 = after["latency_p99_s"]
        return make_trial(bursts, elapsed, started, collected, counts, p99, cpu_ms, waited)


# -- pvapy's passthrough ----------------------------------------------------------------


@dataclass
class PassthroughTrial:
    """One burst through pvapy's passthrough, counted from its status channel.

    ``processed`` and ``missed`` are pvapy's ``nProcessed`` and ``nMissed`` over the
    burst (its counts are reset before each one); ``lost`` is sent minus processed.
    ``sustained_hz`` is processed over the time from the burst's start to the receipt of
    the last frame (``lastObjectTime``).  CPU figures are milliseconds per frame sent.
    """

    offered_hz: float
    sent: int
    processed: int
    missed: int
    lost: int
    sustained_hz: float
    consumer_cpu_ms: float
    source_cpu_ms: float
    waited_s: float
    wait_end: str

    @property
    def kept_up(self) -> bool:
        """Every frame sent processed, none missed, at the offered pace (within 2 %), the
        same test as :attr:`Trial.kept_up`."""
        kept_pace = self.sustained_hz >= 0.98 * self.offered_hz
        return self.processed == self.sent and self.missed == 0 and kept_pace

    def line(self) -> str:
        """The trial in one line, as :meth:`Trial.line`."""
        return (
            f"passthrough: offered {self.offered_hz:8.1f} Hz  sustained "
            f"{self.sustained_hz:8.1f} Hz  sent {self.sent:7d}  processed {self.processed:7d}"
            f"  lost {self.lost:6d}  missed {self.missed}  (CPU per frame: consumer "
            f"{self.consumer_cpu_ms:.3f} ms, source {self.source_cpu_ms:.3f} ms)"
        )

    def notes(self) -> list[str]:
        """How long it waited for the counts after the burst."""
        return [Wait(self.waited_s, self.wait_end).line("its status to count every frame")]


PASSTHROUGH_STATUS = "field(objectTime,processorStats,receiverStats)"
"""What the benchmark monitors on the passthrough consumer's status channel."""


class Passthrough:
    """One stock ``pvapy-hpc-consumer`` running pvapy's ``AdImageProcessor`` on a
    source's channel, republishing each frame on ``<prefix>:1:output``; started like our
    pool's workers (:func:`passthrough_command`) and watched on its status channel."""

    def __init__(self, command: list[str], prefix: str, log_path: Path, period: float) -> None:
        from ptychonn_ophyd.pool.member import ChannelWatch
        from ptychonn_ophyd.pool.process import Worker
        from ptychonn_ophyd.wire import WorkerChannels

        channels = WorkerChannels.of(prefix, 1)
        self.period = period
        self._worker = Worker(1, command, log_path, channels)
        self._status = ChannelWatch(channels.status, PASSTHROUGH_STATUS)
        self._control = channels.control
        self._worker.launch()

    @property
    def pid(self) -> int:
        return self._worker.process.pid

    def stats(self) -> dict:
        """The latest ``processorStats`` (empty before the first status)."""
        return (self._status.value or {}).get("processorStats", {})

    @property
    def processed(self) -> int:
        return self.stats().get("nProcessed", 0)

    def wait_ready(self, timeout: float) -> None:
        """Until the consumer has heard its input channel.

        Raises
        ------
        RuntimeError
            It exited, or did not hear its input within ``timeout`` s.
        """
        deadline = time.monotonic() + timeout
        while (self._status.value or {}).get("receiverStats", {}).get("nReceived", 0) == 0:
            if (code := self._worker.exit_code()) is not None or time.monotonic() > deadline:
                why = f"exited with status {code}" if code is not None else "not ready"
                raise RuntimeError(f"passthrough consumer {why}:\n{self._worker.log_tail()}")
            time.sleep(0.1)

    def reset(self) -> None:
        """Zero its counts (``reset_stats`` on its control channel); return once a status
        shows zero frames processed."""
        from ptychonn_ophyd.pool.control import send_command

        send_command(self._control, "reset_stats")
        moment = time.time()
        deadline = time.monotonic() + 5 * self.period + 10
        while (self._status.value or {}).get("objectTime", 0.0) < moment or self.processed:
            if time.monotonic() > deadline:
                raise RuntimeError("the passthrough consumer's status shows no reset")
            time.sleep(0.02)

    def close(self) -> None:
        from ptychonn_ophyd.pool.process import terminate

        terminate([self._worker], 10.0)
        self._worker.close()
        self._status.close()


def passthrough_command(channel: str, prefix: str, args: argparse.Namespace) -> list[str]:
    """The stock consumer's command line: pvapy's ``AdImageProcessor`` on ``channel``,
    its channels under ``prefix``, and pvapy's options as our pool gives its workers."""
    from ptychonn_ophyd.pool.process import CONSUMER_MODULE
    from ptychonn_ophyd.wire import WorkerChannels

    command = [sys.executable, "-m", CONSUMER_MODULE, "--input-channel", channel]
    for option, pattern in WorkerChannels.patterns(prefix).items():
        command += [f"--{option}", pattern]
    command += ["--processor-class", PASSTHROUGH_PROCESSOR, "--consumer-id", "1"]
    command += ["--disable-curses", "--report-period", str(args.status_period)]
    command += ["--report-stats", "processor", "--log-level", args.log_level]
    command += ["--server-queue-size", str(args.server_queue_size)]
    if args.receiver_queue_size:
        command += ["--receiver-queue-size", str(args.receiver_queue_size)]
    return command


@dataclass
class PassthroughBench:
    """pvapy's passthrough consumer and its source."""

    source: Source
    consumer: Passthrough
    seconds: float
    quiet: float
    deadline: float

    def trial(self, rate: float) -> PassthroughTrial:
        """Send a burst of ``rate * seconds`` frames; count what the consumer processed."""
        self.consumer.reset()
        pids = [self.consumer.pid, self.source.pid]
        cpu_before = [cpu_seconds([pid]) for pid in pids]
        started = time.time()
        self.source.start_burst(rate, max(int(rate * self.seconds), 1))
        burst = self.source.end_burst()
        # its counts change once a status period: the quiet period must span two
        quiet = max(self.quiet, 2 * self.consumer.period)
        waited = wait_for(lambda: self.consumer.processed, burst.sent, quiet, self.deadline)
        consumer_ms, source_ms = (
            (cpu_seconds([pid]) - cpu) / burst.sent * 1e3
            for pid, cpu in zip(pids, cpu_before, strict=True)
        )
        stats = self.consumer.stats()
        processed, span = stats.get("nProcessed", 0), stats.get("lastObjectTime", 0.0) - started
        return PassthroughTrial(
            offered_hz=burst.sent / burst.seconds if burst.seconds > 0 else float("nan"),
            sent=burst.sent,
            processed=processed,
            missed=stats.get("nMissed", 0),
            lost=burst.sent - processed,
            sustained_hz=processed / span if span > 0 else 0.0,
            consumer_cpu_ms=consumer_ms,
            source_cpu_ms=source_ms,
            waited_s=waited.seconds,
            wait_end=waited.end,
        )


# -- sweeps -----------------------------------------------------------------------------

Outcome = Trial | PassthroughTrial


def show(trial: Outcome) -> None:
    """Print a trial's line and its notes."""
    print(trial.line(), flush=True)
    for note in trial.notes():
        print(f"    {note}", flush=True)


SOURCE_SHORTFALL = 0.95
"""A trial whose source offered less than this share of the rate asked ends a sweep:
the rates above it would measure the source, not the pipeline."""


def sweep(
    run: Callable[[float], Outcome], start: float, refine: int, limit: float
) -> tuple[float, list[Outcome]]:
    """Highest rate that kept up (``kept_up``): grow by 1.5x until it fails, then bisect.

    The rate reported is what the source offered in the best trial, not what was asked;
    a source that falls short of the rate asked ends the sweep, and says so.
    """
    trials: list[Outcome] = []
    good, bad, rate = 0.0, None, start
    while bad is None and rate <= limit:
        trial = run(rate)
        trials.append(trial)
        show(trial)
        if trial.offered_hz < SOURCE_SHORTFALL * rate:
            print(
                f"the source offered {trial.offered_hz:.0f} Hz of {rate:.0f} Hz asked: the "
                "sweep stops at the source's limit",
                flush=True,
            )
            return best_offered(trials), trials
        if trial.kept_up:
            good, rate = rate, rate * 1.5
        else:
            bad = rate
    for _ in range(refine if bad is not None else 0):
        rate = (good + bad) / 2
        trial = run(rate)
        trials.append(trial)
        show(trial)
        if trial.kept_up:
            good = rate
        else:
            bad = rate
    return best_offered(trials), trials


def best_offered(trials: list[Outcome]) -> float:
    """The highest rate a source offered in a trial that kept up (0 if none did)."""
    return max((t.offered_hz for t in trials if t.kept_up), default=0.0)


def measure(run: Callable[[float], Outcome], args: argparse.Namespace, what: str) -> dict:
    """One trial at ``--rate``, or a sweep from it; the best lossless rate and the trials.

    A warm-up burst at a quarter of ``--rate`` goes first and is not counted: a first
    trial pays for the engine's and the channels' first use (a worker p99 of 0.8 s was
    seen), and a sweep that failed its first rate for that would report a limit that
    is not the pipeline's.
    """
    print(f"{what}: warm-up at {args.rate / 4:.0f} Hz (not counted)", flush=True)
    run(args.rate / 4)
    if args.sweep:
        best, trials = sweep(run, args.rate, args.refine, args.max_rate)
        print(f"{what}: highest rate with no loss: {best:.1f} Hz", flush=True)
    else:
        trials = [run(args.rate)]
        show(trials[0])
        best = trials[0].offered_hz if trials[0].kept_up else 0.0
    return {"best_lossless_hz": best, "trials": [asdict(t) for t in trials]}


# -- models -----------------------------------------------------------------------------


def bare_engine(args: argparse.Namespace, model: Path) -> float:
    """Frames/s of the engine alone on full batches of random frames."""
    from ptychonn_ophyd.engines import create_engine

    engine = create_engine(
        model,
        backend=args.backend,
        precision=args.precision,
        max_batch=args.batch_size,
        threads=args.threads,
    )
    frames = np.random.default_rng(0).random((args.batch_size, *engine.input_shape), np.float32)
    engine.infer(frames)
    n, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < args.seconds:
        engine.infer(frames)
        n += args.batch_size
    rate = n / (time.perf_counter() - start)
    cpu_ms = (time.process_time() - cpu) / n * 1e3
    print(
        f"bare engine: {rate:.1f} frames/s, CPU per frame {cpu_ms:.2f} ms, "
        f"batch {args.batch_size}, {engine.description}"
    )
    return rate


def copy_model(folder: Path) -> Path:
    """A model that returns its input: what remains is the pipeline's own cost."""
    import onnx
    from onnx import TensorProto, helper

    shape = ["batch", 1, 128, 128]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["phase"])],
        "copy",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("phase", TensorProto.FLOAT, shape)],
    )
    path = folder / "copy.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # what ONNX Runtime 1.17 and later read
    onnx.save(model, path)
    return path


def random_model(folder: Path) -> Path:
    """The small phase model with random weights (timing does not depend on them)."""
    from ptychonn_ophyd.models import PRESETS, export_onnx_bytes

    rng = np.random.default_rng(0)
    state = {
        key: (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]) or 1)).astype(np.float32)
        for key, shape in PRESETS["small_phase"].parameter_shapes().items()
    }
    path = folder / "small_phase.onnx"
    path.write_bytes(export_onnx_bytes(PRESETS["small_phase"], state))
    return path


# -- the command ------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=100.0, help="frames/s (sweep: start)")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each trial")
    parser.add_argument("--size", type=int, default=128, help="frame side in pixels")
    parser.add_argument("--dtype", default="int16", help="frame data type")
    parser.add_argument("--streams", type=int, default=1, help="input streams sharing --rate")
    parser.add_argument("--sweep", action="store_true", help="find the highest lossless rate")
    parser.add_argument("--refine", type=int, default=3, help="sweep bisection steps")
    parser.add_argument("--max-rate", type=float, default=200_000.0, help="sweep ceiling")
    parser.add_argument(
        "--collectors",
        type=int,
        default=None,
        help="collector processes sharing the batch channels (default: a quarter of the "
        "cores, at least 1, at most one per channel)",
    )
    parser.add_argument(
        "--quiet", type=float, default=2.0, help="end a trial's wait after this long with no result"
    )
    parser.add_argument(
        "--deadline", type=float, default=120.0, help="longest wait for results after a burst"
    )
    parser.add_argument("--bare", action="store_true", help="time the engine alone")
    parser.add_argument(
        "--copy-model",
        action="store_true",
        help="pipeline-only: a model that copies its input (ONNX Identity), no network",
    )
    parser.add_argument(
        "--passthrough",
        action="store_true",
        help="measure pvapy's own AdImageProcessor in one stock consumer instead of our pool",
    )
    parser.add_argument(
        "--compare-passthrough",
        action="store_true",
        help="sweep our pool, then pvapy's passthrough on the same source settings",
    )
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    # The pool's settings (--model defaults to a random small phase model; per stream).
    add_settings_options(parser, defaults={"model": None, "input_channel": ""})
    args = parser.parse_args(argv)
    if (args.passthrough or args.compare_passthrough) and args.streams != 1:
        parser.error("the passthrough runs one stream: leave --streams at 1")
    if args.bare and (args.passthrough or args.compare_passthrough):
        parser.error("--bare times the engine alone, not with the passthrough")
    args.sweep = args.sweep or args.compare_passthrough
    return args


def start_stream(
    args: argparse.Namespace, model: Path, prefix: str, log_dir: Path, stack: contextlib.ExitStack
) -> tuple[Source, ConsumerPool]:
    """A source on ``<prefix>:image`` and a pool on ``<prefix>``, both closed by ``stack``."""
    from ptychonn_ophyd.pool import ConsumerPool
    from ptychonn_ophyd.settings import PoolConfig

    channel = f"{prefix}:image"
    source = Source(channel, (args.size, args.size), args.dtype)
    stack.callback(source.close)
    settings = settings_from_args(args)
    settings.update(model=model, input_channel=channel, output_prefix=prefix, log_dir=log_dir)
    config = PoolConfig(**settings)
    return source, stack.enter_context(ConsumerPool(config))


def run_pool(args: argparse.Namespace, model: Path, workdir: Path) -> dict:
    """Trials of our pools (one per stream), read by collectors of their batch channels."""
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    with contextlib.ExitStack() as stack:
        streams = [
            start_stream(args, model, f"{prefix}s{k}", workdir / f"logs-{k}", stack)
            for k in range(1, args.streams + 1)
        ]
        sources, pools = [s for s, _ in streams], [p for _, p in streams]
        for pool in pools:
            pool.start(timeout=600)
        facts = pools[0].facts()
        channels = [pool.batch_channels for pool in pools]
        n = args.collectors or default_collectors(sum(map(len, channels)))
        collectors = Collectors(channels, n)
        stack.callback(collectors.close)
        print(
            f"{args.streams} stream(s) x {args.n_workers} worker(s), {len(collectors)} "
            f"collector(s), frame outputs {args.frame_outputs}: {facts['engine']} "
            f"{' '.join(facts['gpu_names'])}",
            flush=True,
        )
        bench = PoolBench(sources, pools, collectors, args.seconds, args.quiet, args.deadline)
        return {"facts": facts, **measure(bench.trial, args, "our pool")}


def run_passthrough(args: argparse.Namespace, workdir: Path) -> dict:
    """Trials of pvapy's passthrough on a source like :func:`run_pool`'s."""
    import pvaccess as pva

    prefix = f"bench{uuid.uuid4().hex[:8]}p"
    channel = f"{prefix}:image"
    command = passthrough_command(channel, prefix, args)
    with contextlib.ExitStack() as stack:
        source = Source(channel, (args.size, args.size), args.dtype)
        stack.callback(source.close)
        log = workdir / "passthrough.log"
        consumer = Passthrough(command, prefix, log, args.status_period)
        stack.callback(consumer.close)
        consumer.wait_ready(120)
        print(
            f"passthrough: one pvapy-hpc-consumer, {PASSTHROUGH_PROCESSOR} "
            f"(pvapy {pva.__version__}), server queue {args.server_queue_size}; log {log}",
            flush=True,
        )
        bench = PassthroughBench(source, consumer, args.seconds, args.quiet, args.deadline)
        measured = measure(bench.trial, args, "pvapy passthrough")
    facts = {"processor": PASSTHROUGH_PROCESSOR, "pvapy_version": pva.__version__}
    return {"passthrough_facts": facts | {"command": command}} | {
        f"passthrough_{key}": value for key, value in measured.items()
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    use_loopback()
    workdir = Path(tempfile.mkdtemp(prefix="ptychonn-stream-"))
    result: dict = {"settings": vars(args)}
    if not args.passthrough:
        model = copy_model(workdir) if args.copy_model else args.model or random_model(workdir)
        result["settings"] = vars(args) | {"model": str(model)}
        if args.bare:
            result["bare_frames_per_s"] = bare_engine(args, model)
        else:
            result |= run_pool(args, model, workdir)
    if args.passthrough or args.compare_passthrough:
        result |= run_passthrough(args, workdir)
    if args.compare_passthrough:
        result["ratio"] = compare(
            result["best_lossless_hz"], result["passthrough_best_lossless_hz"]
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


def compare(ours: float, passthrough: float) -> float | None:
    """Print both highest lossless rates and their ratio (``None`` if pvapy's is 0)."""
    ratio = ours / passthrough if passthrough else None
    shown = f"{ratio:.2f}" if ratio is not None else "n/a"
    print(
        f"highest lossless rate: our pool {ours:.1f} Hz, pvapy passthrough "
        f"{passthrough:.1f} Hz, ratio {shown}",
        flush=True,
    )
    return ratio


if __name__ == "__main__":
    sys.exit(main())
