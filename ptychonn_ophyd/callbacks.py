"""The Bluesky callback that adds the PtychoNN results to the run as stream ``inference``.

Documents reach the catalog through this callback: subscribe it to the RunEngine and
subscribe the catalog writer (and anything else that must see the inference stream,
e.g. a Kafka publisher) to it::

    callback = InferenceCallback(inference, assets_directory())
    callback.subscribe(catalog_writer(catalog))
    RE.subscribe(callback)

It forwards every RunEngine document unchanged and, for runs that use the inference
device, inserts the ``inference`` stream: a descriptor, one stream_resource per column
of an HDF5 file it writes under the catalog's readable storage, and stream_datum
documents as rows are appended (every ``flush_period`` while the scan runs). At the
stop document it waits up to ``grace`` seconds for the frames still in flight, then
forwards the stop document with the stream's row count in ``num_events`` and the frame
accounting under the key ``inference``. Results that arrive later are counted in
:attr:`InferenceCallback.late` and logged.

Threads: results arrive in pvapy threads and only go into a queue; a flusher thread
writes them; the RunEngine's documents arrive in its thread. One lock serializes every
call into the subscribers, so they see one ordered stream of documents.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from bluesky.run_engine import Dispatcher
from event_model import ComposeStreamResource, DocumentNames, schema_validators

from .device import InferenceResult, PtychoNNDetector, last_unique_id

log = logging.getLogger(__name__)

STREAM = "inference"
METADATA_KEY = "ptychonn"
"""Start-document key under which :func:`~ptychonn_ophyd.plans.scan_with_inference` puts
the model and pool facts; runs with it (or with the device among ``detectors``) get the
inference stream."""

SCALARS = {
    "unique_id": ("integer", "<i8", "", lambda r: r.unique_id),
    "consumer_id": ("integer", "<i8", "", lambda r: r.consumer_id),
    "latency": ("number", "<f8", "s", lambda r: r.latency_s),
    "x": ("number", "<f8", "um", lambda r: r.x),
    "y": ("number", "<f8", "um", lambda r: r.y),
    "point": ("integer", "<i8", "", lambda r: r.point),
    "frame_time": ("number", "<f8", "s", lambda r: r.timestamp),
}
"""Per-frame columns: JSON dtype, numpy dtype, units, and how to get them from a result."""

IMAGE_CHUNK = 256
SCALAR_CHUNK = 65536
WRITE_ROWS = 1024
"""Rows stacked in memory per HDF5 write."""


class InferenceFile:
    """The HDF5 file of one run's inference results: one growing dataset per column.

    The file is in SWMR mode, so Tiled can read rows while more are appended.
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

    def data_keys(self, source: str) -> dict[str, dict[str, Any]]:
        """Event-model data keys of the columns, each marked external (``STREAM:``)."""
        keys = {
            key: {
                "source": source,
                "dtype": "array",
                "dtype_numpy": "<f4",
                "shape": list(self.image_shape),
                "units": "rad" if key == "phase" else "",
                "external": "STREAM:",
            }
            for key in self.images
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
        self._file.close()


class _Run:
    """What the callback tracks for one run that uses the inference device."""

    def __init__(self, start: dict, device: PtychoNNDetector) -> None:
        self.start = start
        self.uid = start["uid"]
        self.results: queue.SimpleQueue[InferenceResult] = queue.SimpleQueue()
        self.received = 0
        self.first_id = _last_id(device) + 1
        self.stats_at_start = _counts(device.pool.stats() if device.pool is not None else None)
        self.file: InferenceFile | None = None
        self.descriptor: dict | None = None
        self.datum_factories: dict[str, Any] = {}
        self.error: BaseException | None = None
        self.token: int | None = None

    def take(self, result: InferenceResult) -> None:
        self.received += 1
        self.results.put(result)

    def drain(self, limit: int) -> list[InferenceResult]:
        batch = []
        while len(batch) < limit:
            try:
                batch.append(self.results.get_nowait())
            except queue.Empty:
                break
        return batch


class InferenceCallback:
    """Forwards a RunEngine's documents and adds the inference stream to runs that use
    ``device``.

    Parameters
    ----------
    device
        The inference device; its results, pool statistics and source detector are used.
    assets_dir
        Folder for the HDF5 files; it must be in the catalog's readable storage
        (:func:`ptychonn_ophyd.catalog.assets_directory`).
    grace
        Seconds the stop document waits for frames still being inferred.
    flush_period
        Seconds between writes of new rows while the run goes on; each write costs
        one stream_datum per column, whatever the number of rows.
    max_rows
        Most rows one write takes (the rest wait for the next).
    """

    def __init__(
        self,
        device: PtychoNNDetector,
        assets_dir: str | Path,
        *,
        grace: float = 5.0,
        flush_period: float = 0.5,
        max_rows: int = 65536,
    ) -> None:
        self.device = device
        self.assets_dir = Path(assets_dir)
        self.grace = grace
        self.flush_period = flush_period
        self.max_rows = max_rows
        self.late: Counter[str] = Counter()
        self._dispatcher = Dispatcher()
        self._lock = threading.Lock()
        self._run: _Run | None = None
        self._flusher: threading.Thread | None = None
        self._stop_flushing = threading.Event()
        self._late_token: int | None = None
        self._late_run: tuple[str | None, int, int] = (None, 0, -1)

    def subscribe(self, func: Callable[[str, dict], Any], name: str = "all") -> int:
        """Send documents (``name`` one of event-model's names, or all) to ``func``."""
        return self._dispatcher.subscribe(func, name)

    def unsubscribe(self, token: int) -> None:
        """Stop sending documents to the subscriber ``token``."""
        self._dispatcher.unsubscribe(token)

    def __call__(self, name: str, doc: dict) -> None:
        if name == "start" and self._uses_device(doc):
            self._emit(name, doc)
            self._begin(doc)
        elif name == "stop" and self._run is not None and doc["run_start"] == self._run.uid:
            self._finish(doc)
        else:
            self._emit(name, doc)

    def _uses_device(self, start: dict) -> bool:
        return self.device.name in start.get("detectors", ()) or METADATA_KEY in start

    def _emit(self, name: str, doc: dict) -> None:
        with self._lock:
            self._dispatcher.process(DocumentNames[name], doc)

    # -- during the run ------------------------------------------------------------

    def _begin(self, start: dict) -> None:
        self._end_late_count()
        run = self._run = _Run(start, self.device)
        run.token = self.device.subscribe_results(self._accept)
        self._stop_flushing.clear()
        self._flusher = threading.Thread(
            target=self._flush_periodically, name="inference-flusher", daemon=True
        )
        self._flusher.start()

    def _accept(self, result: InferenceResult) -> None:
        run = self._run
        if run is None:
            return
        if result.unique_id < run.first_id and self.device.source is not None:
            self._count_late(result)
            return
        run.take(result)

    def _flush_periodically(self) -> None:
        while not self._stop_flushing.wait(self.flush_period):
            self._flush()

    def _flush(self) -> None:
        """Append the queued results to the file and announce the new rows."""
        run = self._run
        if run is None or run.error is not None:
            return
        batch = run.drain(self.max_rows)
        if not batch:
            return
        try:
            self._write(run, batch)
        except Exception as error:
            run.error = error
            log.exception("writing the inference stream of run %s failed", run.uid)

    def _write(self, run: _Run, batch: list[InferenceResult]) -> None:
        if run.file is None:
            self._open_stream(run, batch[0])
        start, stop = run.file.append(batch)
        for compose in run.datum_factories.values():
            datum = compose(
                indices={"start": start, "stop": stop},
                seq_nums={"start": start + 1, "stop": stop + 1},
                descriptor=run.descriptor,
            )
            self._emit("stream_datum", datum)

    def _open_stream(self, run: _Run, first: InferenceResult) -> None:
        path = self.assets_dir / f"{run.uid}-{STREAM}.h5"
        run.file = InferenceFile(path, first.phase.shape, first.amplitude is not None)
        data_keys = run.file.data_keys(f"PVA:{self.device.output_prefix.get()}")
        run.descriptor = {
            "uid": str(uuid.uuid4()),
            "run_start": run.uid,
            "time": time.time(),
            "name": STREAM,
            "data_keys": data_keys,
            "object_keys": {self.device.name: list(data_keys)},
            "configuration": {self.device.name: _configuration(self.device)},
            "hints": {},
        }
        schema_validators[DocumentNames.descriptor].validate(run.descriptor)
        self._emit("descriptor", run.descriptor)
        compose = ComposeStreamResource(start=run.start)
        for key in data_keys:
            bundle = compose(
                "application/x-hdf5",
                path.resolve().as_uri(),
                key,
                {"dataset": f"/{key}", "swmr": True, "chunk_shape": run.file.chunk_shape(key)},
            )
            self._emit("stream_resource", bundle.stream_resource_doc)
            run.datum_factories[key] = bundle.compose_stream_datum

    # -- end of the run ------------------------------------------------------------

    def _finish(self, stop: dict) -> None:
        run = self._run
        try:
            self._wait_for_stragglers(run)
        finally:
            self._close(run)
        summary = self._reconcile(run)
        stop = {
            **stop,
            "num_events": {**stop.get("num_events", {}), STREAM: summary["stored"]},
            STREAM: summary,
        }
        schema_validators[DocumentNames.stop].validate(stop)
        self._start_late_count(run, summary["produced"])
        self._emit("stop", stop)
        if run.error is not None:
            raise RuntimeError(f"the inference stream of run {run.uid} is incomplete") from (
                run.error
            )

    def _close(self, run: _Run) -> None:
        """Stop taking results, write the last ones and close the file."""
        self.device.unsubscribe_results(run.token)
        self._stop_flushing.set()
        self._flusher.join()
        try:
            self._flush()
        finally:
            self._run = None
            if run.file is not None:
                run.file.close()

    def _wait_for_stragglers(self, run: _Run) -> None:
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline and self.device.pool is not None:
            if run.received + _lost(self.device, run) >= _produced(self.device, run):
                return
            time.sleep(0.02)

    def _reconcile(self, run: _Run) -> dict[str, Any]:
        produced = _produced(self.device, run)
        now = _counts(self.device.pool_stats())
        dropped = now["dropped"] - run.stats_at_start["dropped"]
        rejected = Counter(now["rejected"])
        rejected.subtract(run.stats_at_start["rejected"])
        stored = run.file.rows if run.file is not None else 0
        summary = {
            "produced": produced,
            "inferred": run.received,
            "stored": stored,
            "dropped": dropped,
            "rejected": sum(rejected.values()),
            "rejected_reasons": {k: v for k, v in rejected.items() if v},
            "not_in_time": max(produced - stored - dropped - sum(rejected.values()), 0),
            "monitor_overruns": self.device.monitor_overruns,
            "grace_s": self.grace,
            "file": str(run.file.path) if run.file is not None else "",
        }
        if summary["not_in_time"]:
            log.warning(
                "run %s: %d of %d frames had no result by the end of the %.1f s grace "
                "period; later arrivals are counted in InferenceCallback.late",
                run.uid,
                summary["not_in_time"],
                produced,
                self.grace,
            )
        return summary

    def _start_late_count(self, run: _Run, produced: int) -> None:
        self._late_run = (run.uid, run.first_id, run.first_id + produced - 1)
        self._late_token = self.device.subscribe_results(self._count_late)

    def _count_late(self, result: InferenceResult) -> None:
        uid, first_id, last_id = self._late_run
        if uid is not None and first_id <= result.unique_id <= last_id:
            self.late[uid] += 1
            log.warning(
                "run %s: result for uniqueId %d came after the run ended", uid, result.unique_id
            )

    def _end_late_count(self) -> None:
        if self._late_token is not None:
            self.device.unsubscribe_results(self._late_token)
            self._late_token = None


def _configuration(device: PtychoNNDetector) -> dict[str, Any]:
    """The descriptor ``configuration`` entry of ``device``."""
    readings = device.read_configuration()
    return {
        "data": {k: v["value"] for k, v in readings.items()},
        "timestamps": {k: v["timestamp"] for k, v in readings.items()},
        "data_keys": device.describe_configuration(),
    }


def _last_id(device: PtychoNNDetector) -> int:
    return last_unique_id(device.source) if device.source is not None else 0


def _counts(stats: Any) -> dict[str, Any]:
    """Frames received, dropped and rejected in a ``PoolStats`` (zeros for ``None``)."""
    if stats is None:
        return {"received": 0, "dropped": 0, "rejected": {}}
    return {"received": stats.received, "dropped": stats.dropped, "rejected": dict(stats.rejected)}


def _produced(device: PtychoNNDetector, run: _Run) -> int:
    if device.source is None:
        return _counts(device.pool_stats())["received"] - run.stats_at_start["received"]
    return _last_id(device) - run.first_id + 1


def _lost(device: PtychoNNDetector, run: _Run) -> int:
    now = _counts(device.pool_stats())
    dropped = now["dropped"] - run.stats_at_start["dropped"]
    rejected = sum(now["rejected"].values()) - sum(run.stats_at_start["rejected"].values())
    return dropped + rejected
