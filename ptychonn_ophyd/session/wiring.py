"""The one way to wire the inference device, its stream and the catalog to a RunEngine.

The IPython profile, the demo and the tests all call :func:`connect`::

    catalog = connect(RE, inference)          # embedded catalog, or TILED_URI
    RE(scan_with_inference(det, inference, sy, -1, 1, 11, sx, -1, 1, 11))

Wiring by hand works the same way: ``RE.preprocessors.append(InferenceSupplement(
inference))``, ``inference.stream.assets_dir = assets_directory(...)`` and
``RE.subscribe(TiledWriter(client))``, as the Bluesky documentation subscribes it.
"""

from __future__ import annotations

from pathlib import Path

from bluesky import RunEngine
from bluesky_tiled_plugins import TiledWriter
from tiled.client.container import Container

from ptychonn_ophyd.errors import StreamWiringError
from ptychonn_ophyd.session.catalog import assets_directory, catalog_writer, open_catalog
from ptychonn_ophyd.session.device import PtychoNNDetector
from ptychonn_ophyd.session.live_view import LiveView
from ptychonn_ophyd.session.mosaic_figure import MosaicFigure
from ptychonn_ophyd.session.supplement import InferenceSupplement


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
        :func:`~ptychonn_ophyd.session.catalog.open_catalog`).
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
    """
    existing = [cb for cb in _subscribers(RE) if isinstance(cb, TiledWriter)]
    if existing:
        raise StreamWiringError(
            "this RunEngine already has a TiledWriter subscribed; a second would write "
            "every run twice (the inference stream reaches the first one already)"
        )
    client = open_catalog(catalog)
    inference.stream.assets_dir = assets_directory(catalog)
    RE.preprocessors.append(InferenceSupplement(inference, grace, live_view=live_view))
    RE.subscribe(catalog_writer(client))
    if live_view is not None:
        live_view.publish_on(inference.output_prefix.get())  # viewers can connect now
        RE.subscribe(MosaicFigure(live_view))  # draws only where a figure is wanted
    return client


def _subscribers(RE: RunEngine) -> list[object]:
    """The objects subscribed to ``RE`` (bluesky keeps bound methods as weak proxies)."""
    found = []
    for proxies in RE.dispatcher.cb_registry.callbacks.values():
        for proxy in proxies.values():
            owner = proxy.inst() if proxy.inst is not None else None
            found.append(owner if owner is not None else proxy.func)
    return found
