"""What a run with inference holds: its streams, start-document keys, columns, loaders.

The contract between the Bluesky session, which writes runs, and everything that reads
them back (``analysis/``, replay, a Tiled client), as :mod:`ptychonn_ophyd.wire` is the
contract between processes.  A run that used the inference device has:

=========================  ==========================================================
``primary``                the plan's events (motors, detector, the device's counts)
:data:`STREAM`             one row per inferred frame: :data:`IMAGES` and
                           :data:`COLUMNS`, in an HDF5 file next to the catalog
:data:`ACCOUNTING_STREAM`  one row: the frame accounting (:data:`OUTCOMES` and more)
:data:`MOSAIC_STREAM`      one row: the live view's final stitched image, if stitched
=========================  ==========================================================
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ptychonn_ophyd.wire import ResultBatch

STREAM = "inference"
"""Name of the stream of per-frame results."""


def stream_file_name(uid: str) -> str:
    """The name of run ``uid``'s HDF5 file of :data:`STREAM` rows, in the assets folder."""
    return f"{uid}-{STREAM}.h5"


ACCOUNTING_STREAM = "inference_accounting"
"""Name of the one-row stream holding a run's frame accounting."""
MOSAIC_STREAM = "mosaic"
"""Name of the one-row stream holding a run's final stitched image."""
STITCHING_KEY = "stitching"
"""Key of :data:`MOSAIC_STREAM` saying in words how its image was stitched (absent in
runs stored before it was)."""

NOT_PLOTTED = {"fields": []}
"""The ``hints`` of the objects read into :data:`STREAM`, :data:`ACCOUNTING_STREAM` and
:data:`MOSAIC_STREAM`: no field worth a line plot, so BestEffortCallback draws nothing
for them (unhinted, it plots every field: empty axes, since rows arrive as
``stream_datum``, and "LivePlot did not get any data" for each). The live view is
their picture."""

METADATA_KEY = "ptychonn"
"""Start-document key holding the model and pool facts; runs with it (or with the
inference device among ``detectors``) get the inference stream."""
FLY_FRAMES_KEY = "num_frames"
"""Start-document key of a fly scan: the frames its free run takes along the path.  Its
``num_points`` is 1, the events of its primary stream (one, at the end), so that
BestEffortCallback draws no one-point plot of it."""
PIXEL_SIZE_KEY = "object_pixel_size_um"
"""Start-document key for the object pixel size (micrometres), which stitching uses."""
FRAME_STATISTICS_KEY = "frame_statistics"
"""Start-document key naming where the primary stream holds each point's frame statistics
(a :class:`FrameStatisticsKeys` as a dict), which give each patch its tilt in replay."""

OUTCOMES = ("inferred", "dropped", "rejected", "missed", "not_in_time")
"""The frame accounting's counters, of which every produced frame is in exactly one."""

IMAGES = {"phase": "rad", "amplitude": ""}
"""Per-frame image columns (``(H, W)`` float32) and their units; ``amplitude`` only for
two-head models."""
INPUT_MOMENTS = ("input_total", "input_centroid_x", "input_centroid_y")
"""Per-frame columns of the model input's moments: total counts and centroid (column
``x``, row ``y``, in the input's pixels) of the frame as the network saw it."""


@dataclass(frozen=True)
class Column:
    """A per-frame scalar column: its event-model dtype, numpy dtype and units."""

    dtype: str
    dtype_numpy: str
    units: str


COLUMNS = {
    "unique_id": Column("integer", "<i8", ""),
    "consumer_id": Column("integer", "<i8", ""),
    "model": Column("integer", "<i8", ""),
    "latency": Column("number", "<f8", "s"),
    "x": Column("number", "<f8", "um"),
    "y": Column("number", "<f8", "um"),
    "point": Column("integer", "<i8", ""),
    "frame_time": Column("number", "<f8", "s"),
    INPUT_MOMENTS[0]: Column("number", "<f8", "counts"),
    INPUT_MOMENTS[1]: Column("number", "<f8", "px"),
    INPUT_MOMENTS[2]: Column("number", "<f8", "px"),
}
"""Per-frame scalar columns of :data:`STREAM`, in file order.  ``model`` is the hash of
the model that made the row, as a number (:func:`model_number`, :func:`model_hash`): a
model swapped in mid-run shows in the rows it made."""

_FROM_BATCH = {
    "unique_id": "uniqueId",
    "x": "x",
    "y": "y",
    "point": "point",
    "frame_time": "frameTime",
    INPUT_MOMENTS[0]: "inputTotal",
    INPUT_MOMENTS[1]: "inputCentroidX",
    INPUT_MOMENTS[2]: "inputCentroidY",
}
"""Columns copied from a batch's per-frame arrays
(:data:`~ptychonn_ophyd.wire.BATCH_FRAME_FIELDS`)."""


Rows = Mapping[str, np.ndarray]
"""Rows of :data:`STREAM`: each column's values (see :data:`COLUMNS` and :data:`IMAGES`),
one element a frame."""


def rows_of(batch: ResultBatch) -> dict[str, np.ndarray]:
    """The rows ``batch`` makes: :data:`COLUMNS` and the images, one element a frame."""
    n = len(batch)
    rows = {
        key: np.asarray(batch.frames[field], COLUMNS[key].dtype_numpy)
        for key, field in _FROM_BATCH.items()
    }
    rows["consumer_id"] = np.full(n, batch.consumer_id, np.int64)
    rows["model"] = np.full(n, model_number(batch.model_hash), np.int64)
    rows["latency"] = batch.published - rows["frame_time"]
    rows["phase"] = batch.phase
    if batch.amplitude is not None:
        rows["amplitude"] = batch.amplitude
    return rows


def kept_rows(batch: ResultBatch, keep: np.ndarray) -> dict[str, np.ndarray]:
    """The rows of ``batch`` that the boolean ``keep`` (``(N,)``) marks."""
    rows = rows_of(batch)
    return rows if keep.all() else {key: values[keep] for key, values in rows.items()}


def model_number(model_hash: str) -> int:
    """The ``model`` column's value for a model hash (12 hex digits; 0 for none)."""
    return int(model_hash, 16) if model_hash else 0


def model_hash(number: int) -> str:
    """The model hash a ``model`` column value stands for."""
    return format(int(number), "012x")


@dataclass(frozen=True)
class FrameStatisticsKeys:
    """The primary-stream keys of each point's last frame id and its frames' statistics.

    A step scan records them at every point when the detector reports them (as an
    areaDetector statistics plugin does: total counts, centroid column ``x`` and row
    ``y``); :mod:`ptychonn_ophyd.analysis.tilt` takes each patch's tilt from them.  A
    detector the plans do not recognise can name its own in the start document:
    ``md={"frame_statistics": {"unique_id": ..., "total": ..., "centroid_x": ...,
    "centroid_y": ...}}``.
    """

    unique_id: str
    total: str
    centroid_x: str
    centroid_y: str

    @classmethod
    def of(cls, detector: Any) -> FrameStatisticsKeys | None:
        """The keys a detector with ``last_unique_id`` and ``stats`` (``total``,
        ``centroid_x``, ``centroid_y`` signals, as
        :class:`~ptychonn_ophyd.sim.detector.SimPtychoDetector`) reads; else ``None``."""
        stats, last = getattr(detector, "stats", None), getattr(detector, "last_unique_id", None)
        names = tuple(cls.__dataclass_fields__)[1:]  # total, centroid_x, centroid_y
        if last is None or not all(hasattr(stats, n) for n in names):
            return None
        return cls(last.name, *(getattr(stats, n).name for n in names))

    @classmethod
    def from_start(cls, start: Mapping[str, Any]) -> FrameStatisticsKeys | None:
        """The keys a run's start document names, ``None`` where it names none.

        Raises
        ------
        ValueError
            The entry is not a mapping of exactly this class's four fields.
        """
        entry = start.get(FRAME_STATISTICS_KEY)
        if entry is None:
            return None
        fields = tuple(cls.__dataclass_fields__)
        if (
            not isinstance(entry, Mapping)
            or sorted(entry) != sorted(fields)
            or not all(isinstance(key, str) for key in entry.values())
        ):
            raise ValueError(
                f"run {start.get('uid')}: {FRAME_STATISTICS_KEY!r} in its start document "
                f"must map exactly {', '.join(fields)} to primary-stream keys, not {entry!r}"
            )
        return cls(**entry)

    def as_start(self) -> dict[str, str]:
        """The start-document entry."""
        return asdict(self)


ACCOUNTING_JSON = ("rejected_reasons", "dropped_reasons", "models", "workers")
"""Accounting entries stored as JSON text (the others are numbers or text)."""


def as_v3(run: Any) -> Any:
    """``run`` (a Tiled ``BlueskyRun`` client node) in the layout the readers here read,
    bluesky-tiled-plugins' v3 (each stream a table of columns), whichever its catalog's
    client hands out: databroker's v1 ``Broker`` switches the catalog client's map to the
    v2 layout (``data``, ``timestamps``), and every run read from it afterwards has that.
    """
    return run.v3 if hasattr(run, "v3") else run


def frame_accounting(run: Any) -> dict[str, Any]:
    """The frame accounting of a run read back from the catalog (:data:`ACCOUNTING_STREAM`).

    Empty for runs without the inference device.
    """
    run = as_v3(run)
    if ACCOUNTING_STREAM not in run:
        return {}
    table = run[ACCOUNTING_STREAM].read()
    summary = {}
    for key in table.data_vars if hasattr(table, "data_vars") else table:
        value = np.asarray(table[key]).ravel()[-1]
        value = value.item() if hasattr(value, "item") else value
        summary[str(key)] = json.loads(value) if key in ACCOUNTING_JSON else value
    return summary
