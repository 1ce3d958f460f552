"""Giving every run that uses the inference device its inference stream.

Bluesky's :class:`~bluesky.preprocessors.SupplementalData` adds baseline readings to
every plan; :class:`InferenceSupplement` does the same for the inference stream, so it
is there whatever the plan (``bp.count``, ``bp.grid_scan``, ``scan_with_inference``, a
plan of your own) and whoever listens to the RunEngine::

    RE.preprocessors.append(InferenceSupplement(inference, assets_dir=assets))
    RE.subscribe(TiledWriter(client))

In a run that names the device among its ``detectors`` (or carries the ``ptychonn``
start key), it builds the run's :class:`~ptychonn_ophyd.session.run.InferenceRun` after
``open_run`` and declares its stream, collects the new rows after an event (at most
every ``collect_period`` seconds), and before ``close_run`` waits for the frames still
being inferred, collects the last rows and reads the frame accounting into
``inference_accounting``.  With a :class:`~ptychonn_ophyd.session.live_view.LiveView` the
run's rows are also stitched live, and its final image is read into the one-row stream
``mosaic``.  The documents come from the RunEngine, so nothing has to sit between it and
its subscribers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import bluesky.plan_stubs as bps
from bluesky.preprocessors import plan_mutator
from bluesky.utils import Msg

from ptychonn_ophyd.errors import StreamWiringError
from ptychonn_ophyd.run_schema import (
    ACCOUNTING_STREAM,
    METADATA_KEY,
    MOSAIC_STREAM,
    PIXEL_SIZE_KEY,
    STREAM,
    stream_file_name,
)
from ptychonn_ophyd.session.ledger import FrameLedger
from ptychonn_ophyd.session.live_view import LiveView, MosaicReading
from ptychonn_ophyd.session.run import AccountingReading, InferenceRun
from ptychonn_ophyd.session.writer import StreamSpec, StreamWriter
from ptychonn_ophyd.wire import ResultBatch

if TYPE_CHECKING:
    from ptychonn_ophyd.session.device import PtychoNNDetector

log = logging.getLogger(__name__)

Plan = Generator[Msg, Any, Any]

SETTLE_PERIOD = 0.02
"""Seconds between two looks at whether a run's frames all have an outcome."""

ABORTED_WITHOUT_REASON = "aborted (RE.abort() or RE.halt(), e.g. after Ctrl-C); no reason given"
"""The stop document's ``reason`` of an aborted run when nothing said why."""


class InferenceSupplement:
    """A RunEngine preprocessor adding ``device``'s inference stream to the runs that use it.

    Parameters
    ----------
    device
        The inference device; one supplement per device.
    assets_dir
        Folder for the runs' HDF5 files, in the catalog's readable storage
        (:func:`~ptychonn_ophyd.catalog.assets_directory`).
    grace
        Seconds the end of a run waits for frames still being inferred.
    collect_period
        Least seconds between two collects during a run: each collect announces its rows
        with one ``stream_datum`` per column, which a ``TiledWriter`` writes one by one
        in the RunEngine's thread, so collecting often slows the scan.
    live_view
        Stitches each run's results as they arrive, and its final image is stored.

    Raises
    ------
    StreamWiringError
        ``device``'s results are stored already: a second supplement would store every
        row twice.
    """

    def __init__(
        self,
        device: PtychoNNDetector,
        assets_dir: Path | None = None,
        grace: float = 5.0,
        collect_period: float = 2.0,
        live_view: LiveView | None = None,
    ) -> None:
        if device.results.storing:
            raise StreamWiringError(
                f"{device.name} already has an InferenceSupplement; a second one would store "
                "every result twice"
            )
        self.device = device
        self.assets_dir = assets_dir
        self.grace = grace
        self.collect_period = collect_period
        self.live_view = live_view
        self.run: InferenceRun | None = None
        """The run being written; after it ends, the last one (counting late results)."""
        self.accounting = AccountingReading(f"{device.name}_accounting")
        self.mosaic = MosaicReading(f"{device.name}_mosaic")
        self.abort_reason = ""
        """The ``reason`` of an aborted run's stop document when the abort gave none."""
        self._late: dict[str, int] = {}
        self._writing = False
        self._overruns_at_open = 0
        self._collected_at = 0.0
        device.results.subscribe(self, stores=True, images=live_view is not None)

    def __call__(self, plan: Plan) -> Plan:
        return (yield from plan_mutator(plan, self._insert))

    # -- results, from the device's fan-out --------------------------------------------

    def on_batch(self, batch: ResultBatch) -> None:
        run = self.run
        if run is not None:
            run.on_batch(batch)

    def on_source(self, last_id: int, now: float) -> None:
        run = self.run
        if run is not None and not run.sealed:
            run.on_source(last_id, now)

    def late(self, uid: str) -> int:
        """Results of run ``uid``'s frames that came after its rows were stored."""
        run = self.run
        return run.late if run is not None and run.uid == uid else self._late.get(uid, 0)

    # -- the plan ----------------------------------------------------------------------

    def _insert(self, msg: Msg) -> tuple[Plan | None, Plan | None]:
        if msg.command == "open_run" and self._uses_device(msg.kwargs):
            return self._open(msg), None
        if msg.command == "save" and self._writing and self._due():
            return None, self._collect(self.run.writer)
        if msg.command == "close_run" and self._writing:
            return self._close(msg), None
        return None, None

    def _collect(self, writer: StreamWriter) -> Plan:
        """Announce the rows written since the last collect; fail the run if the disk
        filled (:class:`~ptychonn_ophyd.errors.StorageFullError`)."""
        yield from bps.collect(writer, name=STREAM)
        failure = writer.take_failure()
        if failure is not None:
            raise failure

    def _due(self) -> bool:
        """Whether ``collect_period`` has passed since the last collect (then it restarts)."""
        now = time.monotonic()
        if now - self._collected_at < self.collect_period:
            return False
        self._collected_at = now
        return True

    def _uses_device(self, md: dict) -> bool:
        return self.device.name in md.get("detectors", ()) or METADATA_KEY in md

    def _open(self, msg: Msg) -> Plan:
        uid = yield msg
        if self.assets_dir is None:
            raise StreamWiringError(
                f"{self.device.name}: no assets folder for the inference stream; give "
                "InferenceSupplement an assets_dir (connect() does)"
            )
        device = self.device
        spec = StreamSpec(
            name=device.name,
            source=f"PVA:{device.output_prefix.get()}",
            image_shape=device.image_shape(),
            amplitude="amplitude" in device.heads,
            configuration=device.read_configuration(),
            configuration_keys=device.describe_configuration(),
        )
        first_id = device.source_last_id() + 1 if device.source is not None else None
        ledger = FrameLedger(first_id, time.time(), device.span_counts())
        follow = self._begin_mosaic(uid, msg.kwargs, spec) if self.live_view else None
        path = self.assets_dir / stream_file_name(uid)
        writer = StreamWriter(uid, spec, device.open_rows(uid, path, spec.layout))
        if self.run is not None:
            self._late[self.run.uid] = self.run.retire()
        self.run, self._writing = InferenceRun(ledger, writer, follow), True
        self._overruns_at_open = device.monitor_overruns
        yield from bps.declare_stream(writer, name=STREAM, collect=True)
        return uid

    def _begin_mosaic(self, uid: str, md: dict, spec: StreamSpec) -> Any:
        """The live view's ``take`` when it stitches this run, else ``None``."""
        live = self.live_view
        if not live.begin(uid, md.get(PIXEL_SIZE_KEY), spec.image_shape, spec.amplitude):
            return None
        live.publish_on(self.device.output_prefix.get())
        return live.take

    def _close(self, msg: Msg) -> Plan:
        run, self._writing = self.run, False
        yield from self._settle(run)
        pool = self.device.pool_counts()
        if not run.settled(pool, self._overruns()):
            # Frames without an outcome yet: received by a worker (not_in_time) or not
            # (missed).  The workers' counts can be a status period old; ask for newer.
            pool = self.device.pool_counts(since=time.time())
        self.accounting.set(run.end(pool, monitor_overruns=self._overruns(), grace_s=self.grace))
        yield from bps.collect(run.writer, name=STREAM)
        failure = run.writer.take_failure()  # the run fails after its accounting is stored
        yield from bps.create(ACCOUNTING_STREAM)
        yield from bps.read(self.accounting)
        yield from bps.save()
        yield from self._store_mosaic()
        if failure is not None:
            raise failure
        closed = yield self._with_reason(msg)
        run.writer.release()  # only now may another session take the run as dead
        return closed

    def _with_reason(self, msg: Msg) -> Msg:
        """``close_run`` with a reason when the run was aborted: bluesky's run wrapper
        passes the abort's message, which is empty, and so would the stop document be."""
        if msg.kwargs.get("exit_status") != "abort" or msg.kwargs.get("reason"):
            return msg
        reason = self.abort_reason or ABORTED_WITHOUT_REASON
        return msg._replace(kwargs={**msg.kwargs, "reason": reason})

    def _settle(self, run: InferenceRun) -> Plan:
        """Wait up to ``grace`` s for the run's frames still being inferred."""
        deadline = time.monotonic() + self.grace
        while not self._settled(run) and time.monotonic() < deadline:
            yield from bps.sleep(SETTLE_PERIOD)

    def _settled(self, run: InferenceRun) -> bool:
        """Whether every frame of ``run`` has an outcome, as the source's counter (read
        now: the watch thread reads it only every period) and the pool say."""
        device = self.device
        if device.source is not None:
            run.on_source(device.source_last_id(), time.time())
        return device.pool is None or run.settled(device.pool_counts(), self._overruns())

    def _overruns(self) -> int:
        """Results the monitors lost since the run opened: they have an outcome (they were
        inferred) that no batch brings, so the grace wait does not wait for them.  (A pool
        staged after the open has a new monitor counting from 0.)"""
        return max(self.device.monitor_overruns - self._overruns_at_open, 0)

    def _store_mosaic(self) -> Plan:
        """Read the run's final mosaic into :data:`MOSAIC_STREAM` (when it has one)."""
        if self.live_view is None:
            return
        final = self.live_view.finish()
        if final is None or not final.frames or not self.live_view.settings.store:
            return
        self.mosaic.set(final)
        yield from bps.create(MOSAIC_STREAM)
        yield from bps.read(self.mosaic)
        yield from bps.save()
