"""The inference stream of a run: the device's writer and the documents it yields.

Like an ophyd-async detector's writer, :class:`InferenceStream` writes the results of a
run into an HDF5 file under the catalog's readable storage and yields its own
``stream_resource`` and ``stream_datum`` documents through ``collect_asset_docs``, so
the RunEngine emits them and every subscriber of the RunEngine (a ``TiledWriter``
first of all) sees the inference stream with the run.  The plan messages that declare
and collect it are added to every run that uses the device by
:class:`~ptychonn_ophyd.session.supplement.InferenceSupplement`.

At the end of a run the stream waits up to ``grace`` seconds for frames still being
inferred (:meth:`InferenceStream.trigger`), and its :class:`FrameAccounting` is read
into a one-row stream ``inference_accounting``: frames produced, inferred, stored,
dropped, rejected and not in time.  Results that arrive after the run are counted in
:attr:`InferenceStream.late`.

Threads: results arrive in pvapy threads and only go into a queue; the RunEngine's
thread writes them to the file when it collects.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import queue
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import h5py
import numpy as np
from event_model import ComposeStreamResource
from ophyd.status import Status

from ptychonn_ophyd.errors import StorageFullError
from ptychonn_ophyd.pool import PoolStats
from ptychonn_ophyd.session.results import InferenceResult

log = logging.getLogger(__name__)

STREAM = "inference"
"""Name of the stream of per-frame results."""
OUTCOMES = ("inferred", "dropped", "rejected", "missed", "not_in_time")
"""The frame accounting's counters of which every produced frame is in exactly one."""
ACCOUNTING_STREAM = "inference_accounting"
"""Name of the one-row stream holding a run's frame accounting."""
METADATA_KEY = "ptychonn"
"""Start-document key under which :func:`~ptychonn_ophyd.session.plans.scan_with_inference`
puts the model and pool facts; runs with it (or with the device among ``detectors``) get
the inference stream."""

INPUT_MOMENTS = ("input_total", "input_centroid_x", "input_centroid_y")
"""Per-frame columns of the model input's moments (see :data:`SCALARS`)."""
_TOTAL, _CENTROID_X, _CENTROID_Y = INPUT_MOMENTS

SCALARS = {
    "unique_id": ("integer", "<i8", "", lambda r: r.unique_id),
    "consumer_id": ("integer", "<i8", "", lambda r: r.consumer_id),
    "latency": ("number", "<f8", "s", lambda r: r.latency_s),
    "x": ("number", "<f8", "um", lambda r: r.x),
    "y": ("number", "<f8", "um", lambda r: r.y),
    "point": ("integer", "<i8", "", lambda r: r.point),
    "frame_time": ("number", "<f8", "s", lambda r: r.timestamp),
    _TOTAL: ("number", "<f8", "counts", lambda r: r.input_total),
    _CENTROID_X: ("number", "<f8", "px", lambda r: r.input_centroid[0]),
    _CENTROID_Y: ("number", "<f8", "px", lambda r: r.input_centroid[1]),
}
"""Per-frame columns: JSON dtype, numpy dtype, units, and how to get them from a result.

:data:`INPUT_MOMENTS` are the total counts and centroid (column ``x``, row ``y``, in
the model input's pixels) of the frame as the network saw it, which replay's tilt path
reads."""

IMAGE_CHUNK = 256
SCALAR_CHUNK = 65536
WRITE_ROWS = 1024
"""Rows stacked in memory per HDF5 write."""
RESERVE_BYTES = 1 << 20
"""Disk room a run leaves free for the catalog's last documents (descriptors, the
accounting, the stop document): with less, the run stops storing results and fails."""


class InferenceFile:
    """The HDF5 file of one run's inference results: one growing dataset per column.

    The file is in SWMR mode, so Tiled can read rows while more are appended.  Every
    column grows by the same rows in one :meth:`append`, which flushes them before it
    returns, so the rows that the stream's ``stream_datum`` documents announce are
    in the file even if the process dies the next instant.  While it is open the
    writer holds a shared ``flock`` on the file (:func:`writer_alive` asks for it):
    the catalog can tell a run whose writer died from one still being written.
    """

    def __init__(self, path: Path, image_shape: tuple[int, int], amplitude: bool) -> None:
        self.path = path
        self.image_shape = tuple(image_shape)
        self.images = ("phase", "amplitude") if amplitude else ("phase",)
        self.rows = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = h5py.File(path, "w", libver="latest")
        for key in self.images:
            self._file.create_dataset(
                key,
                (0, *image_shape),
                "<f4",
                maxshape=(None, *image_shape),
                chunks=(1, *image_shape),
            )
        for key, (_, dtype, _, _) in SCALARS.items():
            self._file.create_dataset(key, (0,), dtype, maxshape=(None,), chunks=(1024,))
        self._file.swmr_mode = True
        self._alive = open(path, "rb")  # noqa: SIM115 -- held until close()
        fcntl.flock(self._alive, fcntl.LOCK_SH | fcntl.LOCK_NB)

    @property
    def columns(self) -> list[str]:
        """The datasets, images first."""
        return [*self.images, *SCALARS]

    @staticmethod
    def data_keys(
        image_shape: tuple[int, int], amplitude: bool, source: str
    ) -> dict[str, dict[str, Any]]:
        """Event-model data keys of the columns, each marked external (``STREAM:``)."""
        images = ("phase", "amplitude") if amplitude else ("phase",)
        keys = {
            key: {
                "source": source,
                "dtype": "array",
                "dtype_numpy": "<f4",
                "shape": list(image_shape),
                "units": "rad" if key == "phase" else "",
                "external": "STREAM:",
            }
            for key in images
        }
        for key, (dtype, dtype_numpy, units, _) in SCALARS.items():
            keys[key] = {
                "source": source,
                "dtype": dtype,
                "dtype_numpy": dtype_numpy,
                "shape": [],
                "units": units,
                "external": "STREAM:",
            }
        return keys

    def chunk_shape(self, key: str) -> list[int]:
        """Rows per Tiled chunk of column ``key`` (with the image axes for images)."""
        if key in self.images:
            return [IMAGE_CHUNK, *self.image_shape]
        return [SCALAR_CHUNK]

    def row_bytes(self) -> int:
        """Bytes one row takes in the file (before HDF5's own overhead)."""
        pixels = int(np.prod(self.image_shape))
        return 4 * pixels * len(self.images) + 8 * len(SCALARS)

    def append(self, results: list[InferenceResult]) -> tuple[int, int]:
        """Write ``results`` as new rows; returns the ``(start, stop)`` rows written."""
        start, stop = self.rows, self.rows + len(results)
        for dataset in self._file.values():
            dataset.resize(stop, axis=0)
        for offset in range(0, len(results), WRITE_ROWS):
            self._write_rows(start + offset, results[offset : offset + WRITE_ROWS])
        self._file.flush()
        self.rows = stop
        return start, stop

    def _write_rows(self, first: int, results: list[InferenceResult]) -> None:
        rows = slice(first, first + len(results))
        self._file["phase"][rows] = np.stack([r.phase for r in results])
        if "amplitude" in self.images:
            self._file["amplitude"][rows] = np.stack([r.amplitude for r in results])
        for key, (_, dtype, _, get) in SCALARS.items():
            self._file[key][rows] = np.array([get(r) for r in results], dtype=dtype)

    def close(self) -> None:
        """Close the file (also after a failed write, so HDF5 holds nothing at exit)."""
        try:
            self._file.close()
        finally:
            self._alive.close()


def writer_alive(path: Path) -> bool:
    """Whether a process still holds the HDF5 file at ``path`` open as its writer."""
    try:
        with open(path, "rb") as probe:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # gone or unreadable: nobody writes it
        return False
    return False


class ResultSource(Protocol):
    """What the stream needs of the inference device
    (:class:`~ptychonn_ophyd.session.device.PtychoNNDetector`)."""

    name: str
    source: object | None
    heads: tuple[str, ...]
    output_prefix: Any
    pool: object | None
    monitor_overruns: int

    def image_shape(self) -> tuple[int, int]: ...

    def source_last_id(self) -> int: ...

    def pool_stats(self, since: float | None = None) -> PoolStats | None: ...

    def read_configuration(self) -> dict[str, Any]: ...

    def describe_configuration(self) -> dict[str, Any]: ...


SOURCE_PERIOD = 0.05
"""Seconds between two readings of the source's uniqueId counter during a run."""


class SourceCounter:
    """Frames a source produced during a run, also when it restarts.

    A restarted source (an IOC, the simulator) counts its uniqueIds from 1 again.  The
    counter is read every :data:`SOURCE_PERIOD` s; a reading below the one before
    closes an epoch.  The last frames of an epoch can come after its last reading, so
    the results of frames sent before the restart was seen extend it.
    """

    def __init__(self, first_id: int, now: float) -> None:
        self.epochs: list[list[float]] = [[first_id, first_id - 1, now]]
        """``[first uniqueId, last uniqueId, wall time it was seen to begin]`` each."""

    @property
    def restarts(self) -> int:
        return len(self.epochs) - 1

    def observe(self, last_id: int, now: float) -> None:
        """Take a reading of the source's newest uniqueId."""
        epoch = self.epochs[-1]
        if last_id < epoch[1]:
            self.epochs.append([1, last_id, now])
        else:
            epoch[1] = last_id

    def produced(self, seen: set[tuple[int, float]]) -> int:
        """Frames over every epoch; ``seen`` holds ``(uniqueId, frame time)`` of results."""
        total = 0
        for k, (first, last, _) in enumerate(self.epochs):
            if k + 1 < len(self.epochs):
                until = self.epochs[k + 1][2]
                last = max([last, *(i for i, t in seen if t < until and i >= first)])
            total += max(int(last - first + 1), 0)
        return total


class _Run:
    """What the stream tracks for the run it is writing."""

    def __init__(
        self, uid: str, first_id: int, stats_at_start: dict[str, Any], began: float
    ) -> None:
        self.uid = uid
        self.first_id = first_id
        self.stats_at_start = stats_at_start
        self.began = began
        self.source = SourceCounter(first_id, began)
        self.seen: set[tuple[int, float]] = set()
        self.duplicates = 0
        self.ended = threading.Event()
        self.results: queue.SimpleQueue[InferenceResult] = queue.SimpleQueue()
        self.received = 0
        self.file: InferenceFile | None = None
        self.datum_factories: dict[str, Any] = {}
        self.error: BaseException | None = None
        self.sealed = False

    def drain(self, limit: int) -> list[InferenceResult]:
        batch = []
        while len(batch) < limit:
            try:
                batch.append(self.results.get_nowait())
            except queue.Empty:
                break
        return batch


class InferenceStream:
    """The writer of ``device``'s inference stream (``Collectable``, ``WritesStreamAssets``).

    Parameters
    ----------
    device
        The inference device: its name, configuration, pool statistics and source.
    assets_dir
        Folder for the HDF5 files; it must be in the catalog's readable storage
        (:func:`ptychonn_ophyd.session.catalog.assets_directory`).
    grace
        Seconds the end of a run waits for frames still being inferred.
    max_rows
        Most rows one collect writes (the rest wait for the next) until the run is
        sealed.
    reserve_bytes
        Disk room every write leaves free; a write that would leave less fails the run
        with :class:`~ptychonn_ophyd.errors.StorageFullError`, so the catalog can still
        store its accounting and stop document.

    ``followers`` are called with every result that becomes a row, in row order (the
    live view stitches them in the order replay reads them).
    """

    def __init__(
        self,
        device: ResultSource,
        assets_dir: Path | None = None,
        grace: float = 5.0,
        max_rows: int = 65536,
        reserve_bytes: int = RESERVE_BYTES,
    ) -> None:
        self.device = device
        self.assets_dir = assets_dir
        self.grace = grace
        self.max_rows = max_rows
        self.reserve_bytes = reserve_bytes
        self.late: Counter[str] = Counter()
        self.followers: list[Callable[[InferenceResult], None]] = []
        self._run: _Run | None = None
        self._ended: tuple[str | None, int, int] = (None, 0, -1)
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """The device's name: the descriptor's configuration is the device's."""
        return self.device.name

    @property
    def parent(self) -> None:
        return None

    @property
    def open(self) -> bool:
        """Whether a run is being written."""
        return self._run is not None

    def read_configuration(self) -> dict[str, Any]:
        return self.device.read_configuration()

    def describe_configuration(self) -> dict[str, Any]:
        return self.device.describe_configuration()

    # -- a run -------------------------------------------------------------------------

    def begin(self, uid: str) -> None:
        """Start taking the results of run ``uid``: frames produced from now on."""
        if self.assets_dir is None:
            raise RuntimeError(f"{self.name}: no assets folder for the inference stream")
        stats = self.device.pool_stats()
        run = _Run(uid, self.device.source_last_id() + 1, _counts(stats), time.time())
        self._run = run
        if self.device.source is not None:
            threading.Thread(
                target=self._watch_source, args=(run,), name=f"{self.name}-source", daemon=True
            ).start()

    def _watch_source(self, run: _Run) -> None:
        """Read the source's counter until the run ends (restarts show as it going back)."""
        while not run.ended.wait(SOURCE_PERIOD):
            self._observe_source(run)

    def _observe_source(self, run: _Run) -> None:
        try:
            last = self.device.source_last_id()
        except Exception:  # a source that cannot be read now is read again soon
            log.debug("reading the source's counter failed", exc_info=True)
            return
        with self._lock:
            before = run.source.restarts
            run.source.observe(last, time.time())
        if run.source.restarts > before:
            log.warning(
                "run %s: the source restarted (its uniqueId went back to %d)", run.uid, last
            )

    def take(self, result: InferenceResult) -> None:
        """Queue ``result`` for the run it belongs to (called in a pvapy thread).

        A result of a frame already taken (same uniqueId and frame time: a frame that
        two workers received) is counted as a duplicate and not stored again.
        """
        with self._lock:
            run = self._run
            if run is not None and not run.sealed and self._belongs(run, result):
                key = (result.unique_id, result.timestamp)
                if key in run.seen:
                    run.duplicates += 1
                    return
                run.seen.add(key)
                run.received += 1
                run.results.put(result)
                for follow in self.followers:
                    follow(result)
                return
        uid, first_id, last_id = self._ended
        if run is not None and run.sealed and result.unique_id >= run.first_id:
            self._count_late(run.uid, 1)
        elif uid is not None and first_id <= result.unique_id <= last_id:
            self._count_late(uid, 1)

    def seal(self) -> None:
        """Take no more results into this run: the next collect writes every one taken,
        and later ones count as late.  So the rows are exactly what the followers saw."""
        with self._lock:
            if self._run is not None:
                self._run.sealed = True

    def _belongs(self, run: _Run, result: InferenceResult) -> bool:
        """Whether ``result`` is of a frame produced during ``run``: its uniqueId is new,
        or the source restarted (its ids start at 1 again) and the frame is newer than
        the run (this compares the source's clock with this host's)."""
        if self.device.source is None or result.unique_id >= run.first_id:
            return True
        return run.source.restarts > 0 and result.timestamp >= run.began

    def _count_late(self, uid: str, n: int) -> None:
        self.late[uid] += n
        log.warning("run %s: %d result(s) came after the run's last rows were stored", uid, n)

    def describe_collect(self) -> dict[str, dict[str, Any]]:
        """The data keys of the stream, every one external (``STREAM:``)."""
        return InferenceFile.data_keys(
            self.device.image_shape(), "amplitude" in self.device.heads, self.source
        )

    @property
    def source(self) -> str:
        return f"PVA:{self.device.output_prefix.get()}"

    def get_index(self) -> int:
        """Rows written so far in this run."""
        run = self._run
        return run.file.rows if run is not None and run.file is not None else 0

    def collect_asset_docs(self, index: int | None = None) -> Iterator[tuple[str, dict]]:
        """Write the queued results and yield the documents that announce the new rows.

        Raises
        ------
        StorageFullError
            The disk is (nearly) full: the run stops here and fails, with the rows
            stored so far announced.
        """
        run = self._run
        if run is None or run.error is not None:
            return
        try:
            opening = run.file is None
            if opening:
                self._check_room(run, 0)
                yield from self._open_file(run)
            batch = run.drain(run.results.qsize() if run.sealed else self.max_rows)
            if not batch and not opening:
                return
            self._check_room(run, len(batch))
            start, stop = run.file.append(batch)
        except StorageFullError as error:
            run.error = error
            raise
        except OSError as error:
            run.error = error
            if error.errno == errno.ENOSPC:
                raise self._full(run, 0) from None
            log.exception("writing the inference stream of run %s failed", run.uid)
            return
        except Exception as error:  # keep the run going; its accounting shows the gap
            run.error = error
            log.exception("writing the inference stream of run %s failed", run.uid)
            return
        for compose in run.datum_factories.values():
            yield "stream_datum", compose(indices={"start": start, "stop": stop})

    def _check_room(self, run: _Run, rows: int) -> None:
        """Raise :class:`StorageFullError` unless ``rows`` more rows leave the reserve free."""
        needed = self.reserve_bytes
        if run.file is not None:
            needed += rows * run.file.row_bytes()
        if shutil.disk_usage(self.assets_dir).free < needed:
            raise self._full(run, rows)

    def _full(self, run: _Run, rows: int) -> StorageFullError:
        free = shutil.disk_usage(self.assets_dir).free
        stored = run.file.rows if run.file is not None else 0
        return StorageFullError(
            f"{self.assets_dir}: disk full ({free / 2**20:.2f} MiB free, "
            f"{self.reserve_bytes / 2**20:.2f} MiB kept to close the run): run {run.uid} "
            f"stops with {stored} result(s) stored, {rows} not stored"
        )

    def _open_file(self, run: _Run) -> Iterator[tuple[str, dict]]:
        path = self.assets_dir / f"{run.uid}-{STREAM}.h5"
        amplitude = "amplitude" in self.device.heads
        run.file = InferenceFile(path, self.device.image_shape(), amplitude)
        compose = ComposeStreamResource()
        for key in run.file.columns:
            bundle = compose(
                mimetype="application/x-hdf5",
                uri=path.resolve().as_uri(),
                data_key=key,
                parameters={
                    "dataset": f"/{key}",
                    "swmr": True,
                    "chunk_shape": run.file.chunk_shape(key),
                },
            )
            run.datum_factories[key] = bundle.compose_stream_datum
            yield "stream_resource", bundle.stream_resource_doc

    def trigger(self) -> Status:
        """A status that finishes once every frame of the run is accounted for, or after
        ``grace`` seconds; it never fails, so the run always closes."""
        status = Status(obj=self, timeout=None)
        threading.Thread(
            target=self._settle, args=(status,), name=f"{self.name}-settle", daemon=True
        ).start()
        return status

    def _settle(self, status: Status) -> None:
        run, deadline = self._run, time.monotonic() + self.grace
        try:
            while run is not None and time.monotonic() < deadline and self.device.pool:
                if self.device.source is not None:
                    self._observe_source(run)  # the watcher reads it only every period
                if self._settled(run):
                    break
                time.sleep(0.02)
        finally:
            status.set_finished()

    def end(self) -> dict[str, Any]:
        """Close the file, count later results as late, and return the run's accounting."""
        run = self._run
        if run is None:
            return {}
        ended = time.time()
        run.ended.set()
        if self.device.source is not None:
            self._observe_source(run)
        with self._lock:
            self._run = None
        if run.file is not None:
            try:
                run.file.close()
            except OSError as error:  # a full disk: the accounting still goes out
                run.error = run.error or error
                log.warning("closing %s failed: %s", run.file.path, error)
        summary = self._reconcile(run, ended)
        self._ended = (run.uid, run.first_id, run.first_id + summary["produced"] - 1)
        if leftover := run.results.qsize():  # came after the last collect
            self._count_late(run.uid, leftover)
        return summary

    def _reconcile(self, run: _Run, ended: float) -> dict[str, Any]:
        """The run's frame accounting at ``ended`` (a ``time.time()``): ``produced`` is
        the sum of the :data:`OUTCOMES` (see the README's table of the counters)."""
        if not self._settled(run):
            # Frames without an outcome yet: received by a worker (not_in_time) or not
            # (missed).  The workers' counts can be a status period old; ask for newer.
            self.device.pool_stats(since=ended)
        produced = self._produced(run)
        now = _counts(self.device.pool_stats())
        dropped = now["dropped"] - run.stats_at_start["dropped"]
        rejected = Counter(now["rejected"])
        rejected.subtract(run.stats_at_start["rejected"])
        n_rejected = sum(rejected.values())
        # The pool's counters come with its status updates, which lag on a busy machine;
        # a frame that has an outcome in the workers was received, whatever they say yet.
        counted = now["received"] - run.stats_at_start["received"] - run.duplicates
        received = max(counted, run.received + dropped + n_rejected)
        stored = run.file.rows if run.file is not None else 0
        summary = {
            "produced": produced,
            "received": received,
            "inferred": run.received,
            "stored": stored,
            "not_stored": run.received - stored,
            "dropped": dropped,
            "rejected": n_rejected,
            "rejected_reasons": {k: v for k, v in rejected.items() if v},
            "missed": max(produced - received, 0),
            "not_in_time": max(min(received, produced) - run.received - dropped - n_rejected, 0),
            "duplicates": run.duplicates,
            "source_restarts": run.source.restarts,
            "monitor_overruns": self.device.monitor_overruns,
            "grace_s": self.grace,
            "file": str(run.file.path) if run.file is not None else "",
            "write_error": "" if run.error is None else f"{type(run.error).__name__}: {run.error}",
        }
        if summary["not_in_time"]:
            log.warning(
                "run %s: %d of %d frames had no result by the end of the %.1f s grace "
                "period; later arrivals are counted in InferenceStream.late",
                run.uid,
                summary["not_in_time"],
                produced,
                self.grace,
            )
        return summary

    def _produced(self, run: _Run) -> int:
        """Frames the source produced during ``run`` (those the pool received without one)."""
        if self.device.source is None:
            received = _counts(self.device.pool_stats())["received"]
            return received - run.stats_at_start["received"] - run.duplicates
        with self._lock:
            return run.source.produced(run.seen)

    def _settled(self, run: _Run) -> bool:
        """Whether every frame the source produced during ``run`` has an outcome."""
        return run.received + self._lost(run) >= self._produced(run)

    def _lost(self, run: _Run) -> int:
        now = _counts(self.device.pool_stats())
        dropped = now["dropped"] - run.stats_at_start["dropped"]
        rejected = sum(now["rejected"].values()) - sum(run.stats_at_start["rejected"].values())
        return dropped + rejected


class FrameAccounting:
    """The frame accounting of the run just ended, read into :data:`ACCOUNTING_STREAM`.

    A ``Readable`` of its own: reading the stream itself would make the RunEngine
    collect its assets into the wrong stream.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.parent = None
        self.summary: dict[str, Any] = {}
        self._time = 0.0

    def set(self, summary: dict[str, Any]) -> None:
        self.summary, self._time = summary, time.time()

    def read(self) -> dict[str, dict[str, Any]]:
        values = {k: json.dumps(v) if isinstance(v, dict) else v for k, v in self.summary.items()}
        return {k: {"value": v, "timestamp": self._time} for k, v in values.items()}

    def describe(self) -> dict[str, dict[str, Any]]:
        return {
            k: {"source": f"ptychonn:{self.name}", "dtype": _dtype(v["value"]), "shape": []}
            for k, v in self.read().items()
        }


def frame_accounting(run: Any) -> dict[str, Any]:
    """The frame accounting of a run read back from the catalog (see :class:`FrameAccounting`).

    Empty for runs without the inference device.
    """
    if ACCOUNTING_STREAM not in run:
        return {}
    table = run[ACCOUNTING_STREAM].read()
    summary = {}
    for key in table.data_vars if hasattr(table, "data_vars") else table:
        value = np.asarray(table[key]).ravel()[-1]
        value = value.item() if hasattr(value, "item") else value
        summary[str(key)] = json.loads(value) if key == "rejected_reasons" else value
    return summary


def _dtype(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "string"


def _counts(stats: Any) -> dict[str, Any]:
    """Frames received, dropped and rejected in a ``PoolStats`` (zeros for ``None``)."""
    if stats is None:
        return {"received": 0, "dropped": 0, "rejected": {}}
    return {"received": stats.received, "dropped": stats.dropped, "rejected": dict(stats.rejected)}
