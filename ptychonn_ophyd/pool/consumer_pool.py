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

import logging
import multiprocessing.util
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pvaccess as pva

from ptychonn_ophyd.errors import ArgsError, PoolStartError, WorkerDiedError
from ptychonn_ophyd.models import open_model
from ptychonn_ophyd.paths import logs_dir
from ptychonn_ophyd.pool.process import Worker, consumer_command, terminate
from ptychonn_ophyd.settings import PoolConfig
from ptychonn_ophyd.wire import (
    DROP_REASONS,
    REJECT_REASONS,
    FinalCounts,
    WorkerChannels,
    WorkerStatus,
)

log = logging.getLogger(__name__)

PROGRESS_FIRST_S = 2.0
PROGRESS_PERIOD_S = 5.0
"""A start still waiting says what it waits for after this long, then this often."""

START_TIMEOUT_S = 60.0
"""Seconds a start waits, by default, for every worker to load its engine and connect to
its input channel before it gives up (a detector that is not there ends the wait)."""

STOP_MARGIN_S = 10.0
"""Seconds :meth:`ConsumerPool.stop` gives a worker beyond its ``stop_drain`` (to free its
engine and make pvapy's last report) before it kills it."""

STATUS_WAIT_PERIODS = 5
"""Status periods that :meth:`ConsumerPool.stats` waits at most for an update it asks for."""


@dataclass(frozen=True)
class PoolStats:
    """Frame accounting over all workers, from their latest status updates.

    ``received == inferred + dropped + sum(rejected.values()) + queue_depth``; frames
    the workers never received although the source sent them (uniqueId gaps) are
    ``missed``.  ``published`` counts results put on the output channels: a stage
    attached to them (the seed's TIFF writer) should process as many.  Latency is
    receipt to publish; the pool figures are the worst worker's.
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
    published: int = 0


class ConsumerPool:
    """``n_workers`` PtychoNN consumer processes on one input channel, or the share
    ``consumer_ids`` of them that runs on this host (pvapy's distributor shares the
    frames among the workers of every host that connect).

    Workers stop on :meth:`stop`, on leaving a ``with`` block (Ctrl-C included), when
    the pool is garbage-collected or the interpreter exits, and, should the parent be
    killed outright, by themselves: each watches its parent's PID and exits when it
    is gone.
    """

    def __init__(self, config: PoolConfig, consumer_ids: Sequence[int] | None = None) -> None:
        self.config = config
        self.consumer_ids = _consumer_ids(config.n_workers, consumer_ids)
        """The workers this pool runs: all ``n_workers``, or one host's share of them."""
        prefix = config.output_prefix
        self._channels = [WorkerChannels.of(prefix, k) for k in self.consumer_ids]
        self._workers: list[Worker] = []
        self._finalizer: weakref.finalize | None = None
        self._log_dir: Path | None = None
        self._own_log_dir = False
        self._failed = False
        self.final_counts: list[FinalCounts] = []
        """What each worker wrote as it stopped (:meth:`stop` fills it)."""

    @property
    def output_channels(self) -> list[str]:
        """Phase result channels, one per worker."""
        return [c.output for c in self._channels]

    @property
    def batch_channels(self) -> list[str]:
        """Batch result channels, one per worker (:class:`~ptychonn_ophyd.wire.ResultBatch`)."""
        return [c.batch for c in self._channels]

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

    def start(
        self, timeout: float = START_TIMEOUT_S, progress: Callable[[str], None] | None = None
    ) -> None:
        """Start the workers and wait until every one reports its engine ready.

        While it waits, ``progress`` (default: this module's logger at INFO) is told
        every few seconds which worker it waits for and why, so a start that cannot
        finish (no server on the input channel) is not silent.

        Raises
        ------
        PoolStartError
            A worker exited or was not ready within ``timeout`` s; every worker is
            stopped before this is raised.
        """
        if self._workers:
            raise RuntimeError("this pool was started already; make a new one")
        log_dir = self._make_log_dir()
        self._workers = [self._worker(k, log_dir) for k in self.consumer_ids]
        self._finalizer = weakref.finalize(
            self,
            _stop_unattended,
            list(self._workers),
            self._stop_timeout(None),
            log_dir if self._own_log_dir else None,
        )
        # A multiprocessing child (bluesky-queueserver's RE worker, whose environment
        # closes by ending the process) leaves through os._exit, past atexit and so past
        # weakref.finalize; multiprocessing runs its own finalizers first.
        multiprocessing.util.Finalize(self, self._finalizer, exitpriority=0)
        try:
            for worker in self._workers:
                worker.launch()
            self._wait_ready(timeout, progress or log.info)
        except BaseException:
            self._failed = True
            self.stop()
            raise

    @property
    def log_dir(self) -> Path | None:
        """The folder of the workers' logs: ``config.log_dir``, or a new one under
        :func:`~ptychonn_ophyd.paths.logs_dir` that a clean :meth:`stop` removes."""
        return self._log_dir

    def _make_log_dir(self) -> Path:
        if self.config.log_dir is not None:
            self._log_dir = self.config.log_dir
            self._log_dir.mkdir(parents=True, exist_ok=True)
        else:
            root = logs_dir()
            root.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            name = f"{stamp}-{self.config.output_prefix}-"
            self._log_dir = Path(tempfile.mkdtemp(prefix=name, dir=root))
            self._own_log_dir = True
        return self._log_dir

    def stats(self, since: float | None = None) -> PoolStats:
        """Counts, rate and latency summed over the workers (see :class:`PoolStats`).

        Each worker publishes its counts every ``status_period`` s, so they can be that
        old.  With ``since`` (a ``time.time()``), first wait until every live worker has
        published an update made after that moment, for at most
        :data:`STATUS_WAIT_PERIODS` status periods.
        """
        if since is not None:
            self._wait_status_after(since)
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
            published=sum(w["published"] for w in per_worker),
        )

    def check_health(self) -> None:
        """Raise :class:`WorkerDiedError` if a worker process ended before :meth:`stop`."""
        if self._finalizer is None or not self._finalizer.alive:
            return
        for worker in self._workers:
            code = worker.exit_code()
            if code is not None:
                self._failed = True
                raise WorkerDiedError(
                    f"{worker.name} died with exit status {code} "
                    f"({_counts(self._status(worker))}); its last log lines "
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
            "consumer_ids": list(self.consumer_ids),
            "batch_size": self.config.batch_size,
            "distributor_updates": self.config.distributor_updates,
            "input_channel": self.config.input_channel,
            "output_channels": self.output_channels,
            "batch_channels": self.batch_channels,
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
        ptychonn_ophyd.errors.ControlError
            A worker's control channel did not take the command.
        """
        new = open_model(model)
        asked = {w: self._status(w).configured for w in self._workers}
        for worker in self._workers:
            worker.send("configure", {"model": str(Path(model).resolve())})
        deadline = time.monotonic() + timeout
        while asked:
            for worker, before in list(asked.items()):
                status = self._status(worker)
                if status.configured > before:
                    if status.configure_error:
                        raise ValueError(f"{worker.name}: {status.configure_error}")
                    if status.model_hash == new.model_hash:
                        del asked[worker]
            if asked and time.monotonic() > deadline:
                names = ", ".join(w.name for w in asked)
                raise TimeoutError(f"{names} did not take model {new.model_hash} in {timeout} s")
            time.sleep(0.05)
        return new.model_hash

    def stop(self, timeout: float | None = None) -> None:
        """Stop every worker: SIGINT, then SIGKILL after ``timeout`` s.  Idempotent.

        A worker infers its queued frames for up to ``stop_drain`` s and counts the rest
        as dropped (``stopped``), so the default ``timeout`` is ``stop_drain`` +
        :data:`STOP_MARGIN_S`.  The counts each worker wrote last are then in
        :attr:`final_counts`; a worker that wrote none (killed, or dead before) is named
        in a warning, since the frames it still held are counted nowhere.
        """
        if self._finalizer is None or not self._finalizer.detach():
            return
        died = [w.name for w in self._workers if w.exit_code() is not None]
        terminate(self._workers, self._stop_timeout(timeout))
        for worker in self._workers:
            worker.close()
        self._read_final_counts(died)
        self._tidy_logs(died)

    def _stop_timeout(self, timeout: float | None) -> float:
        return self.config.stop_drain + STOP_MARGIN_S if timeout is None else timeout

    def _read_final_counts(self, died: list[str]) -> None:
        """Fill :attr:`final_counts`; warn of a worker killed before it wrote them (one
        that ended before the stop was reported as such already)."""
        for worker in self._workers:
            final = worker.final_counts()
            if final is not None:
                self.final_counts.append(final)
            elif worker.name not in died:
                self._failed = True
                log.warning(
                    "%s was killed before it wrote its final counts: frames it still held "
                    "are not counted; its log: %s",
                    worker.name,
                    worker.log_path,
                )

    def _tidy_logs(self, died: list[str]) -> None:
        """Remove the logs of a clean run; keep them, and say where, after a failure.

        A folder the user chose (``config.log_dir``) is always kept.
        """
        if not self._own_log_dir:
            return
        if died and not self._failed:
            log.warning(
                "%s ended before stop; worker logs kept in %s", ", ".join(died), self._log_dir
            )
        elif self._failed:
            log.info("worker logs kept in %s", self._log_dir)
        else:
            shutil.rmtree(self._log_dir, ignore_errors=True)

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
        channels = self._channels[self.consumer_ids.index(consumer_id)]
        return Worker(consumer_id, command, log_path, channels)

    def _wait_ready(self, timeout: float, progress: Callable[[str], None]) -> None:
        started = time.monotonic()
        deadline = started + timeout
        next_report = started + PROGRESS_FIRST_S
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
            now = time.monotonic()
            if pending and now > deadline:
                raise PoolStartError(_not_ready_error(pending[0], waiting[pending[0]], timeout))
            if pending and now >= next_report:
                progress(_waiting_line(pending, waiting[pending[0]], now - started))
                next_report = now + PROGRESS_PERIOD_S
            if pending:
                time.sleep(0.1)

    def _not_ready(self, worker: Worker) -> str:
        status = worker.status()
        if status is None:
            return f"no update on its status channel {worker.channels.status} yet"
        if not status.ready:
            return status.error or "engine not ready"
        if self.config.wait_for_input and not status.connected:
            return f"not connected to input channel {self.config.input_channel}"
        return ""

    def _wait_status_after(self, moment: float) -> None:
        """Wait until every live worker's status was made after ``moment``."""
        limit = STATUS_WAIT_PERIODS * self.config.status_period
        deadline = time.monotonic() + limit
        while stale := [w.name for w in self._workers if self._stale(w, moment)]:
            if time.monotonic() > deadline:
                log.warning(
                    "no new status from %s in %g s; counts may lag", ", ".join(stale), limit
                )
                return
            time.sleep(0.02)

    def _stale(self, worker: Worker, moment: float) -> bool:
        return worker.exit_code() is None and self._status(worker).published_at < moment

    @staticmethod
    def _status(worker: Worker) -> WorkerStatus:
        return worker.status() or WorkerStatus()

    def _worker_stats(self, worker: Worker) -> dict:
        status = self._status(worker)
        return {
            "consumer_id": worker.consumer_id,
            "pid": worker.process.pid if worker.process else None,
            "alive": worker.exit_code() is None,
            "ready": status.ready,
            "received": status.received,
            "inferred": status.inferred,
            "published": status.published,
            "dropped": status.dropped,
            "dropped_by_reason": status.dropped_by_reason,
            "rejected": status.rejected,
            "missed": status.missed,
            "queue_depth": status.queue_depth,
            "rate_hz": status.rate_hz,
            "latency_p50_s": status.latency_p50_s,
            "latency_p99_s": status.latency_p99_s,
            "model_hash": status.model_hash,
            "backend": status.backend,
            "engine": status.engine,
            "device": status.device,
            "error": status.error,
            "output_channel": worker.channels.output,
        }


def _consumer_ids(n_workers: int, chosen: Sequence[int] | None) -> tuple[int, ...]:
    """The consumer ids a pool runs: ``chosen`` (one host's share of ``n_workers``), or all.

    Raises
    ------
    ArgsError
        An id is not one of ``1..n_workers``, or repeats.
    """
    if chosen is None:
        return tuple(range(1, n_workers + 1))
    ids = tuple(int(k) for k in chosen)
    outside = [k for k in ids if not 1 <= k <= n_workers]
    if outside or len(set(ids)) != len(ids) or not ids:
        raise ArgsError(
            f"consumer_ids: {', '.join(map(str, ids)) or 'none'} is not a set of distinct ids "
            f"among the pool's {n_workers} workers (1 to {n_workers})"
        )
    return ids


def _counts(status: WorkerStatus) -> str:
    """A worker's last frame counts in words, for the message of its death."""
    return (
        f"its last status: {status.received} received, {status.inferred} inferred, "
        f"{status.dropped} dropped, {sum(status.rejected.values())} rejected, "
        f"{status.queue_depth} queued"
    )


def _waiting_line(pending: list[Worker], why: str, waited: float) -> str:
    """One line saying which worker a start waits for, why, and for how long."""
    others = f" and {len(pending) - 1} more" if len(pending) > 1 else ""
    return f"waiting for {pending[0].name}{others}: {why} ({waited:.0f} s)"


def _not_ready_error(worker: Worker, why: str, timeout: float) -> str:
    """The message of a start that timed out.

    Not hearing the input channel is the whole story (nobody serves it yet), so it is
    one line naming the log; anything else quotes the log, where the worker says more.
    """
    head = f"{worker.name} not ready after {timeout:g} s: {why}"
    if why.startswith("not connected to input channel"):
        return f"{head}; its log: {worker.log_path}"
    return f"{head}; its last log lines ({worker.log_path}):\n{worker.log_tail()}"


def _stop_unattended(workers: list[Worker], timeout: float, own_log_dir: Path | None) -> None:
    """What :meth:`ConsumerPool.stop` does when nobody called it (the pool collected, or
    the interpreter leaving with a warm pool): stop every worker, and remove the log
    folder made for them if each one wrote its final counts (a clean end)."""
    terminate(workers, timeout)
    if own_log_dir is None:
        return
    if all(worker.final_counts() is not None for worker in workers):
        shutil.rmtree(own_log_dir, ignore_errors=True)
    else:
        log.warning("worker logs kept in %s", own_log_dir)
