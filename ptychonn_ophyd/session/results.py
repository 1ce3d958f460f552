"""Results as the Bluesky side receives them: PV Access monitors on the workers' outputs."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ptychonn_ophyd.wire import Ntndarray, parse_ntndarray, read_result_descriptor

log = logging.getLogger(__name__)

MONITOR_REQUEST = "record[queueSize=1000]field()"
"""Monitor request: a deep server-side queue absorbs bursts. The client-side pvapy
queue (``setMonitorMaxQueueLength``) stays off: in pvapy 5.6 it intermittently never
calls the subscriber although updates are counted as received."""


@dataclass(frozen=True)
class InferenceResult:
    """One frame's prediction as published by a worker.

    ``x``, ``y`` (micrometres) and ``point`` come from the input frame's attributes and
    are NaN / -1 when the detector did not send them; ``timestamp`` is the frame's;
    ``latency_s`` is frame to publish (the result's two timestamps); ``input_total`` and
    ``input_centroid`` ``(x, y)`` are the model input's moments, which the worker
    measured (NaN from a worker that did not, :class:`~ptychonn_ophyd.wire.ResultTags`).
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
    def of(cls, phase: Ntndarray, amplitude: np.ndarray | None = None) -> InferenceResult:
        """The result a phase NTNDArray (and its amplitude image, if any) describes."""
        attributes = phase.attributes
        tags = read_result_descriptor(phase.descriptor)
        return cls(
            unique_id=int(phase.unique_id),
            phase=np.asarray(phase.image, dtype=np.float32),
            amplitude=None if amplitude is None else np.asarray(amplitude, dtype=np.float32),
            consumer_id=tags.consumer_id,
            latency_s=float(phase.published - phase.timestamp),
            x=float(attributes.get("x", np.nan)),
            y=float(attributes.get("y", np.nan)),
            point=int(attributes.get("point", -1)),
            timestamp=float(phase.timestamp),
            model_hash=tags.model_hash,
            input_total=tags.input_total,
            input_centroid=tags.input_centroid,
        )


class ResultMonitor:
    """PV Access monitors on the pool's output (and amplitude) channels.

    Each result goes to ``on_result`` in a pvapy thread; for two-head models it goes
    once both halves of a uniqueId have arrived. ``overruns`` counts updates the
    monitors lost (they are never silently gone).
    """

    def __init__(
        self,
        output_channels: Iterable[str],
        amplitude_channels: Iterable[str],
        on_result: Callable[[InferenceResult], None],
    ) -> None:
        self.output_channels = list(output_channels)
        self.amplitude_channels = list(amplitude_channels)
        self._on_result = on_result
        self._channels: list[Any] = []
        self._lock = threading.Lock()
        self._phases: dict[int, Ntndarray] = {}
        self._amplitudes: dict[int, np.ndarray] = {}

    def start(self, timeout: float = 10.0) -> None:
        """Monitor the channels; wait up to ``timeout`` s for the phase channels to connect.

        A monitor delivers only updates made after it connects, so results published
        before that would be missed. Amplitude channels appear with the first result.
        """
        import pvaccess

        for name in self.output_channels:
            self._channels.append(self._monitor(pvaccess.Channel(name), self._phase))
        for name in self.amplitude_channels:
            self._channels.append(self._monitor(pvaccess.Channel(name), self._amplitude))
        deadline = time.monotonic() + timeout
        for channel in self._channels[: len(self.output_channels)]:
            while not channel.getMonitorCounters().get("nReceived", 0):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no connection to {channel.getName()} in {timeout} s")
                time.sleep(0.01)

    @staticmethod
    def _monitor(channel: Any, callback: Callable) -> Any:
        channel.monitor(callback, MONITOR_REQUEST)
        return channel

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
        """Monitor updates lost so far, over all channels."""
        return sum(c.getMonitorCounters().get("nOverruns", 0) for c in self._channels)

    def _phase(self, pv: Any) -> None:
        if not pv["uniqueId"]:  # the value a channel holds before its first result
            return
        phase = parse_ntndarray(pv)
        if not self.amplitude_channels:
            self._on_result(InferenceResult.of(phase))
            return
        with self._lock:
            amplitude = self._amplitudes.pop(phase.unique_id, None)
            if amplitude is None:
                self._phases[phase.unique_id] = phase
                return
        self._on_result(InferenceResult.of(phase, amplitude))

    def _amplitude(self, pv: Any) -> None:
        if not pv["uniqueId"]:
            return
        amplitude = parse_ntndarray(pv)
        with self._lock:
            phase = self._phases.pop(amplitude.unique_id, None)
            if phase is None:
                self._amplitudes[amplitude.unique_id] = amplitude.image
                return
        self._on_result(InferenceResult.of(phase, amplitude.image))
