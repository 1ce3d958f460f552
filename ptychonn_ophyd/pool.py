"""Starting, watching and stopping the consumer processes that run PtychoNN on a stream.

Each worker is its own stock ``pvapy-hpc-consumer`` process (``--consumer-id k``)
running :class:`~ptychonn_ophyd.processor.InferPtychoNNImageProcessor`; pvapy's data
distributor hands each one runs of ``distributor_updates`` frames, and
``--oid-offset (n - 1) * updates + 1`` keeps pvapy's missed-frame count right.

Examples
--------
>>> config = PoolConfig(model="ptychonn.onnx", input_channel="ad:image", n_workers=2)
>>> with ConsumerPool(config) as pool:
...     pool.start(timeout=60.0)
...     pool.output_channels
['inference:1:output', 'inference:2:output']
"""

from __future__ import annotations

import os
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pvaccess as pva
from pydantic import BaseModel, ConfigDict, Field

from .engines import Precision
from .models import open_model
from .preprocess import PreprocessConfig
from .streaming.config import Output
from .streaming.stats import DROP_REASONS, REJECT_REASONS, drop_key, reject_key
from .streaming.worker import Worker, WorkerChannels, consumer_command, terminate


class PoolConfig(BaseModel):
    """What a :class:`ConsumerPool` runs.

    Attributes
    ----------
    model, backend, precision, batch_size, batch_timeout, preprocess, outputs,
    warmup_queue_size, threads
        Passed to every worker's processor (see
        :class:`~ptychonn_ophyd.streaming.config.ProcessorArgs`).
    input_channel
        The detector's NTNDArray channel.
    output_prefix
        Worker ``k`` publishes on ``<prefix>:<k>:output`` (and ``:amplitude``,
        ``:status``, ``:control``).
    n_workers
        Consumer processes.
    gpus
        ``"auto"`` (worker ``k`` on GPU ``(k - 1) mod count``) or GPU indices dealt
        round-robin to the workers.
    distributor_updates
        Consecutive frames the distributor gives one worker.
    server_queue_size
        Frames the input's server queues per worker (pvapy ``--server-queue-size``).
    status_period
        Seconds between status channel updates (pvapy ``--report-period``).
    wait_for_input
        :meth:`ConsumerPool.start` also waits until every worker is connected to
        ``input_channel``, so no frame published after it returns is missed.
    log_dir
        Where ``worker-<k>.log`` files go (default: a new temporary folder).
    log_level
        pvapy's ``--log-level`` for the workers.

    ``threads`` (ONNX Runtime's CPU threads) defaults to the cores shared out among
    the workers, so CPU workers do not fight over cores.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: Path
    input_channel: str
    output_prefix: str = "inference"
    n_workers: int = Field(1, ge=1, le=256)
    backend: Literal["auto", "tensorrt", "torch", "onnxruntime"] = "auto"
    precision: Precision = "fp32"
    gpus: Literal["auto"] | tuple[int, ...] = "auto"
    batch_size: int = Field(8, ge=1, le=4096)
    batch_timeout: float = Field(0.005, gt=0, le=60)
    preprocess: PreprocessConfig = PreprocessConfig()
    distributor_updates: int = Field(8, ge=1)
    outputs: tuple[Output, ...] = ("phase",)
    warmup_queue_size: int = Field(4096, ge=1)
    threads: int | None = Field(None, ge=1)
    server_queue_size: int = Field(100, ge=0)
    status_period: float = Field(1.0, gt=0)
    wait_for_input: bool = True
    log_dir: Path | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    def processor_args(self, consumer_id: int, parent_pid: int) -> dict[str, object]:
        """The ``--processor-args`` of worker ``consumer_id``."""
        gpu = self.gpus if self.gpus == "auto" else self.gpus[(consumer_id - 1) % len(self.gpus)]
        return {
            "model": str(Path(self.model).resolve()),
            "backend": self.backend,
            "precision": self.precision,
            "batch_size": self.batch_size,
            "batch_timeout": self.batch_timeout,
            "gpu": gpu,
            "preprocess": self.preprocess.model_dump(),
            "outputs": list(self.outputs),
            "warmup_queue_size": self.warmup_queue_size,
            "threads": self.threads or max(1, (os.cpu_count() or 1) // self.n_workers),
            "parent_pid": parent_pid,
        }

    def consumer_options(self) -> dict[str, object]:
        """pvapy options beyond the channels and the processor."""
        options: dict[str, object] = {
            "report-period": self.status_period,
            "report-stats": "user",
            "server-queue-size": self.server_queue_size,
            "log-level": self.log_level,
        }
        if self.n_workers > 1:
            options["distributor-updates"] = self.distributor_updates
            options["oid-offset"] = (self.n_workers - 1) * self.distributor_updates + 1
        return options


class PoolStartError(RuntimeError):
    """A worker did not get ready; the message names it and quotes its last log lines."""


class WorkerDiedError(RuntimeError):
    """A worker process ended while the pool ran; the message quotes its last log lines."""


@dataclass(frozen=True)
class PoolStats:
    """Frame accounting over all workers, from their latest status updates.

    ``received == inferred + dropped + sum(rejected.values()) + queue_depth``; frames
    the workers never received although the source sent them (uniqueId gaps) are
    ``missed``.  Latency is receipt to publish; the pool figures are the worst worker's.
    """

    received: int
    inferred: int
    dropped: int
    rejected: dict[str, int]
    rate_hz: float
    latency_p50_s: float
    latency_p99_s: float
    queue_depth: int
    per_worker: list[dict]
    missed: int = 0
    dropped_by_reason: dict[str, int] = field(default_factory=dict)
    ready: bool = False


class ConsumerPool:
    """``n_workers`` PtychoNN consumer processes on one input channel.

    Workers stop on :meth:`stop`, on leaving a ``with`` block (Ctrl-C included), when
    the pool is garbage-collected or the interpreter exits, and, should the parent be
    killed outright, by themselves: each watches its parent's PID and exits when it
    is gone.
    """

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        prefix = config.output_prefix
        self._channels = [WorkerChannels.of(prefix, k) for k in range(1, config.n_workers + 1)]
        self._workers: list[Worker] = []
        self._finalizer: weakref.finalize | None = None

    @property
    def output_channels(self) -> list[str]:
        """Phase result channels, one per worker."""
        return [c.output for c in self._channels]

    @property
    def amplitude_channels(self) -> list[str]:
        """Amplitude result channels; empty unless ``outputs`` asks for amplitude."""
        if "amplitude" not in self.config.outputs:
            return []
        return [c.amplitude for c in self._channels]

    @property
    def status_channels(self) -> list[str]:
        """pvapy status channels (``userStats`` holds the frame accounting)."""
        return [c.status for c in self._channels]

    @property
    def control_channels(self) -> list[str]:
        """pvapy control channels (``configure``, ``get_stats``, ``stop``)."""
        return [c.control for c in self._channels]

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers started."""
        return [w.process.pid for w in self._workers if w.process]

    @property
    def log_paths(self) -> list[Path]:
        """The workers' log files (pvapy's output and the processor's log lines)."""
        return [w.log_path for w in self._workers]

    def start(self, timeout: float = 60.0) -> None:
        """Start the workers and wait until every one reports its engine ready.

        Raises
        ------
        PoolStartError
            A worker exited or was not ready within ``timeout`` s; every worker is
            stopped before this is raised.
        """
        if self._workers:
            raise RuntimeError("this pool was started already; make a new one")
        log_dir = self.config.log_dir or Path(tempfile.mkdtemp(prefix="ptychonn-pool-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        self._workers = [self._worker(k, log_dir) for k in range(1, self.config.n_workers + 1)]
        self._finalizer = weakref.finalize(self, terminate, list(self._workers), 10.0)
        try:
            for worker in self._workers:
                worker.launch()
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def stats(self) -> PoolStats:
        """Counts, rate and latency summed over the workers (see :class:`PoolStats`)."""
        per_worker = [self._worker_stats(w) for w in self._workers]
        rejected = {r: sum(w["rejected"][r] for w in per_worker) for r in REJECT_REASONS}
        dropped = {r: sum(w["dropped_by_reason"][r] for w in per_worker) for r in DROP_REASONS}
        return PoolStats(
            received=sum(w["received"] for w in per_worker),
            inferred=sum(w["inferred"] for w in per_worker),
            dropped=sum(dropped.values()),
            rejected=rejected,
            rate_hz=sum(w["rate_hz"] for w in per_worker),
            latency_p50_s=max((w["latency_p50_s"] for w in per_worker), default=0.0),
            latency_p99_s=max((w["latency_p99_s"] for w in per_worker), default=0.0),
            queue_depth=sum(w["queue_depth"] for w in per_worker),
            per_worker=per_worker,
            missed=sum(w["missed"] for w in per_worker),
            dropped_by_reason=dropped,
            ready=bool(per_worker) and all(w["ready"] for w in per_worker),
        )

    def check_health(self) -> None:
        """Raise :class:`WorkerDiedError` if a worker process ended before :meth:`stop`."""
        if self._finalizer is None or not self._finalizer.alive:
            return
        for worker in self._workers:
            code = worker.exit_code()
            if code is not None:
                raise WorkerDiedError(
                    f"{worker.name} died with exit status {code}; its last log lines "
                    f"({worker.log_path}):\n{worker.log_tail()}"
                )

    def facts(self) -> dict[str, object]:
        """What runs: model, hash, backend, engine, GPUs and channels, for run metadata."""
        statuses = [self._worker_stats(w) for w in self._workers]
        first = statuses[0] if statuses else {}
        model_hash = first.get("model_hash") or open_model(self.config.model).model_hash
        return {
            "model": str(self.config.model),
            "model_hash": model_hash,
            "backend": first.get("backend", self.config.backend),
            "engine": first.get("engine", ""),
            "gpu_names": sorted({s["device"] for s in statuses if s["device"].startswith("cuda")}),
            "n_workers": self.config.n_workers,
            "batch_size": self.config.batch_size,
            "distributor_updates": self.config.distributor_updates,
            "input_channel": self.config.input_channel,
            "output_channels": self.output_channels,
            "amplitude_channels": self.amplitude_channels,
            "status_channels": self.status_channels,
            "pvapy_version": pva.__version__,
        }

    def swap_model(self, model: str | Path, timeout: float = 60.0) -> str:
        """Swap every worker to ``model`` while frames flow; returns its model hash.

        Each worker builds the new engine beside the running one and switches between
        two batches, so results from then on carry the new ``modelHash``.

        Raises
        ------
        ValueError
            A worker refused the model (the message says why); it keeps the old one.
        TimeoutError
            Not every worker answered within ``timeout`` s.
        ptychonn_ophyd.streaming.control.ControlError
            A worker's control channel did not take the command.
        """
        new = open_model(model)
        asked = {w: self._user_stats(w).get("configured", 0) for w in self._workers}
        for worker in self._workers:
            worker.send("configure", {"model": str(Path(model).resolve())})
        deadline = time.monotonic() + timeout
        while asked:
            for worker, before in list(asked.items()):
                user = self._user_stats(worker)
                if user.get("configured", 0) > before:
                    if user["configureError"]:
                        raise ValueError(f"{worker.name}: {user['configureError']}")
                    if user["modelHash"] == new.model_hash:
                        del asked[worker]
            if asked and time.monotonic() > deadline:
                names = ", ".join(w.name for w in asked)
                raise TimeoutError(f"{names} did not take model {new.model_hash} in {timeout} s")
            time.sleep(0.05)
        return new.model_hash

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every worker: SIGINT, then SIGKILL after ``timeout`` s.  Idempotent."""
        if self._finalizer is None or not self._finalizer.detach():
            return
        terminate(self._workers, timeout)
        for worker in self._workers:
            worker.close()

    def __enter__(self) -> ConsumerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _worker(self, consumer_id: int, log_dir: Path) -> Worker:
        config = self.config
        command = consumer_command(
            consumer_id,
            config.input_channel,
            config.output_prefix,
            config.processor_args(consumer_id, os.getpid()),
            config.consumer_options(),
        )
        log_path = log_dir / f"worker-{consumer_id}.log"
        return Worker(consumer_id, command, log_path, self._channels[consumer_id - 1])

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(self._workers)
        while pending:
            for worker in pending:
                code = worker.exit_code()
                if code is not None:
                    raise PoolStartError(
                        f"{worker.name} exited with status {code} while starting; its last "
                        f"log lines ({worker.log_path}):\n{worker.log_tail()}"
                    )
            waiting = {w: self._not_ready(w) for w in pending}
            pending = [w for w, why in waiting.items() if why]
            if pending and time.monotonic() > deadline:
                worker = pending[0]
                raise PoolStartError(
                    f"{worker.name} not ready after {timeout} s: {waiting[worker]}; its last "
                    f"log lines ({worker.log_path}):\n{worker.log_tail()}"
                )
            if pending:
                time.sleep(0.1)

    def _not_ready(self, worker: Worker) -> str:
        status = worker.status()
        if status is None:
            return f"no update on its status channel {worker.channels.status} yet"
        if not status["userStats"]["ready"]:
            return status["userStats"]["error"] or "engine not ready"
        if self.config.wait_for_input and status["receiverStats"]["nReceived"] < 1:
            return f"not connected to input channel {self.config.input_channel}"
        return ""

    @staticmethod
    def _user_stats(worker: Worker) -> dict:
        return (worker.status() or {}).get("userStats", {})

    def _worker_stats(self, worker: Worker) -> dict:
        status = worker.status() or {}
        user = status.get("userStats", {})
        return {
            "consumer_id": worker.consumer_id,
            "pid": worker.process.pid if worker.process else None,
            "alive": worker.exit_code() is None,
            "ready": bool(user.get("ready", False)),
            "received": user.get("received", 0),
            "inferred": user.get("inferred", 0),
            "dropped": user.get("dropped", 0),
            "dropped_by_reason": {r: user.get(drop_key(r), 0) for r in DROP_REASONS},
            "rejected": {r: user.get(reject_key(r), 0) for r in REJECT_REASONS},
            "missed": status.get("processorStats", {}).get("nMissed", 0),
            "queue_depth": user.get("queueDepth", 0),
            "rate_hz": user.get("inferenceRate", 0.0),
            "latency_p50_s": user.get("latencyP50", 0.0),
            "latency_p99_s": user.get("latencyP99", 0.0),
            "model_hash": user.get("modelHash", ""),
            "backend": user.get("backend", ""),
            "engine": user.get("engine", ""),
            "device": user.get("device", ""),
            "error": user.get("error", ""),
            "output_channel": worker.channels.output,
        }
