"""A run's rows in HDF5: the file, and the thread that writes the rows into it.

:class:`RowWriter` is what a run's stream writer stores through when the store runs in
the session's process; the store process runs one per run for the session.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ptychonn_ophyd.errors import StorageFullError
from ptychonn_ophyd.run_schema import COLUMNS, Rows, kept_rows
from ptychonn_ophyd.wire import ResultBatch

log = logging.getLogger(__name__)

RESERVE_BYTES = 1 << 20
"""Disk room a run leaves free for the catalog's last documents (descriptors, the
accounting, the stop document): with less, the run stops storing results and fails."""
WRITE_ROWS = 1024
"""Most rows the writing thread writes in one append."""
WRITE_PERIOD = 0.05
"""Seconds the writing thread gathers rows into one append: each append resizes and
writes every column, so a batch at a time would cost more than its rows."""
_END = None


@dataclass(frozen=True)
class RowLayout:
    """What one row of a run's file holds: the images (``(H, W)`` float32 each) and
    :data:`~ptychonn_ophyd.run_schema.COLUMNS`."""

    image_shape: tuple[int, int]
    amplitude: bool

    @property
    def images(self) -> tuple[str, ...]:
        return ("phase", "amplitude") if self.amplitude else ("phase",)

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

    def __init__(self, path: Path, layout: RowLayout) -> None:
        self.path = path
        self.rows = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = h5py.File(path, "w", libver="latest")
        for key in layout.images:
            shape = tuple(layout.image_shape)
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
        append; returns the ``(start, stop)`` written.

        The parts are joined first: one h5py write a column costs about 40 µs of Python
        whatever its rows, so writing batches of 8 rows one by one cost 200 µs a row
        against 37-42 joined (BENCHMARKS.md, "the writer's batches").
        """
        rows = parts[0] if len(parts) == 1 else _joined(parts, self._columns)
        start = self.rows
        stop = start + len(rows["unique_id"])
        for key, dataset in self._columns.items():
            dataset.resize(stop, axis=0)
            dataset[start:stop] = rows[key]
        self._file.flush()
        self.rows = stop
        return start, stop

    def close(self) -> None:
        """Close the file (also after a failed write, so HDF5 holds nothing at exit)."""
        self._file.close()

    def release(self) -> None:
        """Give up the ``flock``: the run is closed (or the process ends, which does it)."""
        self._alive.close()


class RowWriter:
    """Writes one run's rows into its :class:`InferenceFile` in a thread of its own.

    Parameters
    ----------
    uid
        The run's, for messages.
    path
        The file, in the catalog's readable storage.
    layout
        What a row holds.
    reserve_bytes
        Disk room every write leaves free; a write that would leave less stops the
        writing with :class:`~ptychonn_ophyd.errors.StorageFullError` in :attr:`error`,
        so the catalog can still store the accounting and the stop document.
    reports
        Called in the writing thread after each append with the rows in the file and
        what stopped the writing (``None`` while nothing did).

    Raises
    ------
    StorageFullError
        The disk has no room for the file.
    """

    def __init__(
        self,
        uid: str,
        path: Path,
        layout: RowLayout,
        reserve_bytes: int = RESERVE_BYTES,
        reports: Callable[[int, BaseException | None], None] | None = None,
    ) -> None:
        self.uid = uid
        self.path = path
        self.layout = layout
        self.reserve_bytes = reserve_bytes
        self.error: BaseException | None = None
        """What stopped the writing (rows after it are only counted, not stored)."""
        self._reports = reports
        self._queue: queue.SimpleQueue[Rows | None] = queue.SimpleQueue()
        self.file: InferenceFile | None = None
        self._check_room(0)
        self.file = InferenceFile(path, layout)
        self._thread = threading.Thread(
            target=self._write, name=f"run-{uid[:8]}-writer", daemon=True
        )
        self._thread.start()

    @property
    def rows(self) -> int:
        """Rows in the file so far."""
        return self.file.rows

    def take(self, batch: ResultBatch, keep: np.ndarray, rows: Rows | None = None) -> None:
        """Queue the rows of ``batch`` that ``keep`` marks (from any thread; in order;
        ``rows``: those rows, when the caller has made them already)."""
        self._queue.put(kept_rows(batch, keep) if rows is None else rows)

    def close(self) -> None:
        """Write every row queued, then close the file."""
        if self._thread.is_alive():
            self._queue.put(_END)
            self._thread.join()
        try:
            self.file.close()
        except OSError as error:  # a full disk: the accounting still goes out
            self.error = self.error or error
            log.warning("closing %s failed: %s", self.path, error)

    def release(self) -> None:
        """Give up the file's ``flock`` once the run's stop document is out."""
        self.file.release()

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
            if self._reports is not None:
                self._reports(self.file.rows, self.error)

    def _check_room(self, rows: int) -> None:
        """Raise :class:`StorageFullError` unless ``rows`` more rows leave the reserve free."""
        folder = self.path.parent
        if shutil.disk_usage(folder).free < self.reserve_bytes + rows * self.layout.row_bytes():
            raise self._full(rows)

    def _full(self, rows: int) -> StorageFullError:
        free = shutil.disk_usage(self.path.parent).free
        stored = self.file.rows if self.file is not None else 0
        return StorageFullError(
            f"{self.path.parent}: disk full ({free / 2**20:.2f} MiB free, "
            f"{self.reserve_bytes / 2**20:.2f} MiB kept to close the run): run {self.uid} "
            f"stops with {stored} result(s) stored, {rows} not stored"
        )


def _joined(parts: tuple[Rows, ...], keys: Iterable[str]) -> Rows:
    """The rows of ``parts``, in order, as one batch of columns ``keys``."""
    return {key: np.concatenate([rows[key] for rows in parts]) for key in keys}


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
