"""Workers that run as services on other hosts, found and checked through their channels.

Each GPU host runs its share of one pool (``ptychonn-ophyd pool --consumer-ids``, under
the site's service manager).  A session attaches to them instead of starting its own
workers: :meth:`RemotePool.start` waits for every worker's status, checks that they
make the pool the session asks for (:data:`CHECKED`), swaps those running another
model to the session's, and returns once all are ready.  It never starts, signals or
stops a process: :meth:`RemotePool.stop` only stops watching.  A worker whose status
falls silent is gone (its host, its network or its service), and one whose process id
changed was restarted (its counts began again); :meth:`RemotePool.check_health` says
so, naming the worker and its host.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from ptychonn_ophyd.errors import ControlError, PoolStartError, WorkerDiedError
from ptychonn_ophyd.models import model_hash_of
from ptychonn_ophyd.pool.base import START_TIMEOUT_S, WorkerPool, last_counts
from ptychonn_ophyd.pool.member import Member
from ptychonn_ophyd.settings import PoolConfig

log = logging.getLogger(__name__)

SILENT_PERIODS = 5
"""Status periods (the pool's ``status_period``, or the worker's own when longer)
without an update after which a remote worker is taken as gone."""

CHECKED = ("input_channel", "n_workers", "distributor_updates", "outputs", "preprocess")
"""Settings a remote worker must share with the session: they decide which frames it
takes and what its results mean.  The others (batch size, backend, GPU, queues) are
its host's to choose, and the model the session swaps when it differs."""


class RemoteWorker(Member):
    """Worker ``consumer_id`` of a pool, running on another host (or under another
    parent) and known only through its channels."""

    @property
    def name(self) -> str:
        status = self.status()
        if status is None or not status.host:
            return f"worker {self.consumer_id}"
        return f"worker {self.consumer_id} (host {status.host}, pid {status.pid})"

    @property
    def pid(self) -> int | None:
        status = self.status()
        return status.pid if status is not None and status.pid else None


class RemotePool(WorkerPool[RemoteWorker]):
    """The workers of ``config`` (``n_workers`` under ``output_prefix``), or the share
    ``consumer_ids`` of them, running elsewhere; see the module's description.

    Examples
    --------
    >>> config = PoolConfig(model="ptychonn.onnx", input_channel="ad:image",
    ...                     output_prefix="inference", n_workers=4, attach=True)
    >>> with RemotePool(config) as pool:
    ...     pool.start(timeout=10.0)
    ...     pool.facts()["hosts"]
    {'1': 'gpu1', '2': 'gpu1', '3': 'gpu2', '4': 'gpu2'}
    """

    def __init__(self, config: PoolConfig, consumer_ids: Sequence[int] | None = None) -> None:
        super().__init__(config, consumer_ids)
        self._pids: dict[int, int] = {}
        self._watching = False

    def start(
        self, timeout: float = START_TIMEOUT_S, progress: Callable[[str], None] | None = None
    ) -> None:
        """Find every worker, check it, swap it to the session's model if it runs another,
        and return once all are ready.

        Raises
        ------
        PoolStartError
            A worker did not answer or was not ready within ``timeout`` s, does not
            make the pool ``config`` describes (the message names the setting), or
            refused the model.
        """
        if self._workers:
            raise RuntimeError("this pool was attached already; make a new one")
        pairs = zip(self.consumer_ids, self._channels, strict=True)
        self._workers = [RemoteWorker(k, channels) for k, channels in pairs]
        self._watching = True
        try:
            self._wait_ready(timeout, progress or log.info)
            self._take_model(timeout, progress or log.info)
        except BaseException:
            self.stop()
            raise
        self._pids = {w.consumer_id: self._status(w).pid for w in self._workers}

    def check_health(self) -> None:
        """Raise :class:`WorkerDiedError` naming a worker (and its host) that fell silent
        or was restarted since :meth:`start`."""
        if not self._watching:
            return
        for worker in self._workers:
            status = self._status(worker)
            silent, limit = worker.watch.silent_for(), self._silence_limit(worker)
            if silent > limit:
                raise WorkerDiedError(
                    f"{worker.name} has published no status for {silent:.0f} s (more than "
                    f"{limit:g}): its host, its network or its pool service is gone "
                    f"({last_counts(status)})"
                )
            before = self._pids.get(worker.consumer_id)
            if before and status.pid != before:
                raise WorkerDiedError(
                    f"{worker.name} was restarted (pid {before} before): its counts began "
                    "again, so the frames the earlier process held are counted nowhere"
                )

    def stop(self, timeout: float | None = None) -> None:
        """Stop watching the workers; they keep running for the next session."""
        if not self._watching:
            return
        self._watching = False
        for worker in self._workers:
            worker.close()

    def _alive(self, worker: RemoteWorker) -> bool:
        return worker.watch.silent_for() <= self._silence_limit(worker)

    def _silence_limit(self, worker: RemoteWorker) -> float:
        return SILENT_PERIODS * max(self.config.status_period, worker.watch.interval)

    def _check_starting(self, worker: RemoteWorker) -> None:
        status = worker.status()
        if status is None:
            return
        wrong = mismatches(self.config, worker.consumer_id, status.settings)
        if wrong:
            raise PoolStartError(
                f"{worker.name} does not make the pool this session asks for: "
                f"{'; '.join(wrong)}; start that host's pool with the session's settings, "
                "or change the session's"
            )

    def _updated_after(self, worker: RemoteWorker, moment: float) -> bool:
        # Its own timestamps come from its host's clock; when it arrived, from this one.
        return worker.watch.received_at >= moment

    def _no_status_yet(self, worker: RemoteWorker) -> str:
        search = os.environ.get("EPICS_PVA_ADDR_LIST") or "not set"
        return (
            f"no answer on its status channel {worker.channels.status}: is its host's pool "
            f"service running, and does EPICS_PVA_ADDR_LIST ({search}) reach that host?"
        )

    def _take_model(self, timeout: float, progress: Callable[[str], None]) -> None:
        """Swap the workers running another model to ``config.model``."""
        wanted = model_hash_of(self.config.model)
        others = [w for w in self._workers if self._status(w).model_hash != wanted]
        if not others:
            return
        names = ", ".join(w.name for w in others)
        progress(f"swapping {names} to model {Path(self.config.model).name} ({wanted})")
        try:
            self._swap(others, self.config.model, timeout)
        except (ValueError, TimeoutError, ControlError) as err:
            raise PoolStartError(f"cannot swap to model {self.config.model}: {err}") from None


def mismatches(config: PoolConfig, consumer_id: int, reported: dict[str, object]) -> list[str]:
    """Each :data:`CHECKED` setting where the ``reported`` settings of worker
    ``consumer_id`` (its status's ``settings``) differ from ``config``, in words; empty
    when they agree.  Its input channel is its own of ``config``'s channels."""
    if not reported:
        return ["it publishes no settings (a ptychonn-ophyd older than this session's?)"]
    asked = config.model_dump(mode="json", include=set(CHECKED))
    asked["input_channel"] = config.channel_of(consumer_id)
    return [
        f"{key} is {reported.get(key)!r} there, {asked[key]!r} here"
        for key in CHECKED
        if reported.get(key) != asked[key]
    ]
