"""Giving every run that uses the inference device its inference stream.

Bluesky's :class:`~bluesky.preprocessors.SupplementalData` adds baseline readings to
every plan; :class:`InferenceSupplement` does the same for the inference stream, so it
is there whatever the plan (``bp.count``, ``bp.grid_scan``, ``scan_with_inference``, a
plan of your own) and whoever listens to the RunEngine::

    RE.preprocessors.append(InferenceSupplement(inference))
    RE.subscribe(TiledWriter(client))

In a run that names the device among its ``detectors`` (or carries the ``ptychonn``
start key), it declares the stream after ``open_run``, collects the new rows after an
event (at most every ``collect_period`` seconds), and before ``close_run`` waits for the
frames still being inferred, collects the last rows and reads the frame accounting into
``inference_accounting``.  With a :class:`~ptychonn_ophyd.session.live_view.LiveView`
it starts the run's live mosaic after ``open_run`` and reads its final image into the
one-row stream ``mosaic`` before ``close_run``.  The documents
come from the RunEngine, so nothing has to sit between it and its subscribers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import bluesky.plan_stubs as bps
from bluesky.preprocessors import plan_mutator
from bluesky.run_engine import WaitForTimeoutError
from bluesky.utils import FailedStatus, Msg

from ptychonn_ophyd.errors import StreamWiringError
from ptychonn_ophyd.session.live_view import MOSAIC_STREAM, LiveView, MosaicReading
from ptychonn_ophyd.session.plans import PIXEL_SIZE_KEY
from ptychonn_ophyd.session.stream import ACCOUNTING_STREAM, METADATA_KEY, STREAM, FrameAccounting

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from ptychonn_ophyd.session.device import PtychoNNDetector

Plan = Generator[Msg, Any, Any]


class InferenceSupplement:
    """A RunEngine preprocessor adding ``device``'s inference stream to the runs that use it.

    Parameters
    ----------
    device
        The inference device; one supplement per device.
    grace
        Seconds the end of a run waits for frames still being inferred.
    collect_period
        Least seconds between two collects during a run: each collect announces its rows
        with one ``stream_datum`` per column, which a ``TiledWriter`` writes one by one
        in the RunEngine's thread (about a second for all columns of an embedded catalog
        on the 2-core machine), so collecting often slows the scan.
    live_view
        Stitches each run's results as they arrive, and its final image is stored.

    Raises
    ------
    StreamWiringError
        ``device`` has a supplement already: a second would write every row twice.
    """

    def __init__(
        self,
        device: PtychoNNDetector,
        grace: float = 5.0,
        collect_period: float = 2.0,
        live_view: LiveView | None = None,
    ) -> None:
        if device.supplement is not None:
            raise StreamWiringError(
                f"{device.name} already has an InferenceSupplement; a second one would store "
                "every result twice"
            )
        device.supplement = self
        self.device = device
        self.stream = device.stream
        self.stream.grace = grace
        self.accounting = FrameAccounting(f"{device.name}_accounting")
        self.collect_period = collect_period
        self._collected_at = 0.0
        self.live_view = live_view
        self.mosaic = MosaicReading(f"{device.name}_mosaic")
        if live_view is not None:
            self.stream.followers.append(live_view.take)

    def __call__(self, plan: Plan) -> Plan:
        return (yield from plan_mutator(plan, self._insert))

    def _insert(self, msg: Msg) -> tuple[Plan | None, Plan | None]:
        if msg.command == "open_run" and self._uses_device(msg.kwargs):
            return self._open(msg), None
        if msg.command == "save" and self.stream.open and self._due():
            return None, bps.collect(self.stream, name=STREAM)
        if msg.command == "close_run" and self.stream.open:
            return self._close(msg), None
        return None, None

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
        if self.live_view is not None:  # before the stream takes its first result
            self._begin_mosaic(uid, msg.kwargs)
        self.stream.begin(uid)
        yield from bps.declare_stream(self.stream, name=STREAM, collect=True)
        return uid

    def _begin_mosaic(self, uid: str, md: dict) -> None:
        live, device = self.live_view, self.device
        if live.begin(
            uid, md.get(PIXEL_SIZE_KEY), device.image_shape(), "amplitude" in device.heads
        ):
            live.publish_on(device.output_prefix.get())

    def _close(self, msg: Msg) -> Plan:
        yield from self._settle()
        self.stream.seal()
        yield from bps.collect(self.stream, name=STREAM)
        self.accounting.set(self.stream.end())
        yield from bps.create(ACCOUNTING_STREAM)
        yield from bps.read(self.accounting)
        yield from bps.save()
        yield from self._store_mosaic()
        return (yield msg)

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

    def _settle(self) -> Plan:
        """Wait for the frames still being inferred (up to the stream's grace period).

        In a run that is failing, the RunEngine may end this wait at once with
        ``WaitForTimeoutError``; the run is closed all the same, with the reason that
        made it fail rather than that one.
        """
        try:
            yield from bps.trigger(self.stream, wait=True)
        except (WaitForTimeoutError, FailedStatus) as err:
            log.warning(
                "%s: the wait for results in flight at the end of the run was cut short (%s)",
                self.device.name,
                err,
            )
