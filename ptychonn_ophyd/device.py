"""The ophyd device that runs PtychoNN inference on a detector's PV Access stream.

``stage()`` starts the consumer pool and returns once every worker is ready,
``trigger()`` finishes when every frame the source detector has produced so far has
been inferred (or counted as dropped or rejected), ``unstage()`` stops the pool.
The device also owns the one PV Access monitor on the pool's output channels and hands
each result to whoever subscribed (:meth:`PtychoNNDetector.subscribe_results`), which is
how :class:`~ptychonn_ophyd.callbacks.InferenceCallback` receives them.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, Kind, Signal
from ophyd.status import DeviceStatus

from .pool import ConsumerPool, PoolConfig
from .preprocess import PreprocessConfig

log = logging.getLogger(__name__)

SETTINGS = (
    "model",
    "backend",
    "precision",
    "n_workers",
    "gpus",
    "batch_size",
    "input_channel",
    "output_prefix",
)
"""Configuration components that choose how the pool runs (keyword arguments too)."""

MONITOR_REQUEST = "record[queueSize=1000]field()"
"""Monitor request: a deep server-side queue absorbs bursts. The client-side pvapy
queue (``setMonitorMaxQueueLength``) stays off: in pvapy 5.6 it intermittently never
calls the subscriber although updates are counted as received."""


class FrameSource(Protocol):
    """What the inference device needs to know about the detector feeding it.

    ``last_unique_id`` is the uniqueId of the newest frame published (0 before the
    first): an int, or an ophyd signal holding one.
    """

    last_unique_id: Any


class InferenceTimeoutError(TimeoutError):
    """Frames the source produced were not inferred in time; ``missing`` holds their ids."""

    def __init__(self, name: str, missing: list[int], waited: float, lost: int) -> None:
        shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
        super().__init__(
            f"{name}: {len(missing)} frame(s) not inferred, and no result for {waited:.1f} s "
            f"(pool counts {lost} dropped or rejected): uniqueId {shown}"
        )
        self.missing = missing


@dataclass(frozen=True)
class InferenceResult:
    """One frame's prediction as published by a consumer.

    ``x``, ``y`` (micrometres) and ``point`` come from the input frame's attributes and
    are NaN / -1 when the detector did not send them; ``timestamp`` is the frame's.
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


def parse_ntndarray(pv: Any) -> tuple[int, np.ndarray, dict[str, Any], float]:
    """``(uniqueId, image, attributes, timestamp)`` of an NTNDArray ``PvObject``."""
    (array,) = pv["value"][0].values()
    dims = [d["size"] for d in pv["dimension"]]
    image = np.asarray(array).reshape(dims[::-1])
    attributes = {a["name"]: a["value"][0]["value"] for a in pv["attribute"]}
    stamp = pv["dataTimeStamp"]
    timestamp = stamp["secondsPastEpoch"] + 1e-9 * stamp["nanoseconds"]
    return pv["uniqueId"], image, attributes, timestamp or time.time()


def make_result(
    unique_id: int,
    phase: np.ndarray,
    attributes: dict[str, Any],
    timestamp: float,
    amplitude: np.ndarray | None = None,
) -> InferenceResult:
    """An :class:`InferenceResult` from the parts of an output NTNDArray."""
    return InferenceResult(
        unique_id=int(unique_id),
        phase=np.asarray(phase, dtype=np.float32),
        amplitude=None if amplitude is None else np.asarray(amplitude, dtype=np.float32),
        consumer_id=int(attributes.get("consumerId", -1)),
        latency_s=float(attributes.get("latencySeconds", np.nan)),
        x=float(attributes.get("x", np.nan)),
        y=float(attributes.get("y", np.nan)),
        point=int(attributes.get("point", -1)),
        timestamp=float(timestamp),
        model_hash=str(attributes.get("modelHash", "")),
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
        self._phases: dict[int, tuple] = {}
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
        uid, image, attributes, timestamp = parse_ntndarray(pv)
        if not self.amplitude_channels:
            self._on_result(make_result(uid, image, attributes, timestamp))
            return
        with self._lock:
            amplitude = self._amplitudes.pop(uid, None)
            if amplitude is None:
                self._phases[uid] = (image, attributes, timestamp)
                return
        self._on_result(make_result(uid, image, attributes, timestamp, amplitude))

    def _amplitude(self, pv: Any) -> None:
        if not pv["uniqueId"]:
            return
        uid, image, _, _ = parse_ntndarray(pv)
        with self._lock:
            phase = self._phases.pop(uid, None)
            if phase is None:
                self._amplitudes[uid] = image
                return
        self._on_result(make_result(uid, phase[0], phase[1], phase[2], image))


class PtychoNNDetector(Device):
    """PtychoNN inference on the frames of a PV Access detector, as an ophyd device.

    Parameters
    ----------
    source
        The detector whose frames are inferred; its ``last_unique_id`` tells
        :meth:`trigger` which frames to wait for. Without one, ``trigger`` waits for the
        frames the pool has received.
    preprocess
        Crop, bin and threshold applied by the workers.
    outputs
        Heads to publish: ``("phase",)`` or ``("phase", "amplitude")``.
    trigger_timeout
        Seconds without any new result after which :meth:`trigger` gives up on the
        frames still missing (a slow pool that keeps inferring is waited for).
    start_timeout
        Seconds :meth:`stage` waits for every worker to be ready.
    pool_options
        Further :class:`~ptychonn_ophyd.pool.PoolConfig` fields (``threads``,
        ``batch_timeout``, ``distributor_updates``, ``log_dir``, ...).
    **kwargs
        Initial values of the settings (``model``, ``backend``, ``precision``,
        ``n_workers``, ``gpus``, ``batch_size``, ``input_channel``, ``output_prefix``)
        and the usual ophyd ``Device`` arguments.

    Examples
    --------
    >>> inference = PtychoNNDetector(name="inference", model="ptychonn.onnx",
    ...                              input_channel="sim:image", source=det)
    >>> RE(bp.count([det, inference], num=5))
    """

    model = Cpt(Signal, value="", kind=Kind.config)
    backend = Cpt(Signal, value="auto", kind=Kind.config)
    precision = Cpt(Signal, value="fp32", kind=Kind.config)
    n_workers = Cpt(Signal, value=1, kind=Kind.config)
    gpus = Cpt(Signal, value="auto", kind=Kind.config)
    batch_size = Cpt(Signal, value=8, kind=Kind.config)
    input_channel = Cpt(Signal, value="", kind=Kind.config)
    output_prefix = Cpt(Signal, value="inference", kind=Kind.config)
    model_hash = Cpt(Signal, value="", kind=Kind.config)
    engine = Cpt(Signal, value="", kind=Kind.config)
    gpu_names = Cpt(Signal, value="", kind=Kind.config)

    inferred = Cpt(Signal, value=0, kind=Kind.hinted)
    dropped = Cpt(Signal, value=0)
    rejected = Cpt(Signal, value=0)
    rate = Cpt(Signal, value=0.0)
    latency_p50 = Cpt(Signal, value=0.0)
    latency_p99 = Cpt(Signal, value=0.0)

    def __init__(
        self,
        prefix: str = "",
        *,
        name: str,
        source: FrameSource | None = None,
        preprocess: PreprocessConfig | None = None,
        outputs: tuple[str, ...] = ("phase",),
        trigger_timeout: float = 30.0,
        start_timeout: float = 60.0,
        pool_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        settings = {key: kwargs.pop(key) for key in SETTINGS if key in kwargs}
        super().__init__(prefix, name=name, **kwargs)
        for key, value in settings.items():
            getattr(self, key).put(value)
        self.source = source
        self.preprocess = preprocess or PreprocessConfig()
        self.outputs = tuple(outputs)
        self.trigger_timeout = trigger_timeout
        self.start_timeout = start_timeout
        self.pool_options = dict(pool_options or {})
        self.pool: Any = None
        self._monitor: ResultMonitor | None = None
        self._sinks: dict[int, Callable[[InferenceResult], None]] = {}
        self._tokens = itertools.count()
        self._arrived = threading.Condition()
        self._received: set[int] = set()
        self._first_id = 1
        self._final_stats: Any = None

    # -- results -------------------------------------------------------------------

    def subscribe_results(self, sink: Callable[[InferenceResult], None]) -> int:
        """Call ``sink(result)`` (in a pvapy thread) for every result; returns a token."""
        token = next(self._tokens)
        self._sinks = {**self._sinks, token: sink}
        return token

    def unsubscribe_results(self, token: int) -> None:
        """Stop calling the sink registered under ``token``."""
        self._sinks = {k: v for k, v in self._sinks.items() if k != token}

    def _on_result(self, result: InferenceResult) -> None:
        with self._arrived:
            self._received.add(result.unique_id)
            self._arrived.notify_all()
        for sink in self._sinks.values():
            sink(result)

    @property
    def output_channels(self) -> list[str]:
        """The pool's phase channels (empty when not staged)."""
        return self._monitor.output_channels if self._monitor else []

    @property
    def monitor_overruns(self) -> int:
        """Results the output monitors lost since staging."""
        return self._monitor.overruns if self._monitor else 0

    # -- staging -------------------------------------------------------------------

    def pool_config(self) -> Any:
        """The :class:`~ptychonn_ophyd.pool.PoolConfig` the settings describe."""
        return PoolConfig(
            model=str(self.model.get()),
            input_channel=self.input_channel.get(),
            output_prefix=self.output_prefix.get(),
            n_workers=int(self.n_workers.get()),
            backend=self.backend.get(),
            precision=self.precision.get(),
            gpus=_gpus(self.gpus.get()),
            batch_size=int(self.batch_size.get()),
            preprocess=self.preprocess,
            outputs=self.outputs,
            **self.pool_options,
        )

    def stage(self) -> list[object]:
        """Start the consumer pool and return when every worker is ready.

        Raises
        ------
        PoolStartError
            A worker did not start; the message names it and shows its log.
        """
        staged = super().stage()
        try:
            self._start()
        except BaseException:
            self._stop()
            super().unstage()
            raise
        return staged

    def _start(self) -> None:
        self.pool = ConsumerPool(self.pool_config())
        self.pool.start(timeout=self.start_timeout)
        facts = self.pool.facts()
        self.model_hash.put(str(facts.get("model_hash", "")))
        self.engine.put(str(facts.get("engine", facts.get("backend", ""))))
        self.gpu_names.put(", ".join(facts.get("gpu_names") or []))
        self._received = set()
        self._final_stats = None
        self._first_id = last_unique_id(self.source) + 1 if self.source is not None else 1
        self._monitor = ResultMonitor(
            self.pool.output_channels, self.pool.amplitude_channels, self._on_result
        )
        self._monitor.start()

    def unstage(self) -> list[object]:
        """Stop the monitor and the pool (the RunEngine calls this on abort and failure too)."""
        try:
            self._stop()
        finally:
            unstaged = super().unstage()
        return unstaged

    def _stop(self) -> None:
        monitor, pool = self._monitor, self.pool
        self._monitor = self.pool = None
        with contextlib.ExitStack() as stopping:
            # Last in, first out: the monitor stops after the pool, because pvapy's
            # stopMonitor holds the GIL and a result arriving meanwhile could wait for good.
            if monitor is not None:
                stopping.callback(monitor.stop)
            if pool is not None:
                stopping.callback(pool.stop)
                self._final_stats = pool.stats()

    def pool_stats(self) -> Any:
        """The pool's ``PoolStats``: live while staged, as at the last unstage after, or None."""
        return self.pool.stats() if self.pool is not None else self._final_stats

    def facts(self) -> dict[str, Any]:
        """Model, backend, engine and pool facts for run metadata (pool running or not)."""
        facts = {key: getattr(self, key).get() for key in SETTINGS}
        if self.pool is not None:
            facts.update(self.pool.facts())
        return _jsonable(facts)

    # -- acquisition ---------------------------------------------------------------

    def trigger(self) -> DeviceStatus:
        """A status that finishes once every frame produced so far is inferred.

        It fails with :class:`InferenceTimeoutError` naming the missing uniqueIds when no
        result came for ``trigger_timeout`` s, and with the pool's ``WorkerDiedError`` when
        a worker dies.
        """
        status = DeviceStatus(self)
        if self.pool is None:
            status.set_exception(RuntimeError(f"{self.name} is not staged: no consumer pool"))
            return status
        last = self._source_last_id()
        waiter = threading.Thread(
            target=self._wait_inferred,
            args=(status, last),
            name=f"{self.name}-trigger",
            daemon=True,
        )
        waiter.start()
        return status

    def _wait_inferred(self, status: DeviceStatus, last: int) -> None:
        progress, seen = time.monotonic(), len(self._received)
        try:
            while not self._accounted(last):
                self.pool.check_health()
                if len(self._received) != seen:
                    progress, seen = time.monotonic(), len(self._received)
                elif time.monotonic() - progress > self.trigger_timeout:
                    raise InferenceTimeoutError(
                        self.name, self.missing_ids(last), self.trigger_timeout, self._lost()
                    )
                with self._arrived:
                    self._arrived.wait(0.1)
        except Exception as error:
            status.set_exception(error)
        else:
            status.set_finished()

    def _accounted(self, last: int) -> bool:
        pool = self.pool
        if pool is None:
            raise RuntimeError(f"{self.name} was unstaged while waiting for inference")
        if self.source is None:
            stats = pool.stats()
            return stats.inferred + self._lost(stats) >= stats.received
        expected = last - self._first_id + 1
        received = len(self._received)
        return received >= expected or received + self._lost() >= expected

    def _lost(self, stats: Any = None) -> int:
        stats = stats or self.pool.stats()
        return int(stats.dropped) + int(sum(stats.rejected.values()))

    def missing_ids(self, last: int | None = None) -> list[int]:
        """uniqueIds produced since staging (up to ``last``) with no result yet."""
        last = self._source_last_id() if last is None else last
        received = set(self._received)
        return [i for i in range(self._first_id, last + 1) if i not in received]

    def _source_last_id(self) -> int:
        """The source's newest uniqueId; a counter that went back means it restarted at 1."""
        if self.source is None:
            return 0
        last = last_unique_id(self.source)
        if last < self._first_id - 1:
            self._first_id = 1
        return last

    def read(self) -> dict[str, dict[str, Any]]:
        """Frames inferred (results received since staging), dropped and rejected, rate
        (Hz) and latency (s) as the workers last reported them."""
        self._update_stats()
        return super().read()

    def _update_stats(self) -> None:
        if self.pool is None:
            return
        stats = self.pool.stats()
        self.inferred.put(len(self._received))
        self.dropped.put(int(stats.dropped))
        self.rejected.put(int(sum(stats.rejected.values())))
        self.rate.put(float(stats.rate_hz))
        self.latency_p50.put(float(stats.latency_p50_s))
        self.latency_p99.put(float(stats.latency_p99_s))


def last_unique_id(source: FrameSource) -> int:
    """``source.last_unique_id`` as an int, read from the signal if it is one."""
    value = source.last_unique_id
    return int((value.get() if hasattr(value, "get") else value) or 0)


def _gpus(value: Any) -> str | tuple[int, ...]:
    """``"auto"``, or GPU indices from ``"0,1"`` or a sequence."""
    if value == "auto":
        return value
    if isinstance(value, str):
        value = value.replace(",", " ").split()
    return tuple(int(v) for v in np.atleast_1d(value))


def _jsonable(value: Any) -> Any:
    """``value`` with tuples as lists and unknown objects as strings (for documents)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    return str(value)
