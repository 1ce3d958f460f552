"""One run's inference: its frame ledger, its stream writer, and who follows its rows.

:class:`InferenceRun` is built by the supplement at ``open_run`` from explicit values and
fed every result batch; it keeps the new frames of the run (a :class:`FrameLedger`
decides which), hands them to the writer and to the follower (the live view) in the same
order, and at the end gives the run's accounting.  After :meth:`InferenceRun.seal` it
takes no more rows: results of its frames that come later are counted as ``late``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from bluesky.protocols import Hints

from ptychonn_ophyd.run_schema import NOT_PLOTTED, Rows, kept_rows
from ptychonn_ophyd.session.ledger import Counts, FrameLedger
from ptychonn_ophyd.session.writer import StreamWriter
from ptychonn_ophyd.wire import ResultBatch

log = logging.getLogger(__name__)


class InferenceRun:
    """The results of one run.

    Parameters
    ----------
    ledger
        The run's frames: counted from the source's newest uniqueId and the pool's
        counts at the run's start.
    writer
        Stores the rows.
    follow
        Also given every row batch, in row order (the live view).
    """

    def __init__(
        self,
        ledger: FrameLedger,
        writer: StreamWriter,
        follow: Callable[[Rows], None] | None = None,
    ) -> None:
        self.uid = writer.uid
        self.ledger = ledger
        self.writer = writer
        self.late = 0
        """Results of the run's frames that came after it was sealed."""
        self.models: Counter[str] = Counter()
        """Rows of the run each model (by hash) made."""
        self.workers: Counter[str] = Counter()
        """Rows of the run each worker (by consumer id) made: how the pool shared it."""
        self._follow = follow
        self._sealed = False
        self._lock = threading.Lock()

    @property
    def sealed(self) -> bool:
        return self._sealed

    def on_batch(self, batch: ResultBatch) -> None:
        """Keep ``batch``'s new frames of this run (called in a pvapy thread)."""
        ids, times = batch.unique_ids, batch.frames["frameTime"]
        with self._lock:
            if self._sealed:
                late = self.ledger.claims(ids, times)
                if late and not self.late:
                    log.warning(
                        "run %s: results are coming after its last rows were stored: counted "
                        "as late, not stored; their number is logged when the next run opens",
                        self.uid,
                    )
                self.late += late
                return
            keep = self.ledger.take(ids, times)
            if not keep.any():
                return
            self.models[batch.model_hash] += int(keep.sum())
            self.workers[str(batch.consumer_id)] += int(keep.sum())
            rows = kept_rows(batch, keep) if self._follow is not None else None
            self.writer.take(batch, keep, rows)  # made once, for the file and the follower
            if rows is not None:
                self._follow(rows)

    def retire(self) -> int:
        """Log how many results came late, once, as a newer run takes over; return it."""
        with self._lock:
            late = self.late
        if late:
            log.warning("run %s: %d result(s) came after its last rows were stored", self.uid, late)
        return late

    def on_source(self, last_id: int, now: float) -> None:
        """A reading of the source's newest uniqueId."""
        with self._lock:
            restarted = self.ledger.observe_source(last_id, now)
        if restarted:
            log.warning(
                "run %s: the source restarted (its uniqueId went back to %d)", self.uid, last_id
            )

    def settled(self, pool: Counts, unreceived: int = 0) -> bool:
        """Whether every frame the run produced has an outcome (``pool``: its counts now;
        ``unreceived``: the run's results the monitors lost)."""
        with self._lock:
            return self.ledger.settled(pool, unreceived=unreceived, now=time.monotonic())

    def seal(self) -> None:
        """Take no more rows: the rows are exactly what the follower saw; later results
        of the run's frames count as late."""
        with self._lock:
            self._sealed = True

    def end(self, pool: Counts, **extra: Any) -> dict[str, Any]:
        """Seal, write every row, close the file, and return the run's accounting
        (``pool``: its counts now; ``extra`` entries are added)."""
        self.seal()
        self.writer.close()
        with self._lock:
            summary = self.ledger.accounting(pool)
        stored = self.writer.rows
        error = self.writer.error
        summary.update(
            stored=stored,
            not_stored=summary["inferred"] - stored,
            file=str(self.writer.path),
            write_error="" if error is None else f"{type(error).__name__}: {error}",
            models=dict(self.models),
            workers=dict(sorted(self.workers.items(), key=lambda item: int(item[0]))),
            **extra,
        )
        if summary["not_in_time"]:
            log.warning(
                "run %s: %d of %d frames had no result when the run ended (its grace "
                "period over, or the workers done and no result for a while); later "
                "arrivals are counted as late",
                self.uid,
                summary["not_in_time"],
                summary["produced"],
            )
        return summary


class AccountingReading:
    """The frame accounting of the run just ended, read into
    :data:`~ptychonn_ophyd.run_schema.ACCOUNTING_STREAM` (a ``Readable`` of its own)."""

    hints: Hints = NOT_PLOTTED
    """Nothing for BestEffortCallback to plot (:data:`.run_schema.NOT_PLOTTED`)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.parent = None
        self.summary: dict[str, Any] = {}
        self._time = 0.0

    def set(self, summary: dict[str, Any]) -> None:
        self.summary, self._time = summary, time.time()

    def read(self) -> dict[str, dict[str, Any]]:
        values = {k: json.dumps(v) if isinstance(v, dict) else v for k, v in self.summary.items()}
        return {k: {"value": v, "timestamp": self._time} for k, v in values.items()}

    def describe(self) -> dict[str, dict[str, Any]]:
        return {
            k: {"source": f"ptychonn:{self.name}", "dtype": _dtype(v["value"]), "shape": []}
            for k, v in self.read().items()
        }


def _dtype(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "string"
