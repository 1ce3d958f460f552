"""Receives every result NTNDArray of a set of output channels, or every batch of a set of
batch channels, for the streaming tests."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pvaccess as pva
from pvapy.utility.adImageUtility import AdImageUtility

from ptychonn_ophyd.wire import (
    ResultBatch,
    parse_ntndarray,
    parse_result_batch,
    read_result_descriptor,
)


@dataclass
class Result:
    """One received result: its channel, image, attributes by name, the frame's timestamp
    (``dataTimeStamp``), and the worker, model and lateness its descriptor and
    ``timeStamp`` give."""

    channel: str
    unique_id: int
    image: np.ndarray
    attributes: dict[str, object]
    timestamp: dict[str, int] = field(repr=False)
    consumer_id: int = -1
    model_hash: str = ""
    latency: float = float("nan")


class Collector:
    """Monitors ``channels`` and keeps every update after the initial one.

    The initial update of each channel (its value when the monitor connects) marks the
    connection; the constructor waits for it, so nothing published afterwards is missed.
    """

    def __init__(self, channels: list[str], queue_size: int = 10000, timeout: float = 10) -> None:
        self.results: list[Result] = []
        self._lock = threading.Lock()
        self._connected = {name: threading.Event() for name in channels}
        self._channels = []
        request = f"record[queueSize={queue_size}]field()"
        for name in channels:
            channel = pva.Channel(name)
            channel.monitor(lambda pv, name=name: self._receive(name, pv), request)
            self._channels.append(channel)
        for name, connected in self._connected.items():
            if not connected.wait(timeout):
                self.close()
                raise TimeoutError(f"no initial update from {name} in {timeout} s")

    def _receive(self, channel: str, pv: pva.PvObject) -> None:
        if not self._connected[channel].is_set():
            self._connected[channel].set()
            return
        image = AdImageUtility.reshapeNtNdArray(pv)[1].copy()
        attributes = {a["name"]: a["value"][0]["value"] for a in pv["attribute"]}
        tags = read_result_descriptor(pv["descriptor"])
        frame = parse_ntndarray(pv)
        result = Result(
            channel,
            pv["uniqueId"],
            image,
            attributes,
            pv["dataTimeStamp"],
            tags.consumer_id,
            tags.model_hash,
            frame.published - frame.timestamp,
        )
        with self._lock:
            self.results.append(result)

    def ids(self) -> Counter:
        """How often each uniqueId arrived."""
        with self._lock:
            return Counter(r.unique_id for r in self.results)

    def wait_for(self, n: int, timeout: float = 30.0) -> bool:
        """Wait until ``n`` results arrived; whether they did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.results) >= n:
                return True
            time.sleep(0.05)
        return len(self.results) >= n

    def close(self) -> None:
        """Stop monitoring."""
        for channel in self._channels:
            channel.stopMonitor()


class BatchCollector:
    """Monitors batch channels and keeps every :class:`~ptychonn_ophyd.wire.ResultBatch`
    after the initial update, which, as for :class:`Collector`, marks the connection."""

    def __init__(self, channels: list[str], timeout: float = 10) -> None:
        self.batches: list[ResultBatch] = []
        self._lock = threading.Lock()
        self._connected = {name: threading.Event() for name in channels}
        self._channels = []
        for name in channels:
            channel = pva.Channel(name)
            channel.monitor(lambda pv, name=name: self._receive(name, pv), "field()")
            self._channels.append(channel)
        for name, connected in self._connected.items():
            if not connected.wait(timeout):
                self.close()
                raise TimeoutError(f"no initial update from {name} in {timeout} s")

    def _receive(self, channel: str, pv: pva.PvObject) -> None:
        if not self._connected[channel].is_set():
            self._connected[channel].set()
            return
        batch = parse_result_batch(pv)
        with self._lock:
            self.batches.append(batch)

    @property
    def frames(self) -> int:
        """Frames received so far, in all batches."""
        with self._lock:
            return sum(len(b) for b in self.batches)

    def column(self, name: str) -> np.ndarray:
        """One of :data:`~ptychonn_ophyd.wire.BATCH_FRAME_FIELDS` over every batch so far."""
        with self._lock:
            return np.concatenate([b.frames[name] for b in self.batches])

    def wait_for(self, n: int, timeout: float = 30.0) -> bool:
        """Wait until ``n`` frames arrived; whether they did."""
        deadline = time.monotonic() + timeout
        while self.frames < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.frames >= n

    def close(self) -> None:
        """Stop monitoring."""
        for channel in self._channels:
            channel.stopMonitor()
