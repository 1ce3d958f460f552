"""End-to-end streaming benchmark: source -> consumer pool -> collector, over PV Access.

A source process publishes NTNDArray frames (Poisson counts, ``x``/``y``/``point``
attributes) at a set rate; a :class:`~ptychonn_ophyd.pool.ConsumerPool` infers them;
a collector in this process monitors every output channel.  With ``--streams K`` the
rate is split over K sources on K channels, each with a pool of its own, as the seed
split its input for 12 kHz.  Each trial prints the offered rate, the sustained rate
(results received over the time from first frame sent to last result received),
frames lost (sent minus distinct results) and the end-to-end latency p50/p99 (source
timestamp to result received).

Examples
--------
One trial at 200 Hz, then the highest rate without loss, on the CPU::

    python benchmarks/stream.py --rate 200 --backend onnxruntime --threads 2
    python benchmarks/stream.py --sweep --rate 100 --backend onnxruntime --workers 2 --threads 1

The bare engine's throughput on the same settings, for comparison::

    python benchmarks/stream.py --bare --backend onnxruntime --threads 2

Two input streams of two workers each, 40 kHz in all, on a GPU host::

    python benchmarks/stream.py --streams 2 --workers 2 --rate 40000 --backend torch
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import multiprocessing
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import psutil

from ptychonn_ophyd.cli.options import add_settings_options, settings_from_args
from ptychonn_ophyd.loopback import use_loopback

if TYPE_CHECKING:
    from ptychonn_ophyd.pool import ConsumerPool


@dataclass
class Trial:
    """The outcome of one burst of frames at one rate."""

    offered_hz: float
    sent: int
    received: int
    lost: int
    duplicates: int
    sustained_hz: float
    latency_p50_ms: float
    latency_p99_ms: float
    worker_latency_p99_ms: float
    dropped: int
    missed: int
    worker_cpu_ms: float
    source_cpu_ms: float
    collector_cpu_ms: float

    @property
    def kept_up(self) -> bool:
        """No frame lost and the results kept pace with the frames (within 2 %)."""
        return self.lost == 0 and self.sustained_hz >= 0.98 * self.offered_hz

    def line(self) -> str:
        return (
            f"offered {self.offered_hz:8.1f} Hz  sustained {self.sustained_hz:8.1f} Hz  "
            f"sent {self.sent:6d}  lost {self.lost:5d}  dup {self.duplicates}  "
            f"latency p50 {self.latency_p50_ms:7.2f} ms  p99 {self.latency_p99_ms:7.2f} ms  "
            f"(worker p99 {self.worker_latency_p99_ms:.2f} ms, dropped {self.dropped}, "
            f"missed {self.missed}; CPU per frame: workers {self.worker_cpu_ms:.2f} ms, "
            f"sources {self.source_cpu_ms:.2f} ms, collector {self.collector_cpu_ms:.2f} ms)"
        )


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of processes ``pids``, all their threads included."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def serve(channel: str, shape: tuple[int, int], dtype: str, commands) -> None:
    """Source process: publish bursts of frames on ``channel`` as ``commands`` ask.

    Each command is ``(rate_hz, n_frames)``; the answer is ``(sent, seconds)``.  ``None``
    ends the process.
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
        start = time.perf_counter()
        for i in range(n):
            due = start + i / rate
            while (ahead := due - time.perf_counter()) > 0:
                time.sleep(min(ahead, 0.001))
            unique_id += 1
            array = cache[unique_id % len(cache)]
            stamp(array, unique_id)
            server.updateUnchecked(channel, array)
        commands.send((n, time.perf_counter() - start))
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

    def end_burst(self) -> tuple[int, float]:
        """Wait for the burst to end; (frames sent, seconds it took)."""
        return self._pipe.recv()

    @property
    def pid(self) -> int:
        return self._process.pid

    def close(self) -> None:
        self._pipe.send(None)
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()


class Collector:
    """Monitors output channels; records each result's stream, uniqueId and latency.

    ``channels[k]`` lists the output channels of stream ``k``.
    """

    def __init__(self, channels: list[list[str]], capacity: int) -> None:
        import pvaccess as pva

        self.stream = np.zeros(capacity, np.int64)
        self.ids = np.zeros(capacity, np.int64)
        self.latency = np.zeros(capacity)
        self.arrived = np.zeros(capacity)
        self.n = 0
        self._lock = threading.Lock()
        self._initial = {name for names in channels for name in names}
        self._channels = []
        for k, names in enumerate(channels):
            for name in names:
                channel = pva.Channel(name)
                channel.monitor(
                    lambda pv, name=name, k=k: self._receive(k, name, pv),
                    "record[queueSize=100000]field(uniqueId,dataTimeStamp)",
                )
                self._channels.append(channel)
        deadline = time.monotonic() + 10
        while self._initial and time.monotonic() < deadline:
            time.sleep(0.01)

    def _receive(self, stream: int, name: str, pv) -> None:
        now = time.time()
        if name in self._initial:
            self._initial.discard(name)
            return
        stamp = pv["dataTimeStamp"]  # the frame's time, which its result keeps
        with self._lock:
            i = self.n
            if i < len(self.ids):
                self.stream[i] = stream
                self.ids[i] = pv["uniqueId"]
                self.latency[i] = now - stamp["secondsPastEpoch"] - stamp["nanoseconds"] * 1e-9
                self.arrived[i] = time.perf_counter()
                self.n = i + 1

    def distinct(self) -> int:
        """How many different (stream, uniqueId) results arrived."""
        n = self.n
        return len(np.unique(self.stream[:n] << 40 | self.ids[:n]))

    def reset(self) -> None:
        with self._lock:
            self.n = 0

    def wait(self, expected: int, quiet: float = 2.0, timeout: float = 120.0) -> None:
        """Until ``expected`` results came, or none came for ``quiet`` s."""
        deadline = time.monotonic() + timeout
        last, since = -1, time.monotonic()
        while self.n < expected and time.monotonic() < deadline:
            if self.n != last:
                last, since = self.n, time.monotonic()
            elif time.monotonic() - since > quiet:
                return
            time.sleep(0.05)

    def close(self) -> None:
        for channel in self._channels:
            channel.stopMonitor()


def run_trial(
    sources: list[Source], collector: Collector, pools: list, rate: float, seconds: float
) -> Trial:
    """Send a burst of ``rate * seconds`` frames, split over the sources; account for all."""
    before = pool_totals(pools)
    collector.reset()
    n = max(int(rate * seconds / len(sources)), 1)
    workers = [pid for pool in pools for pid in pool.pids]
    senders = [source.pid for source in sources]
    cpu_before = cpu_seconds(workers), cpu_seconds(senders), time.process_time()
    started = time.perf_counter()
    for source in sources:
        source.start_burst(rate / len(sources), n)
    bursts = [source.end_burst() for source in sources]
    sent, elapsed = sum(b[0] for b in bursts), max(b[1] for b in bursts)
    collector.wait(sent)
    cpu_after = cpu_seconds(workers), cpu_seconds(senders), time.process_time()
    time.sleep(0.5)
    got = collector.n
    distinct = collector.distinct()
    span = (collector.arrived[:got].max() - started) if got else float("inf")
    p50, p99 = np.percentile(collector.latency[:got], (50, 99)) if got else (0.0, 0.0)
    after = pool_totals(pools)
    cpu_ms = [(a - b) / sent * 1e3 for a, b in zip(cpu_after, cpu_before, strict=True)]
    return Trial(
        offered_hz=sent / elapsed if elapsed > 0 else rate,
        sent=sent,
        received=got,
        lost=sent - distinct,
        duplicates=got - distinct,
        sustained_hz=got / span,
        latency_p50_ms=float(p50) * 1e3,
        latency_p99_ms=float(p99) * 1e3,
        worker_latency_p99_ms=after["latency_p99_s"] * 1e3,
        dropped=after["dropped"] - before["dropped"],
        missed=after["missed"] - before["missed"],
        worker_cpu_ms=cpu_ms[0],
        source_cpu_ms=cpu_ms[1],
        collector_cpu_ms=cpu_ms[2],
    )


def pool_totals(pools: list) -> dict[str, float]:
    """Dropped and missed frames over all pools, and the worst worker p99 latency."""
    stats = [pool.stats() for pool in pools]
    return {
        "dropped": sum(s.dropped for s in stats),
        "missed": sum(s.missed for s in stats),
        "latency_p99_s": max(s.latency_p99_s for s in stats),
    }


def sweep(run, start: float, refine: int, limit: float) -> tuple[float, list[Trial]]:
    """Highest rate that :attr:`Trial.kept_up`: grow by 1.5x until it fails, then bisect."""
    trials = []
    good, bad, rate = 0.0, None, start
    while bad is None and rate <= limit:
        trial = run(rate)
        trials.append(trial)
        print(trial.line(), flush=True)
        if trial.kept_up:
            good, rate = rate, rate * 1.5
        else:
            bad = rate
    for _ in range(refine if bad is not None else 0):
        rate = (good + bad) / 2
        trial = run(rate)
        trials.append(trial)
        print(trial.line(), flush=True)
        if trial.kept_up:
            good = rate
        else:
            bad = rate
    return good, trials


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
    parser.add_argument("--bare", action="store_true", help="time the engine alone")
    parser.add_argument(
        "--copy-model",
        action="store_true",
        help="pipeline-only: a model that copies its input (ONNX Identity), no network",
    )
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    # The pool's settings (--model defaults to a random small phase model; per stream).
    add_settings_options(parser, defaults={"model": None, "input_channel": ""})
    return parser.parse_args(argv)


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    use_loopback()
    workdir = Path(tempfile.mkdtemp(prefix="ptychonn-stream-"))
    model = copy_model(workdir) if args.copy_model else args.model or random_model(workdir)
    if args.bare:
        rate = bare_engine(args, model)
        if args.json:
            args.json.write_text(json.dumps({"bare_frames_per_s": rate}, indent=2))
        return 0
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
        print(
            f"{args.streams} stream(s) x {args.n_workers} worker(s): "
            f"{facts['engine']} {' '.join(facts['gpu_names'])}"
        )
        top = args.max_rate if args.sweep else args.rate
        capacity = min(int(top * args.seconds), 2**21) + args.streams
        collector = Collector([pool.output_channels for pool in pools], capacity)
        run = functools.partial(run_trial, sources, collector, pools, seconds=args.seconds)
        if args.sweep:
            best, trials = sweep(run, args.rate, args.refine, args.max_rate)
            print(f"highest rate with no loss: {best:.1f} Hz")
        else:
            trials = [run(args.rate)]
            print(trials[0].line())
            best = trials[0].offered_hz if trials[0].kept_up else 0.0
        for pool in pools:
            pool.stop()  # before the collector: stopMonitor holds the GIL
        collector.close()
    if args.json:
        result = {"settings": vars(args) | {"model": str(model)}, "facts": facts}
        result |= {"best_lossless_hz": best, "trials": [asdict(t) for t in trials]}
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
