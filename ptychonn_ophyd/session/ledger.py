"""Frame accounting: which frames a span (a run, or one staging) produced and what became
of each.

:class:`FrameLedger` is pure bookkeeping, no I/O: it is told each batch of results
(uniqueIds and frame times), each reading of the source's uniqueId counter, and the
pool's counts, and answers whether a point is done, whether a run is settled, and the
run's accounting.  The device's trigger and the run's writer each keep one, fed the same
batches.  Memory is a bit a frame (chunked bitmaps of uniqueIds), not an object a frame.

A restarted source (an IOC, the simulator) counts its uniqueIds from 1 again: a reading
below the one before opens an *epoch*.  A result belongs to the epoch whose start (when
the restart was seen) comes before its frame time; the last frames of an epoch can
arrive after the restart was seen, and their ids extend it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

CHUNK_BITS = 16
"""uniqueIds per bitmap chunk: ``2**16`` (64 KiB a chunk, allocated where ids fall)."""
_OFFSET = (1 << CHUNK_BITS) - 1


class IdSet:
    """A set of uniqueIds as bitmap chunks, allocated where ids fall."""

    def __init__(self) -> None:
        self._chunks: dict[int, np.ndarray] = {}

    def add(self, ids: np.ndarray) -> np.ndarray:
        """Add ``ids``; returns which of them were new (the first of repeats within)."""
        ids = np.asarray(ids, np.int64)
        n = len(ids)
        first, last = (int(ids[0]), int(ids[-1])) if n else (0, -1)
        if n and first >> CHUNK_BITS == last >> CHUNK_BITS and (ids[1:] > ids[:-1]).all():
            # A worker's batch: ids rising, none repeated, in one chunk (the usual case),
            # and most often consecutive: a slice of the bitmap.
            bits = self._bits(first >> CHUNK_BITS)
            start = first & _OFFSET
            where = slice(start, start + n) if last - first < n else ids & _OFFSET
            new = ~bits[where]
            bits[where] = True
            return new
        chunk, offset = ids >> CHUNK_BITS, ids & _OFFSET
        new = np.zeros(len(ids), bool)
        new[np.unique(ids, return_index=True)[1]] = True
        for c in np.unique(chunk).tolist():
            rows = np.flatnonzero(chunk == c)
            bits = self._bits(c)
            new[rows] &= ~bits[offset[rows]]
            bits[offset[rows]] = True
        return new

    def _bits(self, chunk: int) -> np.ndarray:
        bits = self._chunks.get(chunk)
        if bits is None:
            bits = self._chunks[chunk] = np.zeros(1 << CHUNK_BITS, bool)
        return bits

    def missing(self, first: int, last: int, limit: int) -> list[int]:
        """Up to ``limit`` ids in ``first..last`` not in the set, in order."""
        found: list[int] = []
        start = first
        while start <= last and len(found) < limit:
            c = start >> CHUNK_BITS
            stop = min(last, ((c + 1) << CHUNK_BITS) - 1)
            bits = self._chunks.get(c)
            lo, hi = start - (c << CHUNK_BITS), stop - (c << CHUNK_BITS)
            gaps = (
                np.arange(lo, hi + 1) if bits is None else np.flatnonzero(~bits[lo : hi + 1]) + lo
            )
            found.extend((gaps[: limit - len(found)] + (c << CHUNK_BITS)).tolist())
            start = stop + 1
        return found


@dataclass
class Epoch:
    """Frames a source produced between two restarts."""

    first: int
    """Its first uniqueId."""
    began: float
    """Wall time (``time.time()``) it was seen to begin."""
    read: int
    """The newest uniqueId the source's counter showed in it."""
    newest: int
    """The newest uniqueId of a result in it."""
    ids: IdSet = field(default_factory=IdSet)

    @property
    def last(self) -> int:
        return max(self.read, self.newest)

    @property
    def produced(self) -> int:
        return max(self.last - self.first + 1, 0)


LOST_AFTER = 5.0
"""Seconds without a new result after which frames the workers have an outcome for (by
their counts) but whose results never came count as settled: a monitor that loses
results sees the loss only when a later batch comes, so results lost after a worker's
last batch are never counted as lost, and waiting longer brings none of them.  The run's
accounting shows them as ``not_in_time``."""


class PoolCounts(Protocol):
    """The pool's counters since its workers started (a :class:`~ptychonn_ophyd.pool.PoolStats`)."""

    received: int
    inferred: int
    dropped: int
    rejected: Mapping[str, int]
    dropped_by_reason: Mapping[str, int]
    missed: int


@dataclass(frozen=True)
class Counts:
    """Frames the pool received, dropped and rejected, as numbers (``rejected`` and
    ``dropped_by_reason`` by reason; ``dropped`` is the sum), those its workers never
    received (``missed``: gaps in the uniqueIds each worker saw), and those they inferred
    (``inferred``: published, whether or not the results reached this session)."""

    received: int = 0
    dropped: int = 0
    rejected: Mapping[str, int] = field(default_factory=dict)
    dropped_by_reason: Mapping[str, int] = field(default_factory=dict)
    missed: int = 0
    inferred: int = 0

    @classmethod
    def of(cls, stats: PoolCounts | None) -> Counts:
        if stats is None:
            return cls()
        return cls(
            int(stats.received),
            int(stats.dropped),
            dict(stats.rejected),
            dict(stats.dropped_by_reason),
            int(stats.missed),
            int(stats.inferred),
        )

    def since(self, before: Counts) -> Counts:
        return Counts(
            self.received - before.received,
            self.dropped - before.dropped,
            _difference(self.rejected, before.rejected),
            _difference(self.dropped_by_reason, before.dropped_by_reason),
            self.missed - before.missed,
            self.inferred - before.inferred,
        )

    @property
    def lost(self) -> int:
        """Frames that will have no result: dropped or rejected."""
        return self.dropped + sum(self.rejected.values())


class FrameLedger:
    """The frames of one span and their outcomes.

    Parameters
    ----------
    first_id
        The span's first uniqueId (the source's newest at its start, plus one); ``None``
        without a source: every result is the span's, and what it produced is what the
        pool received.
    began
        Wall time of its start (``time.time()``).
    pool
        The pool's counts at its start: the span's are counted from them.
    """

    def __init__(self, first_id: int | None, began: float, pool: Counts) -> None:
        self.has_source = first_id is not None
        first = first_id if first_id is not None else 0
        self.epochs = [Epoch(first, began, first - 1, first - 1)]
        self.pool_at_start = pool
        self.inferred = 0
        """Distinct results taken."""
        self.duplicates = 0
        """Results of a frame taken already (two workers received it)."""
        self.outside = 0
        """Results of frames produced before the span (not counted in it)."""
        self.last_result = time.monotonic()
        """When a result was last taken (``time.monotonic()``; the span's start before)."""

    @property
    def restarts(self) -> int:
        return len(self.epochs) - 1

    def observe_source(self, last_id: int, now: float) -> bool:
        """Take a reading of the source's newest uniqueId; returns whether it restarted."""
        epoch = self.epochs[-1]
        if last_id < epoch.read:
            self.epochs.append(Epoch(1, now, last_id, 0))
            return True
        epoch.read = last_id
        return False

    def take(self, ids: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Take a batch's results (uniqueIds, frame times); returns which are new frames
        of the span, the rows to keep."""
        ids = np.asarray(ids, np.int64)
        keep = np.zeros(len(ids), bool)
        if len(self.epochs) == 1:  # the source never restarted: no frame times needed
            self._take_in(self.epochs[0], ids, np.arange(len(ids)), keep)
        else:
            which = self._epoch_of(times)
            for e in np.unique(which).tolist():
                self._take_in(self.epochs[e], ids, np.flatnonzero(which == e), keep)
        self.last_result = time.monotonic()
        return keep

    def _take_in(self, epoch: Epoch, ids: np.ndarray, rows: np.ndarray, keep: np.ndarray) -> None:
        """Take the results ``rows`` of ``ids``, of ``epoch``; mark the new ones in ``keep``."""
        mine = ids[rows]
        inside = mine >= epoch.first
        if not inside.all():
            self.outside += int(np.count_nonzero(~inside))
            rows, mine = rows[inside], mine[inside]
            if not rows.size:
                return
        new = epoch.ids.add(mine)
        added = int(np.count_nonzero(new))
        self.inferred += added
        self.duplicates += len(new) - added
        keep[rows[new]] = True
        epoch.newest = max(epoch.newest, int(mine.max()))

    def claims(self, ids: np.ndarray, times: np.ndarray) -> int:
        """How many of these results are of frames the span produced (late ones, after
        the span ended)."""
        ids = np.asarray(ids, np.int64)
        which = self._epoch_of(times)
        first = np.array([e.first for e in self.epochs])[which]
        last = np.array([e.last for e in self.epochs])[which]
        return int(np.count_nonzero((ids >= first) & (ids <= last)))

    def _epoch_of(self, times: np.ndarray) -> np.ndarray:
        starts = [e.began for e in self.epochs[1:]]
        return np.searchsorted(starts, np.asarray(times, np.float64), side="right")

    def produced(self, pool: Counts) -> int:
        """Frames the span produced: over every epoch of the source, or without a source
        those the pool received (``pool``: its counts now)."""
        if not self.has_source:
            return pool.since(self.pool_at_start).received - self.duplicates
        return sum(e.produced for e in self.epochs)

    def settled(
        self, pool: Counts, upto: int | None = None, unreceived: int = 0, now: float = 0.0
    ) -> bool:
        """Whether every frame produced (or the first ``upto`` of them) has an outcome.

        ``unreceived``: results of the span that the session's monitors lost (inferred
        by the workers, so they have an outcome, but no batch will bring them).  Frames
        a worker saw it never received (``missed``, a gap in its uniqueIds) have their
        outcome too: no result will come for them.  Given ``now`` (``time.monotonic()``)
        :data:`LOST_AFTER` s or more after the last result, frames the workers inferred
        count too, whether or not their results came (without ``now``, they do not).
        """
        target = self.produced(pool) if upto is None else upto
        span = pool.since(self.pool_at_start)
        done = span.lost + span.missed
        if self.inferred + done + unreceived >= target:
            return True
        return now - self.last_result >= LOST_AFTER and span.inferred + done >= target

    def missing(self, limit: int = 20) -> list[int]:
        """Up to ``limit`` uniqueIds of the newest epoch with no result yet."""
        epoch = self.epochs[-1]
        if not self.has_source:
            return []
        return epoch.ids.missing(epoch.first, epoch.last, limit)

    def accounting(self, pool: Counts) -> dict[str, Any]:
        """The span's frame accounting, given the pool's counts now: ``produced`` is the sum
        of :data:`~ptychonn_ophyd.run_schema.OUTCOMES` (the README's table says each)."""
        produced = self.produced(pool)
        span = pool.since(self.pool_at_start)
        rejected = sum(span.rejected.values())
        # The pool's counters come with its status updates, which lag on a busy machine;
        # a frame that has an outcome in the workers was received, whatever they say yet.
        received = max(span.received - self.duplicates, self.inferred + span.lost)
        return {
            "produced": produced,
            "received": received,
            "inferred": self.inferred,
            "dropped": span.dropped,
            "rejected": rejected,
            "rejected_reasons": dict(span.rejected),
            "dropped_reasons": dict(span.dropped_by_reason),
            "missed": max(produced - received, 0),
            "not_in_time": max(min(received, produced) - self.inferred - span.lost, 0),
            "duplicates": self.duplicates,
            "source_restarts": self.restarts,
        }


def _difference(now: Mapping[str, int], before: Mapping[str, int]) -> dict[str, int]:
    """``now - before`` by reason, the reasons that changed only."""
    counts = Counter(now)
    counts.subtract(before)
    return {reason: n for reason, n in counts.items() if n}
