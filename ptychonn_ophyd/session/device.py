"""The ophyd device that runs PtychoNN inference on a detector's PV Access stream.

``stage()`` starts the consumer pool and returns once every worker is ready,
``trigger()`` finishes when every frame the source detector has produced so far has
been inferred (or counted as dropped or rejected), ``unstage()`` stops the pool.
The device monitors the pool's batch channels and hands every result to its writer,
:attr:`PtychoNNDetector.stream`, which yields the run's inference stream documents.
Its configuration signals are the fields of :class:`~ptychonn_ophyd.settings.PoolConfig`;
it asks the workers for per-frame results only as a preview for viewers
(:data:`DEVICE_FRAME_OUTPUTS`), since it reads the batches.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from ophyd import Component as Cpt
from ophyd import Kind, Signal
from ophyd.device import create_device_from_components
from ophyd.status import DeviceStatus

from ptychonn_ophyd.errors import InferenceTimeoutError, StreamWiringError, WorkerDiedError
from ptychonn_ophyd.models import open_model
from ptychonn_ophyd.pool import ConsumerPool, PoolStats
from ptychonn_ophyd.session.results import InferenceResult, ResultMonitor
from ptychonn_ophyd.session.stream import InferenceStream
from ptychonn_ophyd.settings import PoolConfig, signal_value

log = logging.getLogger(__name__)

SETTINGS = tuple(PoolConfig.model_fields)
"""Configuration signals that choose how the pool runs: one per ``PoolConfig`` field."""

DEVICE_FRAME_OUTPUTS = "preview"
"""The device's default ``frame_outputs``: the latest result at a few Hz on each
worker's output channel, for c2dv; every result reaches the run through the batches."""


class FrameSource(Protocol):
    """What the inference device needs to know about the detector feeding it.

    ``last_unique_id`` is the uniqueId of the newest frame published (0 before the
    first): an int, or an ophyd signal holding one.
    """

    last_unique_id: Any


_Settings = create_device_from_components(
    "_Settings",
    docstring="One configuration signal per pool setting, with the setting's default.",
    **{
        name: Cpt(
            Signal,
            value=signal_value(field.default if not field.is_required() else ""),
            kind=Kind.config,
            doc=field.description or "",
        )
        for name, field in PoolConfig.model_fields.items()
    },
)


class PtychoNNDetector(_Settings):
    """PtychoNN inference on the frames of a PV Access detector, as an ophyd device.

    Parameters
    ----------
    source
        The detector whose frames are inferred; its ``last_unique_id`` tells
        :meth:`trigger` which frames to wait for. Without one, ``trigger`` waits for the
        frames the pool has received.
    trigger_timeout
        Seconds without any new result after which :meth:`trigger` gives up on the
        frames still missing (a slow pool that keeps inferring is waited for).
    start_timeout
        Seconds :meth:`stage` waits for every worker to be ready.
    keep_warm
        Keep the workers running after :meth:`unstage`, so the next :meth:`stage` with
        the same settings takes them at once instead of starting new ones (seconds of
        imports and CUDA set-up); :meth:`shutdown` stops them.
    announce
        Told, one line at a time, when the pool starts, what its start waits for, and
        when it is ready and how long that took, or that workers kept warm take the scan
        (default: this module's logger at INFO;
        :func:`~ptychonn_ophyd.session.progress.show_progress` prints them).
    **kwargs
        Initial values of the settings, any field of
        :class:`~ptychonn_ophyd.settings.PoolConfig` (``model``, ``backend``,
        ``n_workers``, ``input_channel``, ``preprocess``, ``outputs``, ``threads``, ...),
        and the usual ophyd ``Device`` arguments.

    The device stores its results only in runs of a RunEngine that carries its
    :class:`~ptychonn_ophyd.session.supplement.InferenceSupplement` (see
    :func:`~ptychonn_ophyd.session.wiring.connect`); staging it anywhere else raises
    :class:`~ptychonn_ophyd.errors.StreamWiringError` rather than lose them.

    Examples
    --------
    >>> inference = PtychoNNDetector(name="inference", model="ptychonn.onnx",
    ...                              input_channel="sim:image", source=det)
    >>> catalog = connect(RE, inference)
    >>> RE(bp.count([det, inference], num=5))
    """

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
        trigger_timeout: float = 30.0,
        start_timeout: float = 60.0,
        keep_warm: bool = False,
        announce: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        settings = {key: kwargs.pop(key) for key in SETTINGS if key in kwargs}
        settings.setdefault("frame_outputs", DEVICE_FRAME_OUTPUTS)
        super().__init__(prefix, name=name, **kwargs)
        for key, value in settings.items():
            getattr(self, key).put(signal_value(value))
        self.source = source
        self.trigger_timeout = trigger_timeout
        self.start_timeout = start_timeout
        self.keep_warm = keep_warm
        self.announce = announce or log.info
        self.stream = InferenceStream(self)
        self.supplement: object | None = None
        self.pool: ConsumerPool | None = None
        self._config: PoolConfig | None = None
        self._monitor: ResultMonitor | None = None
        self._warm: tuple[PoolConfig, ConsumerPool, ResultMonitor] | None = None
        self._arrived = threading.Condition()
        self._received: set[int] = set()
        self._first_id = 1
        self._final_stats: PoolStats | None = None

    # -- settings ------------------------------------------------------------------

    def pool_config(self) -> PoolConfig:
        """The :class:`~ptychonn_ophyd.settings.PoolConfig` the settings describe.

        Raises
        ------
        ArgsError
            A setting does not fit; the message names it.
        """
        return PoolConfig.from_signal_values({key: getattr(self, key).get() for key in SETTINGS})

    @property
    def heads(self) -> tuple[str, ...]:
        """The heads the workers publish (``("phase",)`` or ``("phase", "amplitude")``)."""
        return (self._config or self.pool_config()).outputs

    def image_shape(self) -> tuple[int, int]:
        """``(H, W)`` of the results: the model's input size."""
        return open_model((self._config or self.pool_config()).model).input_shape

    # -- results -------------------------------------------------------------------

    def _on_result(self, result: InferenceResult) -> None:
        with self._arrived:
            self._received.add(result.unique_id)
            self._arrived.notify_all()
        self.stream.take(result)

    @property
    def inferred_count(self) -> int:
        """Results received since staging: the ``inferred`` reading, live."""
        return len(self._received)

    @property
    def batch_channels(self) -> list[str]:
        """The pool's batch channels, which the device reads (empty when not staged)."""
        return self._monitor.batch_channels if self._monitor else []

    @property
    def monitor_overruns(self) -> int:
        """Results the output monitors lost since staging."""
        return self._monitor.overruns if self._monitor else 0

    # -- staging -------------------------------------------------------------------

    def stage(self) -> list[object]:
        """Start the consumer pool and return when every worker is ready.

        Raises
        ------
        StreamWiringError
            No RunEngine carries this device's inference stream: its results would be lost.
        ArgsError
            A setting does not fit.
        PoolStartError
            A worker did not start; the message names it and shows its log.
        """
        if self.supplement is None:
            raise StreamWiringError(
                f"{self.name}: no RunEngine stores its results; call "
                f"ptychonn_ophyd.session.wiring.connect(RE, {self.name}) (or "
                f"RE.preprocessors.append(InferenceSupplement({self.name}))) before staging"
            )
        self._config = self.pool_config()
        staged = super().stage()
        try:
            self._attach(self._config)
        except BaseException:
            self._stop()
            self.shutdown()
            super().unstage()
            raise
        return staged

    def _attach(self, config: PoolConfig) -> None:
        """Take the workers kept warm when their settings are these, else start new ones."""
        warm, self._warm = self._warm, None
        if warm is not None and warm[0] == config and _healthy(warm[1]):
            _, self.pool, self._monitor = warm
            self.announce(f"{self.name}: {_workers(config)} kept warm, ready at once")
        else:
            if warm is not None:
                _close(*warm[1:])
            self._start(config)
        facts = self.pool.facts()
        self.model_hash.put(str(facts.get("model_hash", "")))
        self.engine.put(str(facts.get("engine", facts.get("backend", ""))))
        self.gpu_names.put(", ".join(facts.get("gpu_names") or []))
        self._received = set()
        self._final_stats = None
        self._first_id = self.source_last_id() + 1

    def _start(self, config: PoolConfig) -> None:
        self.announce(
            f"{self.name}: starting {_workers(config)} on {config.input_channel} at "
            f"{time.strftime('%H:%M:%S')} (model {Path(config.model).name}, {config.backend})"
        )
        began = time.monotonic()
        self.pool = ConsumerPool(config)
        self.pool.start(
            timeout=self.start_timeout, progress=lambda line: self.announce(f"{self.name}: {line}")
        )
        self._monitor = ResultMonitor(self.pool.batch_channels, self._on_result)
        self._monitor.start()
        engine = self.pool.facts().get("engine") or config.backend
        self.announce(
            f"{self.name}: {_workers(config)} ready in {time.monotonic() - began:.1f} s ({engine})"
        )

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
        if pool is not None:
            self._final_stats = pool.stats()
        if self.keep_warm and pool is not None and monitor is not None and _healthy(pool):
            self._warm = (self._config, pool, monitor)
            return
        _close(pool, monitor)

    def shutdown(self) -> None:
        """Stop the workers kept warm (``keep_warm``); unstaging stops all others."""
        warm, self._warm = self._warm, None
        if warm is not None:
            _close(*warm[1:])

    def pool_stats(self, since: float | None = None) -> PoolStats | None:
        """The pool's statistics: live while staged, as at the last unstage after, or None.

        ``since``: live statistics from status updates made after that ``time.time()``
        (see :meth:`~ptychonn_ophyd.pool.ConsumerPool.stats`).
        """
        return self.pool.stats(since) if self.pool is not None else self._final_stats

    def facts(self) -> dict[str, Any]:
        """Model, backend, engine and pool facts for run metadata (pool running or not)."""
        facts = {key: getattr(self, key).get() for key in SETTINGS}
        if self.pool is not None:
            facts.update(self.pool.facts())
        return _jsonable(facts)

    # -- acquisition ---------------------------------------------------------------

    def trigger(self) -> DeviceStatus:
        """A status that finishes once every frame produced so far is inferred.

        It fails with :class:`~ptychonn_ophyd.errors.InferenceTimeoutError` naming the
        missing uniqueIds when no result came for ``trigger_timeout`` s, and with the
        pool's ``WorkerDiedError`` when a worker dies.
        """
        status = DeviceStatus(self)
        if self.pool is None:
            status.set_exception(RuntimeError(f"{self.name} is not staged: no consumer pool"))
            return status
        last = self.source_last_id()
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

    def _lost(self, stats: PoolStats | None = None) -> int:
        stats = stats or self.pool.stats()
        return int(stats.dropped) + int(sum(stats.rejected.values()))

    def missing_ids(self, last: int | None = None) -> list[int]:
        """uniqueIds produced since staging (up to ``last``) with no result yet."""
        last = self.source_last_id() if last is None else last
        received = set(self._received)
        return [i for i in range(self._first_id, last + 1) if i not in received]

    def source_last_id(self) -> int:
        """The source's newest uniqueId (0 without a source); a counter that went back
        means the source restarted at 1."""
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
        self.inferred.put(self.inferred_count)
        self.dropped.put(int(stats.dropped))
        self.rejected.put(int(sum(stats.rejected.values())))
        self.rate.put(float(stats.rate_hz))
        self.latency_p50.put(float(stats.latency_p50_s))
        self.latency_p99.put(float(stats.latency_p99_s))


def _close(pool: ConsumerPool | None, monitor: ResultMonitor | None) -> None:
    """Stop ``pool``, then ``monitor``."""
    with contextlib.ExitStack() as stopping:
        # Last in, first out: the monitor stops after the pool, because pvapy's
        # stopMonitor holds the GIL and a result arriving meanwhile could wait for good.
        if monitor is not None:
            stopping.callback(monitor.stop)
        if pool is not None:
            stopping.callback(pool.stop)


def _workers(config: PoolConfig) -> str:
    """``"1 worker"`` or ``"4 workers"``."""
    return f"{config.n_workers} worker{'s' * (config.n_workers != 1)}"


def _healthy(pool: ConsumerPool) -> bool:
    """Whether every worker of ``pool`` still runs."""
    try:
        pool.check_health()
    except WorkerDiedError:
        return False
    return True


def last_unique_id(source: FrameSource) -> int:
    """``source.last_unique_id`` as an int, read from the signal if it is one."""
    value = source.last_unique_id
    return int((value.get() if hasattr(value, "get") else value) or 0)


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
