"""Where runs are kept: an embedded Tiled catalog by default, a Tiled server when asked.

The embedded catalog is a folder holding ``catalog.db`` (SQLite, the run metadata),
``tables.db`` (SQLite, the table store for event columns), ``data/`` (arrays Tiled
writes itself) and ``assets/`` (the HDF5 files of the inference stream, which Tiled
reads in place). It is opened in-process: no server, no port. A ``http(s)://`` URI, or
``TILED_URI`` with ``TILED_API_KEY`` in the environment, points at a Tiled server
instead; the same :class:`~bluesky_tiled_plugins.TiledWriter` writes to both.

databroker 2.x is this Tiled client: ``open_catalog()[uid]["primary"].read()``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import fcntl
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bluesky_tiled_plugins import TiledWriter
from tiled.client.container import Container

from ptychonn_ophyd.errors import ArgsError, CatalogError, CatalogNotFoundError
from ptychonn_ophyd.interrupted_runs import close_interrupted_runs

if TYPE_CHECKING:
    from tiled.catalog.adapter import CatalogContainerAdapter
    from tiled.media_type_registration import SerializationRegistry

log = logging.getLogger(__name__)

DEFAULT_CATALOG = Path("~/.local/share/ptychonn-ophyd/catalog")
"""The embedded catalog used when neither an argument nor the environment names one."""

CATALOG_ENV = "PTYCHONN_CATALOG"
"""Environment variable naming the catalog (a folder or a Tiled URI)."""

ASSETS_ENV = "PTYCHONN_ASSETS"
"""Environment variable naming the folder for inference HDF5 files when writing to a
server; the server must list it in its ``readable_storage``."""

RUNS_SPEC = {"name": "CatalogOfBlueskyRuns", "version": "3.0"}
"""The spec of a catalog of Bluesky runs: its client finds runs by scan id and -1."""


def is_catalog_of_runs(node: Container) -> bool:
    """Whether ``node`` has the :data:`RUNS_SPEC` (a Tiled server's root may not)."""
    return RUNS_SPEC["name"] in {spec.name for spec in node.specs}


def is_uri(path_or_uri: str | Path) -> bool:
    """Whether ``path_or_uri`` names a Tiled server rather than a folder."""
    return str(path_or_uri).startswith(("http://", "https://"))


def resolve_location(path_or_uri: str | Path | None = None) -> str | Path:
    """The catalog to use: the argument, else ``TILED_URI``, ``PTYCHONN_CATALOG``, the default."""
    if path_or_uri is not None:
        return path_or_uri if is_uri(path_or_uri) else Path(path_or_uri).expanduser()
    location = os.environ.get("TILED_URI") or os.environ.get(CATALOG_ENV)
    if location:
        return resolve_location(location)
    return DEFAULT_CATALOG.expanduser()


def open_catalog(path_or_uri: str | Path | None = None, *, api_key: str | None = None) -> Container:
    """Open the catalog of runs: an embedded folder (made if missing) or a Tiled server.

    Parameters
    ----------
    path_or_uri
        A folder for the embedded catalog, or a Tiled server URI; ``None`` reads
        ``TILED_URI`` (with ``TILED_API_KEY``), then ``PTYCHONN_CATALOG``, then falls back
        to :data:`DEFAULT_CATALOG`.
    api_key
        Key for a server (default ``TILED_API_KEY``).

    Returns
    -------
    The Tiled client node whose children are the runs, keyed by start uid (databroker 2).

    Raises
    ------
    CatalogError
        The embedded catalog's folder or databases cannot be written (checked before
        anything starts, so a scan never runs into it).
    """
    location = resolve_location(path_or_uri)
    if isinstance(location, str):
        from tiled.client import from_uri

        return from_uri(location, api_key=api_key or os.environ.get("TILED_API_KEY"))
    return _open_embedded(location)


def open_existing_catalog(
    path_or_uri: str | Path | None = None, *, api_key: str | None = None
) -> Container:
    """Open a catalog to read from it, never making one (replay, analysis).

    Located as by :func:`open_catalog`; a folder holding no catalog is an error naming
    it, rather than a new empty catalog in which every run is then "not found".

    Raises
    ------
    CatalogNotFoundError
        The embedded catalog's folder has no ``catalog.db``.
    """
    location = resolve_location(path_or_uri)
    if isinstance(location, Path) and not (location / "catalog.db").is_file():
        raise CatalogNotFoundError(f"no catalog at {location} (no catalog.db there)")
    return open_catalog(location, api_key=api_key)


def _open_embedded(folder: Path) -> Container:
    from tiled.catalog import from_uri
    from tiled.client import Context, from_context
    from tiled.server.app import build_app

    _quiet_tiled()
    folder = folder.resolve()
    _check_writable(folder)
    database = folder / "catalog.db"
    uri = f"sqlite:///{database}"
    with _locked(folder / LOCK_FILE):
        if not database.exists():
            _create_catalog_tables(uri)
        adapter = from_uri(
            uri,
            writable_storage=[folder / "data", f"sqlite:///{folder / 'tables.db'}"],
            readable_storage=[folder / "assets"],
            specs=[RUNS_SPEC],
        )
        _wait_for_other_writers(adapter)
        app = build_app(adapter, serialization_registry=_serializers())
        client = from_context(Context.from_app(app))
        close_interrupted_runs(client, folder / "assets")
        return client


def _create_catalog_tables(uri: str) -> None:
    """Make a new catalog database's tables and stamp its schema, as ``tiled catalog
    init`` does, in this process.

    Tiled's ``from_uri(init_if_not_exists=True)`` runs that command as a new Python
    process, which spends 4-5 s of a 2-core machine importing Tiled again before the
    first scan into a new folder.  Both steps run their own event loop
    (``asyncio.run``), so they run in a thread of their own: never inside a caller's
    running loop (Jupyter, queueserver).
    """
    with concurrent.futures.ThreadPoolExecutor(1, "catalog-init") as thread:
        thread.submit(_create_tables_and_stamp, uri).result()


def _create_tables_and_stamp(uri: str) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine
    from tiled.alembic_utils import stamp_head
    from tiled.catalog.alembic_constants import ALEMBIC_DIR, ALEMBIC_INI_TEMPLATE_PATH
    from tiled.catalog.core import initialize_database
    from tiled.utils import ensure_specified_sql_driver

    uri = ensure_specified_sql_driver(uri)

    async def create() -> None:
        engine = create_async_engine(uri)
        try:
            await initialize_database(engine)
        finally:
            await engine.dispose()

    asyncio.run(create())
    stamp_head(ALEMBIC_INI_TEMPLATE_PATH, ALEMBIC_DIR, uri)


BLUESKY_RUN_SPEC = "BlueskyRun"
"""The spec of a run node, which the documents exporter is registered for."""
DOCUMENTS_MEDIA_TYPE = "application/json-seq"
"""The media type of a run exported as its Bluesky documents."""


def _serializers() -> SerializationRegistry:
    """Tiled's serializers and bluesky-tiled-plugins' documents exporter, so that
    ``run.documents()`` (databroker 2's way to replay a run's documents) works here as
    on a server configured with it (``examples/tiled-server.yml``)."""
    from bluesky_tiled_plugins.exporters import json_seq_exporter
    from tiled.media_type_registration import default_serialization_registry

    registry = copy.deepcopy(default_serialization_registry)
    registry.register(BLUESKY_RUN_SPEC, DOCUMENTS_MEDIA_TYPE, json_seq_exporter)
    return registry


LOCK_FILE = "catalog.lock"
"""File in an embedded catalog's folder locked while a process opens the catalog, so two
processes opening a new catalog at once do not both create its tables."""


BUSY_TIMEOUT_S = 60.0
"""How long a write to an embedded catalog's databases waits while another process writes.

SQLite lets one process at a time write a database.  Tiled's table store (ADBC) gives
up at once, so a second scan into the same catalog failed with ``database is locked``;
waiting instead serialises the writes, each of which holds the lock for milliseconds.
The wait runs out only when another process holds the lock for a minute (hung)."""


def _wait_for_other_writers(adapter: CatalogContainerAdapter) -> None:
    """Make every connection to ``adapter``'s SQLite databases wait :data:`BUSY_TIMEOUT_S`
    for a lock another process holds, rather than fail (issue 15: two scans, one catalog).

    Runs before the catalog is started, so no connection is opened without it.
    """
    from sqlalchemy import event
    from tiled.storage import SQLStorage

    event.listen(adapter.context.engine.sync_engine, "connect", _set_busy_timeout)
    for storage in adapter.context.writable_storage.values():
        if isinstance(storage, SQLStorage):
            # Tiled's table store has no public hook; its pool makes every connection.
            event.listen(storage._connection_pool, "connect", _set_busy_timeout)


def _set_busy_timeout(connection: Any, _record: object) -> None:
    """SQLAlchemy ``connect`` listener: set SQLite's busy timeout on a new connection.

    Committed at once: the table store's connections begin a transaction as they open,
    and one left open in the pool would hold a read lock that blocks other writers.
    """
    cursor = connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    cursor.close()
    connection.commit()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (released when the process dies, too)."""
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _check_writable(folder: Path) -> None:
    """Raise :class:`CatalogError` unless the catalog at ``folder`` can be written.

    Making and removing a file is the real test (``os.access`` says yes to root even
    where an immutable flag or a read-only mount says no); the databases are opened
    for writing without changing them.
    """
    for path in (folder, folder / "data", folder / "assets"):
        try:
            path.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=path).close()
        except OSError as err:
            raise CatalogError(_unwritable(path, err)) from None
    for name in ("catalog.db", "tables.db", LOCK_FILE):
        path = folder / name
        try:
            if path.exists():
                open(path, "r+b").close()
        except OSError as err:
            raise CatalogError(_unwritable(path, err)) from None


def _unwritable(path: Path, err: OSError) -> str:
    return f"catalog {path} cannot be written ({err.strerror or err}): runs could not be stored"


def _quiet_tiled() -> None:
    """Keep Tiled's start-up chatter off the user's terminal; only this project speaks there.

    The in-process server logs ``Tiled version ...`` at INFO through a handler of its own
    (twice once the root logger has one too), and Tiled's use of Starlette's test client
    warns that ``httpx`` is deprecated there: neither is anything a user can act on.  Nor
    is Alembic's stamping of a new catalog: its INFO lines, and its warning that Tiled's
    ``alembic.ini`` template has no ``path_separator``.  ``tiled.server.app`` sets its
    level when imported, so this runs after that import.
    """
    logging.getLogger("tiled.server.app").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="No path_separator found", module=r"alembic\.")
    warnings.filterwarnings(
        "ignore",
        message=r"Using `httpx` with `starlette\.testclient` is deprecated",
        module=r"tiled\.client\.context",
    )


def assets_directory(path_or_uri: str | Path | None = None) -> Path:
    """Folder for the inference stream's HDF5 files, readable by the catalog.

    For an embedded catalog it is its ``assets/`` folder; for a server it is
    ``PTYCHONN_ASSETS``, which the server must list in its ``readable_storage``.
    """
    location = resolve_location(path_or_uri)
    if isinstance(location, Path):
        return location.resolve() / "assets"
    assets = os.environ.get(ASSETS_ENV)
    if not assets:
        raise ArgsError(
            f"writing to the Tiled server {location} needs {ASSETS_ENV} set to a folder "
            "that the server lists in its readable_storage"
        )
    return Path(assets).expanduser().resolve()


def catalog_writer(client: Container) -> TiledWriter:
    """A :class:`TiledWriter` that writes every document as it comes (live readers see rows).

    Subscribe it to the RunEngine (:func:`~ptychonn_ophyd.session.wiring.connect` does):
    the inference stream's documents come from the RunEngine too.
    """
    return TiledWriter(client, batch_size=1)
