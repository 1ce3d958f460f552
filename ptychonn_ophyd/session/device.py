"""The ophyd device that runs PtychoNN inference on a detector's PV Access stream.

``stage()`` starts the consumer pool (:mod:`~ptychonn_ophyd.session.workers`), or with
``attach`` finds and checks workers running as services on other hosts, and returns
once every worker is ready; ``trigger()`` finishes when every frame the source detector
has produced so far has been inferred or counted as dropped or rejected
(:mod:`~ptychonn_ophyd.session.trigger`); ``unstage()`` stops the pool (or, attached,
stops watching it).  The device hands every result batch to its fan-out,
:attr:`PtychoNNDetector.results`, which the trigger and the run's writer (through the
supplement) subscribe to.  Its configuration signals are the fields of
:class:`~ptychonn_ophyd.settings.PoolConfig`; it asks the workers for per-frame results
only as a preview for viewers (:data:`DEVICE_FRAME_OUTPUTS`), since it reads the batches.
"""

from __future__ import annotations

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
from ophyd.status import StatusBase

from ptychonn_ophyd.errors import StreamWiringError
from ptychonn_ophyd.models import open_model
from ptychonn_ophyd.pool import START_TIMEOUT_S, PoolStats, WorkerPool
from ptychonn_ophyd.session.ledger import Counts, FrameLedger
from ptychonn_ophyd.session.results import ResultFanout
from ptychonn_ophyd.session.store_link import StoreLink
from ptychonn_ophyd.session.trigger import PointTrigger
from ptychonn_ophyd.session.workers import Workers
from ptychonn_ophyd.session.writer import RowSink
from ptychonn_ophyd.settings import PoolConfig, signal_value
from ptychonn_ophyd.store.file import RowLayout, RowWriter

log = logging.getLogger(__name__)

SETTINGS = tuple(PoolConfig.model_fields)
"""Configuration signals that choose how the pool runs: one per ``PoolConfig`` field."""

DEVICE_FRAME_OUTPUTS = "preview"
"""The device's default ``frame_outputs``: the latest result at a few Hz on each
worker's output channel, for c2dv; every result reaches the run through the batches."""
WATCH_PERIOD = 0.05
"""Seconds between two readings of the source's counter and the pool's counts while
staged (a source that restarts shows as its counter going back)."""


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
    store_process
        Receive the results and write the runs' rows in a process of their own
        (:mod:`ptychonn_ophyd.store`), started at staging: the session then handles each
        batch without its images (unless a live view stitches them), so its Python
        keeps the detector's pace at rates where receiving and writing 64 KB a frame
        would hold it back.  Default: in the session's process.
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
        start_timeout: float = START_TIMEOUT_S,
        keep_warm: bool = False,
        store_process: bool = False,
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
        self.results = ResultFanout()
        """Every result batch of the staged pool goes here; subscribe to take them."""
        self.announce = announce or log.info
        self._workers = Workers(
            name, self.results, lambda line: self.announce(line), store_process=store_process
        )
        self._config: PoolConfig | None = None
        self._trigger: PointTrigger | None = None
        self._watching = threading.Event()
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

    # -- the pool ------------------------------------------------------------------

    @property
    def pool(self) -> WorkerPool | None:
        """The running pool (``None`` when not staged)."""
        return self._workers.pool

    @property
    def batch_channels(self) -> list[str]:
        """The pool's batch channels, which the device reads (empty when not staged)."""
        monitor = self._workers.monitor
        return monitor.batch_channels if monitor else []

    @property
    def store_pid(self) -> int | None:
        """The store process's pid (``store_process``, while staged), else ``None``."""
        receiver = self._workers.monitor
        return receiver.pid if isinstance(receiver, StoreLink) else None

    @property
    def monitor_overruns(self) -> int:
        """Results the batch monitors lost since the pool started."""
        monitor = self._workers.monitor
        return monitor.overruns if monitor else 0

    @property
    def inferred_count(self) -> int:
        """Frames inferred since staging: the ``inferred`` reading, live."""
        return self._trigger.inferred if self._trigger is not None else 0

    def pool_stats(self, since: float | None = None) -> PoolStats | None:
        """The pool's statistics: live while staged, as at the last unstage after, or None.

        ``since``: live statistics from status updates made after that ``time.time()``
        (see :meth:`~ptychonn_ophyd.pool.WorkerPool.stats`).
        """
        return self.pool.stats(since) if self.pool is not None else self._final_stats

    def pool_counts(self, since: float | None = None) -> Counts:
        """Frames the pool received, dropped and rejected since it started."""
        return Counts.of(self.pool_stats(since))

    def span_counts(self) -> Counts:
        """The pool's counts to count a new span from (a staging's, a run's).

        They are made after the newest result taken, so that a scan begun right after
        another does not count the other's last frames as its own.  Workers post their
        counts every ``status_period`` (1 s), so this waits for that at most, and only
        when a result came within it.
        """
        return self.pool_counts(since=self.results.last_published or None)

    def facts(self) -> dict[str, Any]:
        """Model, backend, engine and pool facts for run metadata (pool running or not)."""
        facts = {key: getattr(self, key).get() for key in SETTINGS}
        if self.pool is not None:
            facts.update(self.pool.facts())
        return _jsonable(facts)

    # -- staging -------------------------------------------------------------------

    def stage(self) -> list[object]:
        """Start the consumer pool (``attach``: find the running workers, check their
        settings and swap in the device's model) and return when every worker is ready.

        Raises
        ------
        StreamWiringError
            No RunEngine stores this device's results: they would be lost.
        ArgsError
            A setting does not fit.
        PoolStartError
            A worker did not start; the message names it and shows its log.
        """
        if not self.results.storing:
            raise StreamWiringError(
                f"{self.name}: no RunEngine stores its results; call "
                f"ptychonn_ophyd.session.wiring.connect(RE, {self.name}) (or "
                f"RE.preprocessors.append(InferenceSupplement({self.name}))) before staging"
            )
        self._config = self.pool_config()
        staged = super().stage()
        try:
            pool = self._workers.start(self._config, self.start_timeout)
        except BaseException:
            self._workers.release(keep_warm=False)
            self._workers.shutdown()
            super().unstage()
            raise
        facts = pool.facts()
        self.model_hash.put(str(facts.get("model_hash", "")))
        self.engine.put(str(facts.get("engine", facts.get("backend", ""))))
        self.gpu_names.put(", ".join(facts.get("gpu_names") or []))
        self._final_stats = None
        self._begin_watch()
        return staged

    def _begin_watch(self) -> None:
        """Start the staging's trigger and its watch thread."""
        first_id = self.source_last_id() + 1 if self.source is not None else None
        ledger = FrameLedger(first_id, time.time(), self.span_counts())
        self._trigger = PointTrigger(self.name, ledger, self.trigger_timeout, self.monitor_overruns)
        self.results.subscribe(self._trigger)
        self._watching = threading.Event()
        threading.Thread(
            target=self._watch,
            args=(self._trigger, self._watching),
            name=f"{self.name}-watch",
            daemon=True,
        ).start()

    def _watch(self, trigger: PointTrigger, ended: threading.Event) -> None:
        """Read the source's counter and the pool's counts every :data:`WATCH_PERIOD`."""
        while not ended.wait(WATCH_PERIOD):
            pool = self.pool
            if pool is None:
                return
            try:
                if self.source is not None:
                    self.results.on_source(self.source_last_id(), time.time())
                trigger.poll(Counts.of(pool.stats()), self._check_health, self.monitor_overruns)
            except Exception:  # a source that cannot be read now is read again soon
                log.debug("%s: watching the source and the pool failed", self.name, exc_info=True)

    def _check_health(self) -> None:
        """Raise if a worker died, or the store process (``store_process``) ended."""
        self.pool.check_health()
        self._workers.check_store()

    def open_rows(self, uid: str, path: Path, layout: RowLayout) -> RowSink:
        """Where run ``uid``'s rows are written: a file of the store process when
        ``store_process``, else a writing thread of this process.

        Raises
        ------
        StreamWiringError
            ``store_process`` and not staged: the store process starts at staging.
        StorageFullError
            The disk has no room for the file.
        """
        if not self._workers.store_process:
            return RowWriter(uid, path, layout)
        link = self._workers.monitor
        if link is None:
            raise StreamWiringError(
                f"{self.name}: store_process=True stores results only while staged; stage "
                "it before its run opens"
            )
        return link.open_rows(uid, path, layout)

    def unstage(self) -> list[object]:
        """Stop the monitor and the pool (the RunEngine calls this on abort and failure too)."""
        try:
            self._end_watch()
            if self.pool is not None:
                self._final_stats = self.pool.stats()
            self._workers.release(self.keep_warm)
        finally:
            unstaged = super().unstage()
        return unstaged

    def _end_watch(self) -> None:
        self._watching.set()
        trigger, self._trigger = self._trigger, None
        if trigger is not None:
            self.results.unsubscribe(trigger)
            trigger.close("unstaged")

    def shutdown(self) -> None:
        """Stop the workers kept warm (``keep_warm``); unstaging stops all others."""
        self._workers.shutdown()

    # -- acquisition ---------------------------------------------------------------

    def trigger(self) -> StatusBase:
        """A status that finishes once every frame produced so far is inferred.

        It fails with :class:`~ptychonn_ophyd.errors.InferenceTimeoutError` naming the
        missing uniqueIds when no result came for ``trigger_timeout`` s, and with the
        pool's ``WorkerDiedError`` when a worker dies.
        """
        if self._trigger is None:
            status = StatusBase()
            status.set_exception(RuntimeError(f"{self.name} is not staged: no consumer pool"))
            return status
        return self._trigger.wait(self.source_last_id() if self.source is not None else None)

    def source_last_id(self) -> int:
        """The source's newest uniqueId (0 without a source)."""
        return last_unique_id(self.source) if self.source is not None else 0

    def read(self) -> dict[str, dict[str, Any]]:
        """Frames inferred, dropped and rejected since staging, rate (Hz) and latency (s)
        as the workers last reported them."""
        self._update_stats()
        return super().read()

    def _update_stats(self) -> None:
        if self.pool is None:
            return
        stats = self.pool.stats()
        counts = Counts.of(stats)
        if self._trigger is not None:
            counts = counts.since(self._trigger.ledger.pool_at_start)
        self.inferred.put(self.inferred_count)
        self.dropped.put(counts.dropped)
        self.rejected.put(sum(counts.rejected.values()))
        self.rate.put(float(stats.rate_hz))
        self.latency_p50.put(float(stats.latency_p50_s))
        self.latency_p99.put(float(stats.latency_p99_s))


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
