"""The writer of a run's inference stream: rows into HDF5, documents that announce them.

Like an ophyd-async detector's writer, :class:`StreamWriter` knows nothing of the device:
it is given what its descriptor says (:class:`StreamSpec`) and the rows to write.  A
thread of its own appends the rows to an HDF5 file under the catalog's readable storage
as they come, so the RunEngine's thread only announces them: ``collect_asset_docs``
yields ``stream_resource`` once and then a ``stream_datum`` per column for the rows
written since the last collect.  Every subscriber of the RunEngine (a ``TiledWriter``
first of all) sees the inference stream with the run.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import queue
import shutil
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from bluesky.protocols import Hints
from event_model import ComposeStreamResource

from ptychonn_ophyd.errors import StorageFullError
from ptychonn_ophyd.run_schema import COLUMNS, IMAGES, NOT_PLOTTED, Rows, stream_file_name

log = logging.getLogger(__name__)

IMAGE_CHUNK = 256
"""Rows per Tiled chunk of an image column."""
SCALAR_CHUNK = 65536
"""Rows per Tiled chunk of a scalar column."""
RESERVE_BYTES = 1 << 20
"""Disk room a run leaves free for the catalog's last documents (descriptors, the
accounting, the stop document): with less, the run stops storing results and fails."""


@dataclass(frozen=True)
class StreamSpec:
    """What the inference stream's descriptor says: explicit values, read at the run's start.

    ``name`` is the device's, whose ``configuration`` (``read_configuration()``) and
    ``configuration_keys`` (``describe_configuration()``) the descriptor carries;
    ``source`` names where the rows came from (``PVA:<output prefix>``).
    """

    name: str
    source: str
    image_shape: tuple[int, int]
    amplitude: bool
    configuration: Mapping[str, Any]
    configuration_keys: Mapping[str, Any]

    @property
    def images(self) -> tuple[str, ...]:
        return ("phase", "amplitude") if self.amplitude else ("phase",)

    @property
    def columns(self) -> list[str]:
        """The stream's columns, images first."""
        return [*self.images, *COLUMNS]

    def data_keys(self) -> dict[str, dict[str, Any]]:
        """Event-model data keys of the columns, each marked external (``STREAM:``)."""
        keys = {
            key: {
                "source": self.source,
                "dtype": "array",
                "dtype_numpy": "<f4",
                "shape": list(self.image_shape),
                "units": IMAGES[key],
                "external": "STREAM:",
            }
            for key in self.images
        }
        for key, column in COLUMNS.items():
            keys[key] = {
                "source": self.source,
                "dtype": column.dtype,
                "dtype_numpy": column.dtype_numpy,
                "shape": [],
                "units": column.units,
                "external": "STREAM:",
            }
        return keys

    def chunk_shape(self, key: str) -> list[int]:
        """Rows per Tiled chunk of column ``key`` (with the image axes for images)."""
        return [IMAGE_CHUNK, *self.image_shape] if key in self.images else [SCALAR_CHUNK]

    def row_bytes(self) -> int:
        """Bytes one row takes in the file (before HDF5's own overhead)."""
        pixels = int(np.prod(self.image_shape))
        return 4 * pixels * len(self.images) + 8 * len(COLUMNS)


class InferenceFile:
    """The HDF5 file of one run's inference results: one growing dataset per column.

    The file is in SWMR mode, so Tiled can read rows while more are appended.  Every
    column grows by the same rows in one :meth:`append`, which flushes them before it
    returns, so rows announced are in the file even if the process dies the next
    instant.  From its creation until :meth:`release` (after the run's stop document)
    the writer holds a shared ``flock`` on the file
    (:func:`~ptychonn_ophyd.interrupted_runs.writer_alive` asks for it): the catalog can
    tell a run whose writer died from one still being written or being closed.
    """

    def __init__(self, path: Path, spec: StreamSpec) -> None:
        self.path = path
        self.rows = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = h5py.File(path, "w", libver="latest")
        for key in spec.images:
            shape = tuple(spec.image_shape)
            self._file.create_dataset(
                key, (0, *shape), "<f4", maxshape=(None, *shape), chunks=(16, *shape)
            )
        for key, column in COLUMNS.items():
            self._file.create_dataset(
                key, (0,), column.dtype_numpy, maxshape=(None,), chunks=(1024,)
            )
        self._file.swmr_mode = True
        self._columns = {key: self._file[key] for key in self._file}
        self._alive = open(path, "rb")  # noqa: SIM115 -- held until close()
        fcntl.flock(self._alive, fcntl.LOCK_SH | fcntl.LOCK_NB)

    def append(self, *parts: Rows) -> tuple[int, int]:
        """Write ``parts`` (row batches of every column of the file), in order, as one
        append; returns the ``(start, stop)`` written."""
        start = stop = self.rows
        bounds = []
        for rows in parts:
            bounds.append((stop, stop + len(rows["unique_id"])))
            stop = bounds[-1][1]
        for key, dataset in self._columns.items():
            dataset.resize(stop, axis=0)
            for rows, (first, last) in zip(parts, bounds, strict=True):
                dataset[first:last] = rows[key]
        self._file.flush()
        self.rows = stop
        return start, stop

    def close(self) -> None:
        """Close the file (also after a failed write, so HDF5 holds nothing at exit)."""
        self._file.close()

    def release(self) -> None:
        """Give up the ``flock``: the run is closed (or the process ends, which does it)."""
        self._alive.close()


WRITE_ROWS = 1024
"""Most rows the writing thread writes in one append."""
WRITE_PERIOD = 0.05
"""Seconds the writing thread gathers rows into one append: each append resizes and
writes every column, so a batch at a time would cost more than its rows."""
_END = None


class StreamWriter:
    """The writer of one run's inference stream (``Collectable``, ``WritesStreamAssets``).

    Parameters
    ----------
    uid
        The run's uid, which names the file.
    spec
        What the descriptor says.
    assets_dir
        Folder for the HDF5 file; it must be in the catalog's readable storage
        (:func:`ptychonn_ophyd.catalog.assets_directory`).
    reserve_bytes
        Disk room every write leaves free; a write that would leave less stops the
        writing and the next collect fails the run with
        :class:`~ptychonn_ophyd.errors.StorageFullError`, so the catalog can still
        store the accounting and the stop document.
    """

    hints: Hints = NOT_PLOTTED
    """Nothing for BestEffortCallback to plot (:data:`.run_schema.NOT_PLOTTED`)."""

    def __init__(
        self, uid: str, spec: StreamSpec, assets_dir: Path, reserve_bytes: int = RESERVE_BYTES
    ) -> None:
        self.uid = uid
        self.spec = spec
        self.name = spec.name
        self.parent = None
        self.assets_dir = assets_dir
        self.reserve_bytes = reserve_bytes
        self.error: BaseException | None = None
        self._reported = False
        self._queue: queue.SimpleQueue[Rows | None] = queue.SimpleQueue()
        self._announced = 0
        self._datum: dict[str, Any] = {}
        self.file: InferenceFile | None = None
        self._check_room(0)
        self.file = InferenceFile(assets_dir / stream_file_name(uid), spec)
        self._thread = threading.Thread(target=self._write, name=f"{self.name}-writer", daemon=True)
        self._thread.start()

    @property
    def rows(self) -> int:
        """Rows in the file so far."""
        return self.file.rows

    def append(self, rows: Rows) -> None:
        """Queue ``rows`` for the file (from any thread; rows keep their order)."""
        self._queue.put(rows)

    def close(self) -> None:
        """Write every row queued, then close the file."""
        if self._thread.is_alive():
            self._queue.put(_END)
            self._thread.join()
        try:
            self.file.close()
        except OSError as error:  # a full disk: the accounting still goes out
            self.error = self.error or error
            log.warning("closing %s failed: %s", self.file.path, error)

    def release(self) -> None:
        """Give up the file's ``flock`` once the run's stop document is out."""
        self.file.release()

    # -- the writing thread ------------------------------------------------------------

    def _write(self) -> None:
        ending = False
        while not ending:
            pending, ending = _drain(self._queue)
            if self.error is not None or not pending:
                continue  # after a failure rows are only counted (not stored)
            try:
                self._check_room(sum(len(p["unique_id"]) for p in pending))
                self.file.append(*pending)
            except Exception as error:  # the run goes on; its accounting shows the gap
                self.error = self._full(0) if _no_space(error) else error
                log.error("writing the inference stream of run %s failed: %s", self.uid, error)

    def _check_room(self, rows: int) -> None:
        """Raise :class:`StorageFullError` unless ``rows`` more rows leave the reserve free."""
        if (
            shutil.disk_usage(self.assets_dir).free
            < self.reserve_bytes + rows * self.spec.row_bytes()
        ):
            raise self._full(rows)

    def _full(self, rows: int) -> StorageFullError:
        free = shutil.disk_usage(self.assets_dir).free
        stored = self.file.rows if self.file is not None else 0
        return StorageFullError(
            f"{self.assets_dir}: disk full ({free / 2**20:.2f} MiB free, "
            f"{self.reserve_bytes / 2**20:.2f} MiB kept to close the run): run {self.uid} "
            f"stops with {stored} result(s) stored, {rows} not stored"
        )

    # -- the Collectable -------------------------------------------------------------

    def read_configuration(self) -> dict[str, Any]:
        return dict(self.spec.configuration)

    def describe_configuration(self) -> dict[str, Any]:
        return dict(self.spec.configuration_keys)

    def describe_collect(self) -> dict[str, dict[str, Any]]:
        """The data keys of the stream, every one external (``STREAM:``)."""
        return self.spec.data_keys()

    def get_index(self) -> int:
        """Rows written so far."""
        return self.file.rows

    def collect_asset_docs(self, index: int | None = None) -> Iterator[tuple[str, dict]]:
        """Yield the resources (first time) and the datums of the rows written since.

        It never raises: the RunEngine lists these documents before emitting any, so an
        error raised here would lose the announcement of rows already in the file.
        :meth:`take_failure` says afterwards whether the disk filled.
        """
        if not self._datum:
            yield from self._resources()
        stop = self.file.rows
        if stop > self._announced:
            for compose in self._datum.values():
                yield "stream_datum", compose(indices={"start": self._announced, "stop": stop})
            self._announced = stop

    def take_failure(self) -> StorageFullError | None:
        """The :class:`StorageFullError` that stopped the writing, once (then ``None``):
        the run fails there, after its rows stored so far are announced."""
        if isinstance(self.error, StorageFullError) and not self._reported:
            self._reported = True
            return self.error
        return None

    def _resources(self) -> Iterator[tuple[str, dict]]:
        compose = ComposeStreamResource()
        for key in self.spec.columns:
            bundle = compose(
                mimetype="application/x-hdf5",
                uri=self.file.path.resolve().as_uri(),
                data_key=key,
                parameters={
                    "dataset": f"/{key}",
                    "swmr": True,
                    "chunk_shape": self.spec.chunk_shape(key),
                },
            )
            self._datum[key] = bundle.compose_stream_datum
            yield "stream_resource", bundle.stream_resource_doc


def _drain(rows: queue.SimpleQueue[Rows | None]) -> tuple[list[Rows], bool]:
    """Queued rows, waiting for the first and then up to :data:`WRITE_PERIOD` for more,
    up to :data:`WRITE_ROWS`; and whether the end came."""
    pending: list[Rows] = []
    item = rows.get()
    count = 0
    until = time.monotonic() + WRITE_PERIOD
    while True:
        if item is _END:
            return pending, True
        pending.append(item)
        count += len(item["unique_id"])
        left = until - time.monotonic()
        if count >= WRITE_ROWS or left <= 0:
            return pending, False
        try:
            item = rows.get(timeout=left)
        except queue.Empty:
            return pending, False


def _no_space(error: BaseException) -> bool:
    return isinstance(error, StorageFullError) or getattr(error, "errno", None) == errno.ENOSPC
