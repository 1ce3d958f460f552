"""PV Access monitors on the workers' batch channels: one update per inferred batch
(:class:`~ptychonn_ophyd.wire.ResultBatch`), the results monitors lost counted."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from ptychonn_ophyd.throttle import Throttle
from ptychonn_ophyd.wire import ResultBatch, parse_result_batch

log = logging.getLogger(__name__)

MONITOR_REQUEST = "record[queueSize=1000]field()"
"""Monitor request: a deep server-side queue (of batches) absorbs bursts. The
client-side pvapy queue (``setMonitorMaxQueueLength``) stays off: in pvapy 5.6 it
intermittently never calls the subscriber although updates are counted as received."""


class ResultMonitor:
    """PV Access monitors on the pool's batch channels.

    Each batch goes to ``on_batch`` in a pvapy thread.
    ``overruns`` counts the results the monitors lost: the frames a batch's
    ``framesBefore`` says came before it that no batch brought (they are never
    silently gone).
    """

    def __init__(
        self, batch_channels: Iterable[str], on_batch: Callable[[ResultBatch], None]
    ) -> None:
        self.batch_channels = list(batch_channels)
        self._on_batch = on_batch
        self._channels: list[Any] = []
        self._lock = threading.Lock()
        self._next_frame: dict[str, int | None] = {}
        self._lost = 0
        self._throttle = Throttle(log)  # at 20 kHz a slow reader loses results many times a second

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
            self._throttle.warning(
                name,
                f"{name}: {batch.frames_before - expected} results lost before batch {batch.batch}",
            )
        self._on_batch(batch)
