"""The one way to wire the inference device, its stream and the catalog to a RunEngine.

The IPython profile, the demo and the tests all call :func:`connect`::

    catalog = connect(RE, inference)          # embedded catalog, or TILED_URI
    RE(scan_with_inference(det, inference, sy, -1, 1, 11, sx, -1, 1, 11))

Wiring by hand works the same way: ``RE.preprocessors.append(InferenceSupplement(
inference, assets_dir=assets_directory(...)))`` and ``RE.subscribe(TiledWriter(client))``,
as the Bluesky documentation subscribes it.
"""

from __future__ import annotations

import logging
import threading
import weakref
from pathlib import Path

from bluesky import RunEngine
from bluesky_tiled_plugins import TiledWriter
from tiled.client.container import Container

from ptychonn_ophyd.catalog import (
    assets_directory,
    catalog_writer,
    is_uri,
    open_catalog,
    resolve_location,
)
from ptychonn_ophyd.errors import StreamWiringError
from ptychonn_ophyd.session.device import PtychoNNDetector
from ptychonn_ophyd.session.live_view import LiveView
from ptychonn_ophyd.session.mosaic_figure import MosaicFigure
from ptychonn_ophyd.session.supplement import InferenceSupplement
from ptychonn_ophyd.tiled_server import check_server

log = logging.getLogger(__name__)

PAUSED_AT_EXIT = "the process ended while the run was paused (Ctrl-C without resume or abort)"
"""What the log and the stop document's ``reason`` say when
:func:`abort_paused_run_at_exit` closes a run."""


def connect(
    RE: RunEngine,
    inference: PtychoNNDetector,
    catalog: str | Path | None = None,
    *,
    grace: float = 5.0,
    live_view: LiveView | None = None,
) -> Container:
    """Store every run of ``RE``, with ``inference``'s stream, in ``catalog``; return it.

    Parameters
    ----------
    catalog
        An embedded catalog folder or a Tiled URI (see
        :func:`~ptychonn_ophyd.catalog.open_catalog`).
    grace
        Seconds the end of a run waits for frames still being inferred.
    live_view
        Stitch each run's results as they arrive: a figure (where there is a display),
        the ``<prefix>:mosaic`` channel and the run's ``mosaic`` stream, as its settings
        say.

    Raises
    ------
    StreamWiringError
        ``RE`` already has a ``TiledWriter``, or ``inference`` a supplement: the runs
        would be written twice.
    CatalogError
        The catalog cannot be written, or a Tiled server lacks what storing a run takes
        (:func:`~ptychonn_ophyd.tiled_server.check_server`).
    """
    existing = [cb for cb in _subscribers(RE) if isinstance(cb, TiledWriter)]
    if existing:
        raise StreamWiringError(
            "this RunEngine already has a TiledWriter subscribed; a second would write "
            "every run twice (the inference stream reaches the first one already)"
        )
    client = open_catalog(catalog)
    assets = assets_directory(catalog)
    location = resolve_location(catalog)
    if is_uri(location):
        check_server(client, assets, str(location))
    supplement = InferenceSupplement(inference, assets, grace=grace, live_view=live_view)
    RE.preprocessors.append(supplement)
    RE.subscribe(catalog_writer(client))
    if live_view is not None:
        live_view.publish_on(inference.output_prefix.get())  # viewers can connect now
        RE.subscribe(MosaicFigure(live_view))  # draws only where a figure is wanted
    abort_paused_run_at_exit(RE)
    return client


def abort_paused_run_at_exit(RE: RunEngine) -> None:
    """Close a run that Ctrl-C left paused when the process ends, as ``RE.abort()`` would.

    A script interrupted with Ctrl-C exits with ``RunEngineInterrupted`` and its run
    paused; without this the run would have no stop document and its last results
    and frame accounting would be lost.  The run is closed as ``abort`` (the log says
    :data:`PAUSED_AT_EXIT`), its inference stream and accounting stored, and the
    workers stopped.  :func:`connect` calls it.

    It runs at thread shutdown, before ``atexit``: the embedded Tiled catalog closes
    there (Tiled registers its clean-up the same way), and the stop document needs it.
    Call it after opening the catalog, so that it runs before the catalog closes.
    """
    threading._register_atexit(_abort_if_paused, weakref.ref(RE))


def _abort_if_paused(ref: weakref.ref[RunEngine]) -> None:
    RE = ref()
    if RE is not None and RE.state == "paused":
        log.warning("closing the paused run as aborted: %s", PAUSED_AT_EXIT)
        abort(RE, PAUSED_AT_EXIT)


def abort(RE: RunEngine, reason: str) -> tuple[str, ...]:
    """``RE.abort(reason)``, with ``reason`` in the stop document (bluesky's run wrapper
    drops it; the supplement writes it); returns the uids of the runs aborted."""
    for supplement in RE.preprocessors:
        if isinstance(supplement, InferenceSupplement):
            supplement.abort_reason = reason
    return tuple(RE.abort(reason))


def _subscribers(RE: RunEngine) -> list[object]:
    """The objects subscribed to ``RE`` (bluesky keeps bound methods as weak proxies)."""
    found = []
    for proxies in RE.dispatcher.cb_registry.callbacks.values():
        for proxy in proxies.values():
            owner = proxy.inst() if proxy.inst is not None else None
            found.append(owner if owner is not None else proxy.func)
    return found
