"""What every pool of workers offers its user, whoever started the workers: readiness,
frame accounting summed over the workers, facts for run metadata, and model swaps.

:class:`WorkerPool` reads its workers through their status and control channels only
(:class:`~ptychonn_ophyd.pool.member.Member`); how the workers come to run and end is
its subclasses' part: :class:`~ptychonn_ophyd.pool.consumer_pool.ConsumerPool` starts
them here, :class:`~ptychonn_ophyd.pool.remote.RemotePool` finds them on other hosts.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import pvaccess as pva

from ptychonn_ophyd.errors import ArgsError, PoolStartError
from ptychonn_ophyd.models import model_hash_of, open_model
from ptychonn_ophyd.pool.member import Member
from ptychonn_ophyd.settings import PoolConfig
from ptychonn_ophyd.wire import DROP_REASONS, REJECT_REASONS, WorkerChannels, WorkerStatus

log = logging.getLogger(__name__)

PROGRESS_FIRST_S = 2.0
PROGRESS_PERIOD_S = 5.0
"""A start still waiting says what it waits for after this long, then this often."""

START_TIMEOUT_S = 60.0
"""Seconds a start waits, by default, for every worker to load its engine and connect to
its input channel before it gives up (a detector that is not there ends the wait)."""

STATUS_WAIT_PERIODS = 5
"""Status periods that :meth:`WorkerPool.stats` waits at most for an update it asks for."""


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


M = TypeVar("M", bound=Member)


class WorkerPool(ABC, Generic[M]):
    """The ``consumer_ids`` (default: all ``n_workers``) of the pool ``config`` describes,
    seen through their channels."""

    def __init__(self, config: PoolConfig, consumer_ids: Sequence[int] | None = None) -> None:
        self.config = config
        self.consumer_ids = _consumer_ids(config.n_workers, consumer_ids)
        """The workers of this pool: all ``n_workers``, or one host's share of them."""
        prefix = config.output_prefix
        self._channels = [WorkerChannels.of(prefix, k) for k in self.consumer_ids]
        self._workers: list[M] = []

    # -- what a subclass does ------------------------------------------------------

    @abstractmethod
    def start(
        self, timeout: float = START_TIMEOUT_S, progress: Callable[[str], None] | None = None
    ) -> None:
        """Return once every worker is ready, saying meanwhile what it waits for.

        Raises
        ------
        PoolStartError
            A worker is not ready within ``timeout`` s, or cannot be.
        """

    @abstractmethod
    def check_health(self) -> None:
        """Raise :class:`~ptychonn_ophyd.errors.WorkerDiedError` naming a worker that is
        gone."""

    @abstractmethod
    def stop(self, timeout: float | None = None) -> None:
        """Let go of the workers.  Idempotent."""

    @abstractmethod
    def _alive(self, worker: M) -> bool:
        """Whether ``worker`` still runs, as far as this pool can tell."""

    @abstractmethod
    def _check_starting(self, worker: M) -> None:
        """Raise :class:`PoolStartError` if ``worker`` can no longer become ready."""

    @abstractmethod
    def _updated_after(self, worker: M, moment: float) -> bool:
        """Whether ``worker``'s latest status was made after ``moment`` (``time.time()``)."""

    def _no_status_yet(self, worker: M) -> str:
        """Why a worker is not ready before its first status update."""
        return f"no update on its status channel {worker.channels.status} yet"

    def _start_timed_out(self, worker: M, why: str, timeout: float) -> str:
        """The message of a start that gave up on ``worker``."""
        return f"{worker.name} not ready after {timeout:g} s: {why}"

    # -- channels ------------------------------------------------------------------

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
        """Process ids of the workers (on their own hosts, for a remote pool)."""
        return [w.pid for w in self._workers if w.pid]

    # -- what every pool offers ----------------------------------------------------

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

    def facts(self) -> dict[str, object]:
        """What runs: model, hash, backend, engine, GPUs, hosts and channels, for run
        metadata."""
        statuses = [self._worker_stats(w) for w in self._workers]
        first = statuses[0] if statuses else {}
        model_hash = first.get("model_hash") or model_hash_of(self.config.model)
        return {
            "model": first.get("model") or str(self.config.model),
            "model_hash": model_hash,
            "backend": first.get("backend", self.config.backend),
            "engine": first.get("engine", ""),
            "gpu_names": sorted({s["device"] for s in statuses if s["device"].startswith("cuda")}),
            "n_workers": self.config.n_workers,
            "consumer_ids": list(self.consumer_ids),
            "hosts": {str(s["consumer_id"]): s["host"] for s in statuses},
            "attached": self.config.attach,
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
        two batches, so results from then on carry the new ``modelHash``.  The path is
        sent as it is resolved here: workers on other hosts need it at the same path.

        Raises
        ------
        ValueError
            A worker refused the model (the message says why); it keeps the old one.
        TimeoutError
            Not every worker answered within ``timeout`` s.
        ptychonn_ophyd.errors.ControlError
            A worker's control channel did not take the command.
        """
        return self._swap(self._workers, model, timeout)

    def _swap(self, workers: Sequence[M], model: str | Path, timeout: float) -> str:
        """:meth:`swap_model` for ``workers``."""
        new = open_model(model)
        asked = {w: self._status(w).configured for w in workers}
        for worker in workers:
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

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- waiting -------------------------------------------------------------------

    def _wait_ready(self, timeout: float, progress: Callable[[str], None]) -> None:
        started = time.monotonic()
        deadline = started + timeout
        next_report = started + PROGRESS_FIRST_S
        pending = list(self._workers)
        while pending:
            for worker in pending:
                self._check_starting(worker)
            waiting = {w: self._not_ready(w) for w in pending}
            pending = [w for w, why in waiting.items() if why]
            now = time.monotonic()
            if pending and now > deadline:
                raise PoolStartError(
                    self._start_timed_out(pending[0], waiting[pending[0]], timeout)
                )
            if pending and now >= next_report:
                progress(_waiting_line(pending, waiting[pending[0]], now - started))
                next_report = now + PROGRESS_PERIOD_S
            if pending:
                time.sleep(0.05)

    def _not_ready(self, worker: M) -> str:
        status = worker.status()
        if status is None:
            return self._no_status_yet(worker)
        if not status.ready:
            return status.error or "engine not ready"
        if self.config.wait_for_input and not status.connected:
            return f"not connected to input channel {self.config.channel_of(worker.consumer_id)}"
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

    def _stale(self, worker: M, moment: float) -> bool:
        return self._alive(worker) and not self._updated_after(worker, moment)

    @staticmethod
    def _status(worker: Member) -> WorkerStatus:
        return worker.status() or WorkerStatus()

    def _worker_stats(self, worker: M) -> dict:
        status = self._status(worker)
        return {
            "consumer_id": worker.consumer_id,
            "pid": worker.pid,
            "host": status.host,
            "alive": self._alive(worker),
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
            "model": status.model,
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


def last_counts(status: WorkerStatus) -> str:
    """A worker's last frame counts in words, for the message of its end."""
    return (
        f"its last status: {status.received} received, {status.inferred} inferred, "
        f"{status.dropped} dropped, {sum(status.rejected.values())} rejected, "
        f"{status.queue_depth} queued"
    )


def _waiting_line(pending: list[Member], why: str, waited: float) -> str:
    """One line saying which worker a start waits for, why, and for how long."""
    others = f" and {len(pending) - 1} more" if len(pending) > 1 else ""
    return f"waiting for {pending[0].name}{others}: {why} ({waited:.0f} s)"
