"""Results as the Bluesky side takes them: one fan-out of every result batch
(:class:`~ptychonn_ophyd.wire.ResultBatch`) to the trigger, the run and the live view."""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from ptychonn_ophyd.wire import ResultBatch

log = logging.getLogger(__name__)


class BatchSink(Protocol):
    """What the fan-out hands results and source readings to."""

    def on_batch(self, batch: ResultBatch) -> None: ...

    def on_source(self, last_id: int, now: float) -> None: ...


class ResultFanout:
    """One fan-out from the results monitor to everyone who takes results: the device's
    trigger, the run being written, the live view behind it.

    Subscribers are called in a pvapy thread, in the order they subscribed; one that
    raises is logged and the others still get the batch.  ``storing`` says whether a
    subscriber stores the results (a run's writer), so staging can refuse to lose them.
    """

    def __init__(self) -> None:
        self.last_published = 0.0
        """When the newest batch taken was published (the workers' ``time.time()``; 0
        before the first): counts a new span starts from must be newer
        (``PtychoNNDetector.span_counts``)."""
        self._sinks: tuple[BatchSink, ...] = ()
        self._storing: set[int] = set()
        self._seeing: set[int] = set()
        self._lock = threading.Lock()

    def subscribe(self, sink: BatchSink, *, stores: bool = False, images: bool = False) -> None:
        """Give ``sink`` every batch; ``stores``: it stores them; ``images``: it needs the
        images (a store process then relays them too)."""
        with self._lock:
            self._sinks = (*self._sinks, sink)
            if stores:
                self._storing.add(id(sink))
            if images:
                self._seeing.add(id(sink))

    def unsubscribe(self, sink: BatchSink) -> None:
        with self._lock:
            self._sinks = tuple(s for s in self._sinks if s is not sink)
            self._storing.discard(id(sink))
            self._seeing.discard(id(sink))

    @property
    def storing(self) -> bool:
        return bool(self._storing)

    @property
    def needs_images(self) -> bool:
        """Whether a subscriber needs the batches' images."""
        return bool(self._seeing)

    def on_batch(self, batch: ResultBatch) -> None:
        if batch.published > self.last_published:
            self.last_published = batch.published
        for sink in self._sinks:
            try:
                sink.on_batch(batch)
            except Exception:
                log.exception("%r failed to take batch %d", sink, batch.batch)

    def on_source(self, last_id: int, now: float) -> None:
        for sink in self._sinks:
            try:
                sink.on_source(last_id, now)
            except Exception:
                log.exception("%r failed to take a source reading", sink)
