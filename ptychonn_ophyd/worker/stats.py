"""Frame accounting: where every frame a worker received went, and how fast."""

from __future__ import annotations

from collections.abc import Callable
from time import perf_counter

import numpy as np

from ptychonn_ophyd.wire import DROP_REASONS, REJECT_REASONS, FinalCounts, drop_key, reject_key


class FrameCounts:
    """Counts of every frame a worker received, and where each one went.

    ``received == inferred + dropped + rejected + in_flight + queued`` once no frame is
    on its way.  Each counter is written by one thread only: ``received``, ``rejected``
    and the monitor's drops by the monitor thread; ``in_flight``, ``inferred`` and the
    batches' drops by the inference thread, which takes a batch off the queue before it
    counts it in flight, and out of flight before it counts where it went (a stopping
    worker whose inference thread hangs counts that thread's batch as dropped itself).
    """

    def __init__(self, latency_window: int = 8192, rate_window: float = 1.0) -> None:
        self._latencies = np.zeros(latency_window)
        self._rate_window = rate_window
        self.in_flight = 0  # not reset: the inference thread may hold a batch then
        self.reset()

    def reset(self) -> None:
        """Start counting from zero."""
        self.received = 0
        self.inferred = 0
        self.batches = 0
        self.rejected = dict.fromkeys(REJECT_REASONS, 0)
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self._n_latencies = 0
        self._rate = 0.0
        self._rate_mark = (perf_counter(), 0)

    def take(self, n_frames: int) -> None:
        """Count a batch of ``n_frames`` taken off the queue for inference."""
        self.in_flight += n_frames

    def drop_batch(self, reason: str, n_frames: int) -> None:
        """Count a taken batch of ``n_frames`` as dropped for ``reason``."""
        self.in_flight -= n_frames
        self.dropped[reason] += n_frames

    def record_batch(self, latencies: np.ndarray) -> None:
        """Count one inferred batch whose frames waited ``latencies`` seconds."""
        n = len(latencies)
        self.in_flight -= n
        window = len(self._latencies)
        start = self._n_latencies % window
        if n >= window:
            self._latencies[:] = latencies[-window:]
        elif start + n <= window:
            self._latencies[start : start + n] = latencies
        else:
            split = window - start
            self._latencies[start:] = latencies[:split]
            self._latencies[: n - split] = latencies[split:]
        self._n_latencies += n
        self.inferred += n
        self.batches += 1

    def latency_percentiles(self) -> tuple[float, float]:
        """p50 and p99 of the latest frames' receipt-to-publish latency, in seconds."""
        n = min(self._n_latencies, len(self._latencies))
        if not n:
            return 0.0, 0.0
        p50, p99 = np.percentile(self._latencies[:n], (50, 99))
        return float(p50), float(p99)

    def rate(self) -> float:
        """Frames inferred per second, over at least the last ``rate_window`` seconds."""
        now = perf_counter()
        then, inferred = self._rate_mark
        if now - then >= self._rate_window:
            self._rate = (self.inferred - inferred) / (now - then)
            self._rate_mark = (now, self.inferred)
        return self._rate

    def final(self, consumer_id: int) -> FinalCounts:
        """The counts as a stopped worker reports them last."""
        return FinalCounts(
            consumer_id, self.received, self.inferred, dict(self.dropped), dict(self.rejected)
        )

    def user_stats(self, queued: Callable[[], int]) -> dict[str, object]:
        """The counting part of ``userStats`` (see :data:`~ptychonn_ophyd.wire.STATS_PVA_TYPES`).

        The counts are read from the last stage a frame reaches back to the first, and
        ``queued()`` in between, so that a frame moving on while they are read is missed
        by this reading, never counted twice: ``queueDepth`` is frames queued or in flight.
        """
        inferred, batches = self.inferred, self.batches
        dropped = dict(self.dropped)
        rejected = dict(self.rejected)
        in_flight = self.in_flight
        depth = in_flight + queued()
        received = self.received
        p50, p99 = self.latency_percentiles()
        stats: dict[str, object] = {
            "received": received,
            "inferred": inferred,
            "batches": batches,
            "dropped": sum(dropped.values()),
            "rejected": sum(rejected.values()),
            "queueDepth": depth,
            "inferenceRate": self.rate(),
            "latencyP50": p50,
            "latencyP99": p99,
        }
        stats.update({drop_key(reason): n for reason, n in dropped.items()})
        stats.update({reject_key(reason): n for reason, n in rejected.items()})
        return stats
