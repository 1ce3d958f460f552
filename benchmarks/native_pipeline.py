"""Our pipeline with a native receive path, in the same trials as ``stream.py``'s pool.

What issue 27 asks to measure before a native worker kind is built: how fast one worker
keeps up once no Python runs per frame.  One worker process: a pvxs monitor
(``benchmarks/native/receiver.cpp``, built here with g++ against the ``pvxslibs`` wheel
that p4p brings) decodes each frame on pvxs's own thread, without the GIL, straight into
whole-batch float32 buffers with its uniqueId, time, ``x``/``y``/``point`` attributes and
time of receipt; Python takes each batch, computes its input moments, infers it with the
engine and publishes it on ``<prefix>:1:batch`` as the pvapy worker does
(:class:`~ptychonn_ophyd.worker.output.BatchRecord`), where ``stream.py``'s collectors
read it.  Every frame is accounted for as in ``stream.py``: dropped (no free buffer, or
the engine raised), rejected (not a frame of the expected size and a numeric type),
missed (sent, never received), not in time.

A prototype, not the product: no control or status channel, no crop or binning (the
frames must be the model's input size), no handling of a source that restarts, one
stream of one worker.  ``--compare-passthrough`` sweeps pvapy's passthrough on the same
source settings, as ``stream.py`` does.  Takes ``stream.py``'s options;
``NATIVE_RECEIVER`` names a receiver library built elsewhere (a host without g++).

Example (the 2-core comparison of BENCHMARKS.md)::

    python benchmarks/native_pipeline.py --compare-passthrough --copy-model \\
        --backend onnxruntime --threads 1 --rate 4000 --seconds 3 --batch-size 32 \\
        --batch-timeout 0.002 --refine 2 --server-queue-size 1000
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib.util
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import stream
from stream import Collectors, Source, cpu_seconds, make_trial, measure, pool_deltas, wait_for

from ptychonn_ophyd.loopback import use_loopback

RECEIVER_SOURCE = Path(__file__).parent / "native" / "receiver.cpp"
TAGS = 6
"""Per frame the receiver writes uniqueId, frame time, x, y, point and time of receipt."""
RECEIPT = 5
"""The column of a frame's time of receipt (``perf_counter``'s clock) among its tags."""
COUNTS = (
    "received",
    "dropped",
    "rejected",
    "missed",
    "server_squashed",
    "client_squashed",
    "deepest_queue",
)
"""What ``rx_counts`` reports, in its order."""
STAGES = ("moments", "engine", "publish")
"""The inference thread's stages, timed batch by batch."""
READY_TIMEOUT = 600.0
"""Seconds the worker process may take to load its engine and subscribe."""
BUFFERED_FRAMES = 4096
"""Frames the receiver's batch buffers hold, as the pvapy worker's warm-up queue."""


# -- the receiver library -----------------------------------------------------------------


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"error: {name} is not installed (pip install pvxslibs)")
    return Path(spec.submodule_search_locations[0])


def build_receiver(folder: Path) -> Path:
    """The receiver library: ``NATIVE_RECEIVER``, or built from its source into ``folder``.

    pvxslibs is built with the pre-C++11 string ABI (manylinux2014), so the receiver is too.
    """
    if built := os.environ.get("NATIVE_RECEIVER"):
        return Path(built)
    compiler = shutil.which("g++")
    if compiler is None:
        raise SystemExit("error: no g++ to build the receiver; set NATIVE_RECEIVER to one built")
    pvxs, epics = _package_dir("pvxslibs"), _package_dir("epicscorelibs")
    include = [pvxs / "include", epics / "include"]
    include += [epics / "include" / "os" / "Linux", epics / "include" / "compiler" / "gcc"]
    library = folder / "libreceiver.so"
    command = [compiler, "-O2", "-std=c++17", "-D_GLIBCXX_USE_CXX11_ABI=0", "-shared", "-fPIC"]
    command += ["-o", str(library), str(RECEIVER_SOURCE), *(f"-I{p}" for p in include)]
    command += [f"-L{pvxs / 'lib'}", f"-L{epics / 'lib'}", "-lpvxs", "-lCom"]
    subprocess.run(command, check=True)
    return library


def load_receiver(library: Path) -> ctypes.CDLL:
    """The receiver, with pvxs and its EPICS libCom loaded privately (``RTLD_LOCAL``):
    pvapy's own, older libCom is in the same process."""
    pvxs = _package_dir("pvxslibs") / "lib"
    ctypes.CDLL(str(next(pvxs.glob("libpvxs.so.*"))), mode=os.RTLD_LOCAL)
    lib = ctypes.CDLL(str(library), mode=os.RTLD_LOCAL)
    c = ctypes
    lib.rx_open.restype = c.c_void_p
    ints, pointer = [c.c_int] * 3, c.c_void_p  # buffers, batch, pixels; arrays
    lib.rx_open.argtypes = [c.c_char_p, *ints, c.c_double, pointer, pointer, c.c_int]
    lib.rx_take.restype = c.c_int
    lib.rx_take.argtypes = [c.c_void_p, c.c_double, c.POINTER(c.c_int)]
    lib.rx_release.argtypes = [c.c_void_p, c.c_int]
    lib.rx_counts.argtypes = [c.c_void_p, c.c_void_p]
    lib.rx_close.argtypes = [c.c_void_p]
    return lib


class Receiver:
    """Whole batches of one channel's frames, from the native receiver."""

    def __init__(
        self,
        lib: ctypes.CDLL,
        channel: str,
        shape: tuple[int, int],
        batch: int,
        timeout: float,
        queue_size: int,
    ) -> None:
        n_buffers = max(2, BUFFERED_FRAMES // batch)
        self.frames = np.zeros((n_buffers, batch, *shape), np.float32)
        self.tags = np.zeros((n_buffers, batch, TAGS))
        self._lib = lib
        self._n = ctypes.c_int()
        self._handle = lib.rx_open(
            channel.encode(),
            n_buffers,
            batch,
            shape[0] * shape[1],
            timeout,
            self.frames.ctypes.data,
            self.tags.ctypes.data,
            queue_size,
        )

    def take(self, idle: float) -> tuple[int, int] | None:
        """``(buffer, n_frames)`` of the next batch, or ``None`` after ``idle`` s without."""
        buffer = self._lib.rx_take(self._handle, idle, ctypes.byref(self._n))
        return (buffer, self._n.value) if buffer >= 0 else None

    def release(self, buffer: int) -> None:
        """Give a taken buffer back for new frames."""
        self._lib.rx_release(self._handle, buffer)

    def counts(self) -> dict[str, int]:
        """:data:`COUNTS` since the receiver opened."""
        out = np.zeros(len(COUNTS), np.int64)
        self._lib.rx_counts(self._handle, out.ctypes.data)
        return dict(zip(COUNTS, out.tolist(), strict=True))

    def close(self) -> None:
        """End the subscription; the arrays stay, the handle does not."""
        self._lib.rx_close(self._handle)


# -- the worker process -------------------------------------------------------------------


class NativeWorker:
    """Receive, infer and publish batches until :meth:`stop`; count what was lost, and
    time the inference thread's stages."""

    def __init__(self, receiver: Receiver, engine, record) -> None:
        from ptychonn_ophyd.worker.stats import FrameCounts

        self._receiver, self._engine, self._record = receiver, engine, record
        self._counts = FrameCounts()
        self._stages = dict.fromkeys(STAGES, 0.0)
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.is_set():
            if (batch := self._receiver.take(0.1)) is not None:
                buffer, n = batch
                self._counts.take(n)
                try:
                    self._infer(buffer, n)
                finally:
                    self._receiver.release(buffer)

    def _infer(self, buffer: int, n: int) -> None:
        from ptychonn_ophyd.moments import frame_moments
        from ptychonn_ophyd.wire import FRAME_TAGS, INPUT_MOMENT_FIELDS, ResultBatch

        inputs, tags = self._receiver.frames[buffer, :n], self._receiver.tags[buffer, :n]
        begun = time.perf_counter()
        totals, centroids = frame_moments(inputs)
        moments = time.perf_counter()
        try:
            prediction = self._engine.infer(inputs)
        except Exception:  # counted, as the pvapy worker counts it, and the stream goes on
            self._counts.drop_batch("error", n)
            return
        inferred = time.perf_counter()
        frames = {name: tags[:, k] for k, name in enumerate(FRAME_TAGS)}
        frames.update(zip(INPUT_MOMENT_FIELDS, (totals, *centroids.T), strict=True))
        latencies = time.perf_counter() - tags[:, RECEIPT]
        self._record.publish(
            ResultBatch(1, self._engine.model_hash, 0, 0, time.time(), frames, prediction.phase)
        )
        self._counts.record_batch(latencies)
        done = time.perf_counter()
        spans = (moments - begun, inferred - moments, done - inferred)
        for stage, seconds in zip(STAGES, spans, strict=True):
            self._stages[stage] += seconds

    def totals(self) -> dict:
        """The counts of ``stream.pool_totals`` (received, dropped by reason, rejected,
        missed: uniqueId gaps; the p99 of the last frames' receipt to publish), the
        receiver's own counts and the inference thread's seconds by stage."""
        counts = self._receiver.counts()
        dropped = dict(self._counts.dropped)
        dropped["queue_full"] += counts["dropped"]
        return {
            "received": counts["received"],
            "dropped_by_reason": dropped,
            "rejected": counts["rejected"],
            "missed": counts["missed"],
            "latency_p99_s": self._counts.latency_percentiles()[1],
            "receiver": counts,
            "stages": dict(self._stages),
        }

    def stop(self) -> None:
        self._stop.set()


def serve_native(channel: str, prefix: str, settings: dict, library: str, pipe: Connection) -> None:
    """Worker process: the native receiver on ``channel``, the engine, and the batch
    channel ``<prefix>:1:batch``; answers ``"totals"`` until it is sent ``None``."""
    use_loopback()
    import pvaccess as pva

    from ptychonn_ophyd.engines import create_engine
    from ptychonn_ophyd.worker.output import BatchRecord

    lib = load_receiver(Path(library))
    engine = create_engine(
        settings["model"],
        backend=settings["backend"],
        precision=settings["precision"],
        max_batch=settings["batch_size"],
        threads=settings["threads"],
    )
    server = pva.PvaServer()
    record = BatchRecord(server, f"{prefix}:1:batch")
    server.start()
    receiver = Receiver(
        lib,
        channel,
        engine.input_shape,
        settings["batch_size"],
        settings["batch_timeout"],
        settings["server_queue_size"],
    )
    worker = NativeWorker(receiver, engine, record)
    thread = threading.Thread(target=worker.run, name="inference")
    thread.start()
    pipe.send(engine.description)
    try:
        while pipe.recv() is not None:
            pipe.send(worker.totals())
    finally:
        worker.stop()
        thread.join()
        receiver.close()
        server.stop()


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of process ``pid``'s threads, summed by thread name (``/proc``): where
    the worker's CPU goes, pvxs's receiving, Python's inference thread and pvAccess's
    sending apart."""
    tick = os.sysconf("SC_CLK_TCK")
    seconds: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            seconds[name] = seconds.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return seconds


@dataclass
class NativeBench:
    """The native worker, its source and the collector of its batch channel."""

    source: Source
    worker: multiprocessing.Process
    pipe: Connection
    collectors: Collectors
    seconds: float
    quiet: float
    deadline: float

    def totals(self) -> dict:
        self.pipe.send("totals")
        return self.pipe.recv()

    def trial(self, rate: float) -> stream.Trial:
        """One burst of ``rate * seconds`` frames, accounted for as ``stream.py`` does."""
        before = self.totals()
        self.collectors.take()
        n = max(int(rate * self.seconds), 1)
        pids = [self.worker.pid], [self.source.pid]
        cpu_before = tuple(cpu_seconds(p) for p in pids)
        threads_before = thread_cpu(self.worker.pid)
        started = time.perf_counter()
        self.source.start_burst(rate, n)
        burst = self.source.end_burst()
        waited = wait_for(self.collectors.count, burst.sent, self.quiet, self.deadline)
        cpu_ms = tuple(
            (cpu_seconds(p) - c) / burst.sent * 1e3 for p, c in zip(pids, cpu_before, strict=True)
        )
        threads = thread_cpu(self.worker.pid)
        collected = self.collectors.take()
        after = self.totals()
        busy = {name: s - threads_before.get(name, 0.0) for name, s in threads.items()}
        shown = ", ".join(
            f"{name} {s / burst.sent * 1e6:.1f}"
            for name, s in sorted(busy.items(), key=lambda kv: -kv[1])
            if s > 0.01
        )
        stages = ", ".join(
            f"{k} {(after['stages'][k] - before['stages'][k]) / burst.sent * 1e6:.1f}"
            for k in STAGES
        )
        print(f"    worker threads, CPU µs a frame: {shown}", flush=True)
        print(f"    inference thread, wall µs a frame: {stages}", flush=True)
        print(f"    receiver: {after['receiver']}", flush=True)
        counts = pool_deltas(after, before)
        return make_trial(
            [burst],
            burst.seconds,
            started,
            collected,
            counts,
            after["latency_p99_s"],
            cpu_ms,
            waited,
        )


def run_native(args: argparse.Namespace, model: Path, library: Path) -> dict:
    """Trials of the native worker on a source like ``stream.run_pool``'s."""
    prefix = f"bench{uuid.uuid4().hex[:8]}n"
    channel = f"{prefix}:image"
    settings = {
        "model": str(model),
        "backend": args.backend,
        "precision": args.precision,
        "batch_size": args.batch_size,
        "batch_timeout": args.batch_timeout,
        "threads": args.threads,
        "server_queue_size": args.server_queue_size,
    }
    context = multiprocessing.get_context("spawn")
    with contextlib.ExitStack() as stack:
        source = Source(channel, (args.size, args.size), args.dtype)
        stack.callback(source.close)
        pipe, theirs = context.Pipe()
        worker = context.Process(
            target=serve_native, args=(channel, prefix, settings, str(library), theirs)
        )
        worker.start()
        stack.callback(_end_worker, worker, pipe)
        engine = _wait_ready(worker, pipe, READY_TIMEOUT)
        collectors = Collectors([[f"{prefix}:1:batch"]], 1)
        stack.callback(collectors.close)
        print(
            f"native worker: {engine}, batch {args.batch_size}, server queue "
            f"{args.server_queue_size}",
            flush=True,
        )
        bench = NativeBench(
            source, worker, pipe, collectors, args.seconds, args.quiet, args.deadline
        )
        return measure(bench.trial, args, "native worker")


def _wait_ready(worker: multiprocessing.Process, pipe: Connection, timeout: float) -> str:
    """The engine's description, once the worker process is ready."""
    deadline = time.monotonic() + timeout
    while not pipe.poll(1.0):
        if not worker.is_alive():
            raise SystemExit(
                f"error: the native worker exited (code {worker.exitcode}) before it was "
                "ready; its error is above"
            )
        if time.monotonic() > deadline:
            raise SystemExit(f"error: the native worker was not ready in {timeout:g} s")
    return pipe.recv()


def _end_worker(worker: multiprocessing.Process, pipe: Connection) -> None:
    with contextlib.suppress(OSError):
        pipe.send(None)
    worker.join(30)
    if worker.is_alive():
        worker.kill()


def main(argv: list[str] | None = None) -> int:
    args = stream.parse_args(argv)
    if args.streams != 1 or args.n_workers != 1 or args.bare or args.passthrough:
        raise SystemExit("error: the native worker runs one stream of one worker, in trials")
    use_loopback()
    workdir = Path(tempfile.mkdtemp(prefix="ptychonn-native-"))
    library = build_receiver(workdir)
    model = stream.copy_model(workdir) if args.copy_model else args.model
    model = model or stream.random_model(workdir)
    result: dict = {"settings": vars(args) | {"model": str(model)}}
    result |= run_native(args, model, library)
    if args.compare_passthrough:
        result |= stream.run_passthrough(args, workdir)
        result["ratio"] = stream.compare(
            result["best_lossless_hz"], result["passthrough_best_lossless_hz"]
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
