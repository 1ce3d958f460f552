"""The device's trigger: a status per point that finishes when the point's frames have an
outcome.

:class:`PointTrigger` keeps a :class:`~ptychonn_ophyd.session.ledger.FrameLedger` of the
staging, fed the result batches by the fan-out, and the statuses waiting on it.  A
batch finishes the statuses it completes at once; :meth:`PointTrigger.poll`, called by
the device's one watch thread, brings the pool's counts (dropped and rejected frames
never come as results) and the results the monitors lost, checks the workers' health
(a worker that dies between two points, or during a fly scan's trajectory, fails the
next wait) and fails a wait that got no result for ``timeout`` seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ophyd.status import StatusBase

from ptychonn_ophyd.errors import InferenceTimeoutError
from ptychonn_ophyd.session.ledger import Counts, FrameLedger
from ptychonn_ophyd.wire import ResultBatch


@dataclass
class _Wait:
    status: StatusBase
    upto: int | None
    """Frames produced the point waits for (``None``: whatever the pool received)."""


class PointTrigger:
    """Trigger statuses of one staging.

    Parameters
    ----------
    name
        The device's, for messages.
    ledger
        The staging's frames.
    timeout
        Seconds without any new result after which a wait fails with
        :class:`~ptychonn_ophyd.errors.InferenceTimeoutError`.
    overruns
        Results the monitors had lost when the staging began (see :meth:`poll`).
    """

    def __init__(self, name: str, ledger: FrameLedger, timeout: float, overruns: int = 0) -> None:
        self.name = name
        self.ledger = ledger
        self.timeout = timeout
        self._pool = ledger.pool_at_start
        self._overruns_at_start = overruns
        self._unreceived = 0
        self._waits: list[_Wait] = []
        self._progress = time.monotonic()
        self._failure: Exception | None = None
        """A worker's death, seen at any poll: it fails every wait from then on."""
        self._lock = threading.Lock()

    @property
    def inferred(self) -> int:
        """Frames inferred in this staging."""
        return self.ledger.inferred

    def wait(self, last_id: int | None) -> StatusBase:
        """A status that finishes once the frames up to the source's ``last_id`` (``None``:
        every frame the pool received) have an outcome."""
        status = StatusBase()
        with self._lock:
            if self._failure is not None:
                status.set_exception(self._failure)
                return status
            upto = None
            if last_id is not None:
                self.ledger.observe_source(last_id, time.time())
                upto = self.ledger.produced(self._pool)
            self._waits.append(_Wait(status, upto))
            self._progress = time.monotonic()
            self._finish_done()
        return status

    def on_batch(self, batch: ResultBatch) -> None:
        with self._lock:
            self.ledger.take(batch.unique_ids, batch.frames["frameTime"])
            self._progress = time.monotonic()
            self._finish_done()

    def on_source(self, last_id: int, now: float) -> None:
        with self._lock:
            self.ledger.observe_source(last_id, now)

    def poll(self, pool: Counts, check_health: Callable[[], None], overruns: int = 0) -> None:
        """Take the pool's counts and the results the monitors lost (``overruns``, since
        the pool started) now; fail the waits, now and to come, if a worker died, and
        those waiting if no result came for ``timeout`` s.

        A lost result was inferred, so its frame has an outcome that no batch will
        bring: it finishes a point as a dropped frame does (the run's accounting shows
        it as ``monitor_overruns``) instead of failing the point after ``timeout``.
        """
        with self._lock:
            self._pool = pool
            self._unreceived = overruns - self._overruns_at_start
            self._finish_done()
            try:
                check_health()
            except Exception as error:
                self._failure = error
            if self._failure is not None:
                self._fail_all(self._failure)
            elif self._waits and time.monotonic() - self._progress > self.timeout:
                lost = pool.since(self.ledger.pool_at_start).lost
                missing = self.ledger.missing(limit=1000)
                self._fail_all(InferenceTimeoutError(self.name, missing, self.timeout, lost))

    def close(self, why: str) -> None:
        """Fail every wait (the staging ended under them)."""
        with self._lock:
            self._fail_all(RuntimeError(f"{self.name}: {why} while waiting for inference"))

    def _finish_done(self) -> None:
        waiting = []
        for wait in self._waits:
            if self.ledger.settled(self._pool, wait.upto, self._unreceived, time.monotonic()):
                wait.status.set_finished()
            else:
                waiting.append(wait)
        self._waits = waiting

    def _fail_all(self, error: BaseException) -> None:
        waits, self._waits = self._waits, []
        for wait in waits:
            wait.status.set_exception(error)
