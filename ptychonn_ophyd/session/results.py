"""Results as the Bluesky side receives them: PV Access monitors on the workers' batch
channels (:class:`~ptychonn_ophyd.wire.ResultBatch`), one update per inferred batch."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ptychonn_ophyd.wire import ResultBatch, parse_result_batch

log = logging.getLogger(__name__)

MONITOR_REQUEST = "record[queueSize=1000]field()"
"""Monitor request: a deep server-side queue (of batches) absorbs bursts. The
client-side pvapy queue (``setMonitorMaxQueueLength``) stays off: in pvapy 5.6 it
intermittently never calls the subscriber although updates are counted as received."""


@dataclass(frozen=True)
class InferenceResult:
    """One frame's prediction as published by a worker.

    ``x``, ``y`` (micrometres) and ``point`` come from the input frame's attributes and
    are NaN / -1 when the detector did not send them; ``timestamp`` is the frame's;
    ``latency_s`` is frame to publish; ``input_total`` and ``input_centroid`` ``(x, y)``
    are the model input's moments, which the worker measured (NaN where unknown).
    """

    unique_id: int
    phase: np.ndarray
    amplitude: np.ndarray | None
    consumer_id: int
    latency_s: float
    x: float
    y: float
    point: int
    timestamp: float
    model_hash: str
    input_total: float = float("nan")
    input_centroid: tuple[float, float] = (float("nan"), float("nan"))

    @classmethod
    def of_batch(cls, batch: ResultBatch) -> list[InferenceResult]:
        """The results of ``batch``, frame by frame (images are views of its arrays)."""
        columns = {name: values.tolist() for name, values in batch.frames.items()}
        amplitude = batch.amplitude if batch.amplitude is not None else [None] * len(batch)
        return [
            cls(
                unique_id=unique_id,
                phase=phase,
                amplitude=amp,
                consumer_id=batch.consumer_id,
                latency_s=batch.published - frame_time,
                x=x,
                y=y,
                point=point,
                timestamp=frame_time,
                model_hash=batch.model_hash,
                input_total=total,
                input_centroid=(cx, cy),
            )
            for unique_id, frame_time, x, y, point, total, cx, cy, phase, amp in zip(
                *columns.values(), batch.phase, amplitude, strict=True
            )
        ]


class ResultMonitor:
    """PV Access monitors on the pool's batch channels.

    Each result goes to ``on_result`` in a pvapy thread, batch after batch.
    ``overruns`` counts the results the monitors lost: the frames a batch's
    ``framesBefore`` says came before it that no batch brought (they are never
    silently gone).
    """

    def __init__(
        self, batch_channels: Iterable[str], on_result: Callable[[InferenceResult], None]
    ) -> None:
        self.batch_channels = list(batch_channels)
        self._on_result = on_result
        self._channels: list[Any] = []
        self._lock = threading.Lock()
        self._next_frame: dict[str, int | None] = {}
        self._lost = 0

    def start(self, timeout: float = 10.0) -> None:
        """Monitor the channels; wait up to ``timeout`` s for each to connect.

        A monitor delivers only updates made after it connects (beside the channel's
        current value, which is an earlier batch and is skipped), so results published
        before that would be missed.
        """
        import pvaccess

        for name in self.batch_channels:
            self._next_frame[name] = None
            channel = pvaccess.Channel(name)
            channel.monitor(lambda pv, name=name: self._batch(name, pv), MONITOR_REQUEST)
            self._channels.append(channel)
        deadline = time.monotonic() + timeout
        for channel in self._channels:
            while not channel.getMonitorCounters().get("nReceived", 0):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no connection to {channel.getName()} in {timeout} s")
                time.sleep(0.01)

    def stop(self) -> None:
        """Stop every monitor."""
        for channel in self._channels:
            try:
                channel.stopMonitor()
            except Exception:  # a channel that never connected
                log.debug("stopping monitor on %s", channel.getName(), exc_info=True)
        self._channels.clear()

    @property
    def overruns(self) -> int:
        """Results the monitors lost so far, over all channels."""
        return self._lost

    def _batch(self, name: str, pv: Any) -> None:
        batch = parse_result_batch(pv)
        with self._lock:
            expected = self._next_frame[name]
            self._next_frame[name] = batch.frames_before + len(batch)
        if expected is None:  # the channel's value when the monitor connected
            return
        if batch.frames_before > expected:
            self._lost += batch.frames_before - expected
            log.warning(
                "%s: %d results lost before batch %d",
                name,
                batch.frames_before - expected,
                batch.batch,
            )
        for result in InferenceResult.of_batch(batch):
            self._on_result(result)
