"""The contract between processes: channel names, NTNDArrays, result fields, status fields.

Detector frames, results and worker statuses cross process boundaries as PV Access
structures.  Whatever writes one of them and whatever reads it import the names and
layouts from here, so the two sides cannot drift apart.

Frames and results are NTNDArrays.  A frame carries the scan position in attributes
(:data:`POSITION_ATTRIBUTES`):

=========  =======  ==============================================
attribute  type     meaning
=========  =======  ==============================================
``x``      float64  horizontal position in micrometres
``y``      float64  vertical position in micrometres
``point``  int32    index of the scan point the frame belongs to
=========  =======  ==============================================

Its result is the same NTNDArray (same ``uniqueId``, ``dataTimeStamp`` and attributes)
holding a float32 image.  Which worker and model made it, and the total counts and
centroid of the model input it was inferred from, are its ``descriptor``
(:func:`result_descriptor` and :data:`INPUT_TAGS`, e.g. ``ptychonn consumer=2
model=0123456789ab total=812345 cx=63.912345 cy=64.100000``).  How late it is is the
difference of its two timestamps: ``dataTimeStamp`` is the frame's, ``timeStamp`` the
moment the worker published it.  Nothing is appended to the attribute list: rewriting
it through pvapy's Python API would cost more than the rest of a result together.

Every inferred batch is also published whole, as one update of the worker's batch
channel ``<prefix>:<k>:batch`` (:data:`BATCH_TYPE`, :class:`ResultBatch`): the batch's
phase (and amplitude) as one ``N x H x W`` array beside per-frame arrays of uniqueIds,
frame times, positions and input moments.  This is the channel the Bluesky session and
the benchmarks read: one PV Access update and one Python call per batch, not per frame.
Per-frame NTNDArrays stay for the stock tools (c2dv, ``AdOutputFileProcessor``) and
are published for every frame, as a preview, or not at all (``frame_outputs``).

A worker's status channel carries pvapy's statistics and, under ``userStats``, the
frame accounting of :data:`STATS_PVA_TYPES`; :class:`WorkerStatus` reads it.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pvaccess as pva

# -- channels --------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerChannels:
    """The PVA channels of worker ``k``: ``<prefix>:<k>:output`` and its siblings."""

    output: str
    amplitude: str
    status: str
    control: str
    batch: str

    @classmethod
    def of(cls, prefix: str, consumer_id: int) -> WorkerChannels:
        base = f"{prefix}:{consumer_id}"
        return cls(
            f"{base}:output",
            f"{base}:amplitude",
            f"{base}:status",
            f"{base}:control",
            f"{base}:{BATCH_CHANNEL}",
        )

    @staticmethod
    def patterns(prefix: str) -> dict[str, str]:
        """pvapy's ``--*-channel`` patterns (``*`` stands for the consumer id)."""
        return {
            "output-channel": f"{prefix}:*:output",
            "status-channel": f"{prefix}:*:status",
            "control-channel": f"{prefix}:*:control",
        }


BATCH_CHANNEL = "batch"
"""Name of a worker's batch channel beside its output: ``<prefix>:<k>:batch``."""


def sibling_channel(output_channel: str | None, name: str) -> str | None:
    """``<prefix>:<k>:<name>`` beside an output channel ``<prefix>:<k>:output``."""
    if not output_channel:
        return None
    return f"{output_channel.removesuffix(':output')}:{name}"


def mosaic_channel(prefix: str) -> str:
    """``<prefix>:mosaic``: the live stitched phase of the scan of the pool at ``prefix``."""
    return f"{prefix}:mosaic"


def mosaic_coverage_channel(prefix: str) -> str:
    """``<prefix>:mosaic:covered``: which pixels of the mosaic the scan has lit (uint8, 1
    where it has), published just before each mosaic update with the same ``uniqueId``."""
    return f"{mosaic_channel(prefix)}:covered"


MOSAIC_ATTRIBUTES = ("pixel_size_um", "scan_uid", "frames", "center_row", "center_col", "fill")
"""Attributes of a mosaic NTNDArray: object pixel size (micrometres), the run's uid,
patches stitched so far, the pixel that scan position ``(0, 0)`` lights, and the value
of the pixels the scan has not lit (the lowest phase it has: areaDetector viewers
scale to a finite image; :func:`mosaic_coverage_channel` says which pixels those are)."""


# -- NTNDArrays --------------------------------------------------------------------------

VALUE_FIELDS = {
    np.dtype("uint8"): "ubyteValue",
    np.dtype("int8"): "byteValue",
    np.dtype("uint16"): "ushortValue",
    np.dtype("int16"): "shortValue",
    np.dtype("uint32"): "uintValue",
    np.dtype("int32"): "intValue",
    np.dtype("float32"): "floatValue",
    np.dtype("float64"): "doubleValue",
}
"""NTNDArray ``value`` union member for each image dtype."""

POSITION_ATTRIBUTES = ("x", "y", "point")
"""Attributes that carry the scan position of a frame (see the module docstring)."""

RESULT_DESCRIPTOR = "ptychonn consumer={consumer_id} model={model_hash}"
"""The ``descriptor`` of every result: the worker and the model that made it, followed
by :data:`INPUT_TAGS` (:class:`ResultTags`)."""
INPUT_TAGS = " total={:.9g} cx={:.6f} cy={:.6f}"
"""The end of a result's ``descriptor``: the moments of the model input it was inferred
from, formatted per frame after the worker's and model's part."""


@dataclass(frozen=True)
class ResultTags:
    """What a result's ``descriptor`` says.

    ``input_total`` and ``input_centroid`` ``(x, y)`` are the total counts and centre
    of mass of the model input (the frame after preprocessing, in its pixels;
    :func:`~ptychonn_ophyd.moments.frame_moments`): what
    :mod:`~ptychonn_ophyd.analysis.tilt` reads each patch's tilt from.  They are NaN,
    the consumer -1 and the model ``""``, where the descriptor does not give them.
    """

    consumer_id: int = -1
    model_hash: str = ""
    input_total: float = float("nan")
    input_centroid: tuple[float, float] = (float("nan"), float("nan"))


def result_descriptor(consumer_id: int, model_hash: str) -> str:
    """The start of the ``descriptor`` of worker ``consumer_id``'s results with
    ``model_hash``, the same for all of them: workers format it once and append
    :data:`INPUT_TAGS` to it for each frame."""
    return RESULT_DESCRIPTOR.format(consumer_id=consumer_id, model_hash=model_hash)


def read_result_descriptor(descriptor: str) -> ResultTags:
    """The :class:`ResultTags` of a result's descriptor (defaults for others)."""
    fields = dict(part.split("=", 1) for part in descriptor.split()[1:] if "=" in part)
    if not descriptor.startswith("ptychonn ") or "consumer" not in fields:
        return ResultTags()
    total, x, y = (float(fields.get(key, "nan")) for key in ("total", "cx", "cy"))
    return ResultTags(int(fields["consumer"]), fields.get("model", ""), total, (x, y))


Attribute = float | int | str


def _attribute(name: str, value: Attribute) -> pva.NtAttribute:
    if isinstance(value, str):
        return pva.NtAttribute(name, pva.PvString(value))
    if isinstance(value, int | np.integer):
        return pva.NtAttribute(name, pva.PvInt(int(value)))
    return pva.NtAttribute(name, pva.PvDouble(float(value)))


def make_ntndarray(
    image: np.ndarray,
    unique_id: int,
    attributes: Mapping[str, Attribute] | None = None,
    descriptor: str = "",
) -> pva.NtNdArray:
    """One mono NTNDArray, as an areaDetector's PVA plugin sends it.

    ``attributes`` become NTNDArray attributes after ``ColorMode`` 0: ints as int32,
    floats as float64, strings as strings.
    """
    if image.ndim != 2 or image.dtype not in VALUE_FIELDS:
        raise ValueError(f"need a 2-D image of {list(map(str, VALUE_FIELDS))}, got {image.dtype}")
    ny, nx = image.shape
    array = pva.NtNdArray()
    array["value"] = {VALUE_FIELDS[image.dtype]: np.ascontiguousarray(image).ravel()}
    array["dimension"] = [
        pva.PvDimension(nx, 0, nx, 1, False),
        pva.PvDimension(ny, 0, ny, 1, False),
    ]
    array["compressedSize"] = image.nbytes
    array["uncompressedSize"] = image.nbytes
    array["descriptor"] = descriptor
    array["attribute"] = [
        _attribute("ColorMode", 0),
        *(_attribute(k, v) for k, v in (attributes or {}).items()),
    ]
    stamp(array, unique_id)
    return array


def stamp(array: pva.NtNdArray, unique_id: int, when: float | None = None) -> None:
    """Set an NTNDArray's ``uniqueId``, ``timeStamp`` and ``dataTimeStamp``.

    One ``set`` of the three fields: 5 µs against 20 µs for three assignments through a
    ``PvTimeStamp``, which the simulated detector pays on every frame it sends.
    """
    seconds, fraction = divmod(time.time() if when is None else when, 1.0)
    ts = {"secondsPastEpoch": int(seconds), "nanoseconds": int(fraction * 1e9)}
    array.set({"uniqueId": int(unique_id), "timeStamp": ts, "dataTimeStamp": ts})


def read_attributes(array: pva.PvObject) -> dict[str, Attribute]:
    """The NTNDArray attributes as ``{name: value}``, as a monitor callback receives them."""
    return {attribute["name"]: _value(attribute) for attribute in array["attribute"]}


NO_POSITION = (float("nan"), float("nan"), -1)
"""``(x, y, point)`` of a frame without position attributes."""


def read_position(array: pva.PvObject) -> tuple[float, float, int]:
    """A frame's :data:`POSITION_ATTRIBUTES` ``(x, y, point)``; :data:`NO_POSITION`'s
    value for each one it lacks or that is not a number."""
    found = dict(zip(POSITION_ATTRIBUTES, NO_POSITION, strict=True))
    for attribute in array.getStructureArray("attribute"):
        name = attribute["name"]
        if name in found:
            with contextlib.suppress(TypeError, ValueError):
                found[name] = type(found[name])(_value(attribute))
    return found["x"], found["y"], found["point"]


def read_frame_tags(array: pva.PvObject) -> tuple[float, ...]:
    """A frame's :data:`FRAME_TAGS`, in their order: uniqueId, time, ``x``, ``y``, ``point``."""
    return (array["uniqueId"], _seconds(array["dataTimeStamp"]), *read_position(array))


def _value(attribute: Mapping[str, Any]) -> Attribute:
    value = attribute["value"]
    if isinstance(value, tuple):  # a variant union arrives as a (value, type) pair
        value = value[0]
    return value["value"] if isinstance(value, dict) else value


@dataclass(frozen=True)
class Ntndarray:
    """What an NTNDArray holds: ``uniqueId``, image ``[ny, nx]``, attributes, the frame's
    time (``dataTimeStamp``), the publish time (``timeStamp``) and the ``descriptor``."""

    unique_id: int
    image: np.ndarray
    attributes: dict[str, Attribute]
    timestamp: float
    published: float = float("nan")
    descriptor: str = ""


def parse_ntndarray(array: pva.PvObject) -> Ntndarray:
    """Read an uncompressed NTNDArray (a result, or a simulated frame)."""
    (data,) = array["value"][0].values()
    dims = [d["size"] for d in array["dimension"]]
    image = np.asarray(data).reshape(dims[::-1])
    timestamp = _seconds(array["dataTimeStamp"])
    return Ntndarray(
        array["uniqueId"],
        image,
        read_attributes(array),
        timestamp or time.time(),
        _seconds(array["timeStamp"]) or float("nan"),
        array["descriptor"],
    )


def _seconds(stamp_: Mapping[str, int]) -> float:
    return stamp_["secondsPastEpoch"] + 1e-9 * stamp_["nanoseconds"]


def time_stamp(seconds: float) -> dict[str, int]:
    """An NTNDArray ``timeStamp`` as a dict (assigning a dict is 7x cheaper than a
    ``PvTimeStamp``)."""
    whole = int(seconds)
    return {"secondsPastEpoch": whole, "nanoseconds": int((seconds - whole) * 1e9)}


# -- result batches ----------------------------------------------------------------------

BATCH_STRUCTURE_ID = "ptychonn:ResultBatch:1.0"
"""The structure id of a batch channel's value."""

FRAME_TAGS = {
    "uniqueId": pva.LONG,
    "frameTime": pva.DOUBLE,
    "x": pva.DOUBLE,
    "y": pva.DOUBLE,
    "point": pva.INT,
}
"""What a batch says of each frame from the frame itself: its ``uniqueId`` and time
(``dataTimeStamp``, seconds since the epoch) and its position attributes (NaN, and -1
for ``point``, where the frame had none; :func:`read_position`)."""
INPUT_MOMENT_FIELDS = {
    "inputTotal": pva.DOUBLE,
    "inputCentroidX": pva.DOUBLE,
    "inputCentroidY": pva.DOUBLE,
}
"""What a batch says of each frame's model input: its total counts and centroid
``(x, y)`` in the input's pixels (:func:`~ptychonn_ophyd.moments.frame_moments`)."""
BATCH_FRAME_FIELDS = {**FRAME_TAGS, **INPUT_MOMENT_FIELDS}
"""Per-frame arrays of a batch, one element a frame, in this order."""

BATCH_TYPE = {
    "consumerId": pva.INT,
    "modelHash": pva.STRING,
    "batch": pva.ULONG,
    "framesBefore": pva.ULONG,
    "height": pva.UINT,
    "width": pva.UINT,
    **{name: [kind] for name, kind in BATCH_FRAME_FIELDS.items()},
    "phase": [pva.FLOAT],
    "amplitude": [pva.FLOAT],
    "timeStamp": {"secondsPastEpoch": pva.LONG, "nanoseconds": pva.INT, "userTag": pva.INT},
}
"""The value of a worker's batch channel (``<prefix>:<k>:batch``), a plain structure of
scalars and scalar arrays that any PV Access client reads (pvapy, p4p, ``pvget``).

==================  =========  ====================================================
field               type       meaning
==================  =========  ====================================================
``consumerId``      int32      the worker
``modelHash``       string     the model that made the batch
``batch``           uint64     this worker's batch counter, from 1
``framesBefore``    uint64     frames this worker published in batches before this
                               one: a reader that missed an update sees the gap
``height``          uint32     ``H`` of each image
``width``           uint32     ``W`` of each image
per-frame arrays    (N,)       :data:`BATCH_FRAME_FIELDS`
``phase``           float32    ``N * H * W`` phases, frame after frame, row-major
``amplitude``       float32    the same for the amplitude, empty for phase-only models
``timeStamp``       time_t     when the worker published the batch
==================  =========  ====================================================
"""

_FLOATS = np.dtype(np.float32)
_FRAME_DTYPES = {
    name: np.dtype({pva.LONG: np.int64, pva.INT: np.int32}.get(kind, np.float64))
    for name, kind in BATCH_FRAME_FIELDS.items()
}


@dataclass(frozen=True)
class ResultBatch:
    """One batch of results, as a batch channel carries it (:data:`BATCH_TYPE`).

    ``frames`` maps each of :data:`BATCH_FRAME_FIELDS` to its ``(N,)`` array;
    ``phase`` and ``amplitude`` (``None`` for phase-only models) are ``(N, H, W)``
    float32; a batch the store process relays without its images has neither.
    ``published`` is the publish time in seconds since the epoch.
    """

    consumer_id: int
    model_hash: str
    batch: int
    frames_before: int
    published: float
    frames: dict[str, np.ndarray]
    phase: np.ndarray | None
    amplitude: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.frames["uniqueId"])

    @property
    def unique_ids(self) -> np.ndarray:
        """The frames' uniqueIds, ``(N,)`` int64."""
        return self.frames["uniqueId"]


def new_batch_value() -> pva.PvObject:
    """An empty batch channel value (:data:`BATCH_TYPE`), to add a record or to fill."""
    return pva.PvObject(BATCH_TYPE, BATCH_STRUCTURE_ID)


def write_result_batch(target: pva.PvObject, batch: ResultBatch) -> None:
    """Fill ``target`` (a :func:`new_batch_value`, reused batch after batch) with ``batch``.

    Each array is handed to pvapy once; PV Access posts copy nothing more, so the same
    ``target`` can be filled again as soon as it is posted.
    """
    h, w = batch.phase.shape[1:]
    target.set(
        {
            "consumerId": batch.consumer_id,
            "modelHash": batch.model_hash,
            "batch": batch.batch,
            "framesBefore": batch.frames_before,
            "height": h,
            "width": w,
            "timeStamp": time_stamp(batch.published),
        }
    )
    for name, dtype in _FRAME_DTYPES.items():
        target[name] = np.ascontiguousarray(batch.frames[name], dtype)
    target["phase"] = _flat(batch.phase)
    target["amplitude"] = _flat(batch.amplitude) if batch.amplitude is not None else _NONE


_NONE = np.zeros(0, _FLOATS)


def _flat(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(images, _FLOATS).reshape(-1)


def parse_result_batch(value: Mapping[str, Any]) -> ResultBatch:
    """The :class:`ResultBatch` of a batch channel update.

    Every array is copied: pvapy hands a monitor's arrays as views of a buffer that the
    next update overwrites.

    Raises
    ------
    ValueError
        The arrays' lengths do not fit ``height``, ``width`` and the number of uniqueIds.
    """
    h, w = value["height"], value["width"]
    frames = {name: np.array(value[name], dtype) for name, dtype in _FRAME_DTYPES.items()}
    n = len(frames["uniqueId"])
    phase = np.array(value["phase"], _FLOATS)
    amplitude = np.array(value["amplitude"], _FLOATS)
    lengths = {name: len(array) for name, array in frames.items()}
    if (
        set(lengths.values()) != {n}
        or phase.size != n * h * w
        or amplitude.size not in (0, n * h * w)
    ):
        raise ValueError(
            f"a batch of {n} frames of {h}x{w} has {phase.size} phase and {amplitude.size} "
            f"amplitude values and per-frame arrays of {lengths}"
        )
    return ResultBatch(
        consumer_id=value["consumerId"],
        model_hash=value["modelHash"],
        batch=value["batch"],
        frames_before=value["framesBefore"],
        published=_seconds(value["timeStamp"]),
        frames=frames,
        phase=phase.reshape(n, h, w),
        amplitude=amplitude.reshape(n, h, w) if amplitude.size else None,
    )


# -- worker status -----------------------------------------------------------------------

REJECT_REASONS = ("shape", "dtype", "codec", "empty", "nonfinite")
"""Why a frame cannot become model input (:class:`~ptychonn_ophyd.errors.FrameRejected`);
``nonfinite``: the model input would hold NaN or infinity, so its result would be NaN."""

DROP_REASONS = ("queue_full", "stale", "error", "stopped")
"""Why a good frame was not inferred: the queue was full (``queue_full``: the newest frames
are dropped), it waited longer than ``max_wait`` (``stale``: the oldest are dropped), the
engine or the processor raised, or the worker stopped before inferring it (its engine
was not ready, or ``stop_drain`` ran out)."""


def drop_key(reason: str) -> str:
    """The ``userStats`` field counting frames dropped for ``reason``."""
    return "dropped" + reason.title().replace("_", "")


def reject_key(reason: str) -> str:
    """The ``userStats`` field counting frames rejected for ``reason``."""
    return "rejected" + reason.title()


STATS_PVA_TYPES = {
    "ready": pva.BOOLEAN,
    "received": pva.ULONG,
    "inferred": pva.ULONG,
    "batches": pva.ULONG,
    "dropped": pva.ULONG,
    **{drop_key(reason): pva.ULONG for reason in DROP_REASONS},
    "rejected": pva.ULONG,
    **{reject_key(reason): pva.ULONG for reason in REJECT_REASONS},
    "queueDepth": pva.ULONG,
    "queueCapacity": pva.ULONG,
    "inferenceRate": pva.DOUBLE,
    "latencyP50": pva.DOUBLE,
    "latencyP99": pva.DOUBLE,
    "batchSize": pva.UINT,
    "backend": pva.STRING,
    "engine": pva.STRING,
    "device": pva.STRING,
    "model": pva.STRING,
    "modelHash": pva.STRING,
    "error": pva.STRING,
    "configured": pva.ULONG,
    "configureError": pva.STRING,
    "published": pva.ULONG,
    "batchesPublished": pva.ULONG,
    "host": pva.STRING,
    "pid": pva.ULONG,
    "settings": pva.STRING,
}
"""The ``userStats`` structure on a worker's status channel."""


def _zeros(reasons: tuple[str, ...]) -> dict[str, int]:
    return dict.fromkeys(reasons, 0)


STATUS_REQUEST = "field(objectTime,userStats,processorStats,receiverStats)"
"""What a parent monitors on a worker's status channel."""


@dataclass(frozen=True)
class WorkerStatus:
    """One update of a worker's status channel, typed.

    ``missed`` is pvapy's count of frames the worker never received (uniqueId gaps);
    ``connected`` says whether it has received anything from its input channel;
    ``published_at`` is when the worker made the update (``time.time()`` on its host);
    ``host``, ``pid`` and ``settings`` (its processor args and ``input_channel``) say
    where it runs and what it does, for a session attaching to it.
    """

    ready: bool = False
    received: int = 0
    inferred: int = 0
    published: int = 0
    batches: int = 0
    dropped_by_reason: dict[str, int] = field(default_factory=lambda: _zeros(DROP_REASONS))
    rejected: dict[str, int] = field(default_factory=lambda: _zeros(REJECT_REASONS))
    queue_depth: int = 0
    rate_hz: float = 0.0
    latency_p50_s: float = 0.0
    latency_p99_s: float = 0.0
    backend: str = ""
    engine: str = ""
    device: str = ""
    model_hash: str = ""
    error: str = ""
    configured: int = 0
    configure_error: str = ""
    batches_published: int = 0
    missed: int = 0
    connected: bool = False
    published_at: float = 0.0
    model: str = ""
    host: str = ""
    pid: int = 0
    settings_json: str = ""

    @property
    def settings(self) -> dict[str, Any]:
        """The worker's published settings, parsed only when asked (the parent reads a
        status every few tens of milliseconds and needs them only to attach)."""
        return json.loads(self.settings_json or "{}")

    @property
    def dropped(self) -> int:
        return sum(self.dropped_by_reason.values())

    @classmethod
    def parse(cls, status: Mapping[str, Any] | None) -> WorkerStatus:
        """Read a status channel value (``None``, before the first update, reads as zeros)."""
        status = status or {}
        user = status.get("userStats", {})
        return cls(
            ready=bool(user.get("ready", False)),
            received=user.get("received", 0),
            inferred=user.get("inferred", 0),
            published=user.get("published", 0),
            batches=user.get("batches", 0),
            dropped_by_reason={r: user.get(drop_key(r), 0) for r in DROP_REASONS},
            rejected={r: user.get(reject_key(r), 0) for r in REJECT_REASONS},
            queue_depth=user.get("queueDepth", 0),
            rate_hz=user.get("inferenceRate", 0.0),
            latency_p50_s=user.get("latencyP50", 0.0),
            latency_p99_s=user.get("latencyP99", 0.0),
            backend=user.get("backend", ""),
            engine=user.get("engine", ""),
            device=user.get("device", ""),
            model_hash=user.get("modelHash", ""),
            error=user.get("error", ""),
            configured=user.get("configured", 0),
            configure_error=user.get("configureError", ""),
            batches_published=user.get("batchesPublished", 0),
            missed=status.get("processorStats", {}).get("nMissed", 0),
            connected=status.get("receiverStats", {}).get("nReceived", 0) > 0,
            published_at=status.get("objectTime", 0.0),
            model=user.get("model", ""),
            host=user.get("host", ""),
            pid=user.get("pid", 0),
            settings_json=user.get("settings", ""),
        )


FINAL_COUNTS = "final counts: "
"""What begins a stopped worker's last log line; its counts follow as JSON."""


@dataclass(frozen=True)
class FinalCounts:
    """Where every frame a worker received went, written once as it stops.

    A stopped worker publishes nothing more, so its parent reads these from the log
    (:func:`parse_final_counts`) to learn what the stop did to the frames still queued.
    """

    consumer_id: int
    received: int
    inferred: int
    dropped_by_reason: dict[str, int]
    rejected: dict[str, int]

    @property
    def dropped(self) -> int:
        return sum(self.dropped_by_reason.values())

    @property
    def unaccounted(self) -> int:
        """Frames received with no outcome (0 for a worker that stopped cleanly)."""
        return self.received - self.inferred - self.dropped - sum(self.rejected.values())

    def line(self) -> str:
        """The log line: :data:`FINAL_COUNTS` and the counts as JSON."""
        return FINAL_COUNTS + json.dumps(self.__dict__)


def parse_final_counts(log: str) -> FinalCounts | None:
    """The last :meth:`FinalCounts.line` in a worker's ``log``; ``None`` when it has none
    (the worker was killed, or died, before it could write it)."""
    at = log.rfind(FINAL_COUNTS)
    if at < 0:
        return None
    line = log[at + len(FINAL_COUNTS) :].split("\n", 1)[0]
    return FinalCounts(**json.loads(line))
