"""Replaying a run from the catalog: its inference stream stitched into one object image.

>>> from ptychonn_ophyd.analysis.replay import replay
>>> replay(-1, "~/.local/share/ptychonn-ophyd/catalog")   # the latest run
PosixPath('scan-1-4e2fcc80.png')
>>> replay(-1, probe=load_probe("probe.npy"))   # stitched again, tilts from the frames
PosixPath('scan-1-4e2fcc80.png')
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptychonn_ophyd.analysis.figure import (
    Panel,
    covered,
    relative_phase,
    replay_accuracy,
    run_title,
    save_figure,
)
from ptychonn_ophyd.analysis.mosaic import Mosaic, stitch_in_order
from ptychonn_ophyd.analysis.solved_mosaic import SolvedMosaic
from ptychonn_ophyd.analysis.stitch import StitchedImage
from ptychonn_ophyd.catalog import (
    RUNS_SPEC,
    is_catalog_of_runs,
    open_existing_catalog,
    resolve_location,
)
from ptychonn_ophyd.errors import RunLookupError
from ptychonn_ophyd.models.bundled import Stitching
from ptychonn_ophyd.preprocess import PreprocessConfig
from ptychonn_ophyd.run_schema import (
    FRAME_STATISTICS_KEY,
    INPUT_MOMENTS,
    METADATA_KEY,
    MOSAIC_STREAM,
    PIXEL_SIZE_KEY,
    STITCHING_KEY,
    STREAM,
    FrameStatisticsKeys,
    as_v3,
)
from ptychonn_ophyd.settings import from_signal_value, validated

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferenceData:
    """A run's inference stream as arrays, one row per frame, with its run documents."""

    start: dict[str, Any]
    stop: dict[str, Any]
    unique_id: np.ndarray
    x: np.ndarray
    y: np.ndarray
    phase: np.ndarray
    amplitude: np.ndarray | None
    mosaic: StoredMosaic | None = None
    statistics: FrameStatistics | None = None

    @property
    def positions_um(self) -> np.ndarray:
        """``(N, 2)`` scan positions ``(x, y)`` in micrometres."""
        return np.stack([self.x, self.y], axis=1)


@dataclass(frozen=True)
class FrameStatistics:
    """Each inferred frame's total counts ``(N,)`` and centroid ``(N, 2)`` ``(x, y)`` in
    the model input's pixels, in the inference stream's row order; NaN for a frame that
    nothing measured."""

    totals: np.ndarray
    centroids: np.ndarray


@dataclass(frozen=True)
class StoredMosaic:
    """A run's final mosaic as the live view stored it (the ``mosaic`` stream)."""

    phase: StitchedImage
    amplitude: StitchedImage | None
    window: np.ndarray
    frames: int
    stitching: str
    """How it was stitched, in words."""


def load_mosaic(run: Any) -> StoredMosaic | None:
    """The final mosaic stored with a run, or ``None`` for a run stitched without one."""
    if MOSAIC_STREAM not in run:
        return None
    stream = run[MOSAIC_STREAM]

    def last(key: str) -> Any:
        return np.asarray(stream[key].read())[-1]

    pixel = float(last("pixel_size_um"))
    center = (int(last("center_row")), int(last("center_col")))
    weight = last("weight")
    phase = StitchedImage(last("stitched_phase"), weight, center, pixel)
    amplitude = None
    if "stitched_amplitude" in stream:
        amplitude = StitchedImage(last("stitched_amplitude"), weight, center, pixel)
    stitching = str(last(STITCHING_KEY)) if STITCHING_KEY in stream else Mosaic.stitching
    return StoredMosaic(phase, amplitude, last("window"), int(last("frames")), stitching)


def input_moments(stream: Any) -> FrameStatistics | None:
    """Each row's model-input moments as its worker measured them
    (:data:`~ptychonn_ophyd.run_schema.INPUT_MOMENTS`), or ``None`` for an inference
    stream without them (a run stored before workers measured them)."""
    if not all(key in stream for key in INPUT_MOMENTS):
        return None
    total, x, y = (np.asarray(stream[key].read(), np.float64) for key in INPUT_MOMENTS)
    if not np.isfinite(total).any():
        return None
    return FrameStatistics(total, np.stack([x, y], 1))


def load_frame_statistics(run: Any, unique_ids: np.ndarray) -> FrameStatistics | None:
    """The statistics of the frames ``unique_ids`` that the run's primary stream recorded
    (where its start document names them), or ``None`` for a run that recorded none.

    Each point records its last frame's id beside the statistics of its frames (one or
    more, see :func:`_point_of_frames`); a frame no point took gets NaN.  Centroids are
    recorded in detector pixels and come back in the model input's, through the run's
    crop and bin.

    Raises
    ------
    ValueError
        The start document names the keys wrongly, or keys the primary stream lacks.
    """
    keys = FrameStatisticsKeys.from_start(run.metadata["start"])
    if keys is None or "primary" not in run:
        return None
    primary = run["primary"]
    columns = (keys.unique_id, keys.total, keys.centroid_x, keys.centroid_y)
    absent = [key for key in columns if key not in primary]
    if absent:
        raise ValueError(
            f"run {run.metadata['start']['uid']}: its primary stream lacks "
            f"{', '.join(absent)}, which its start document's {FRAME_STATISTICS_KEY!r} names"
        )
    ids = np.asarray(primary[keys.unique_id].read(), np.int64)
    recorded = np.stack([np.asarray(primary[k].read(), np.float64) for k in columns[1:]], 1)
    recorded = np.vstack([recorded, np.full((1, recorded.shape[1]), np.nan)])
    table = recorded[_point_of_frames(ids, np.asarray(unique_ids, np.int64))]
    preprocessing = _preprocessing(run.metadata["start"])
    return FrameStatistics(table[:, 0], preprocessing.pattern_position(table[:, 1:]))


def _point_of_frames(last_ids: np.ndarray, unique_ids: np.ndarray) -> np.ndarray:
    """The index of the point that took each frame, ``len(last_ids)`` for none.

    Points record the id of their last frame.  While those ids increase, a point took
    every frame after the previous point's last, up to its own: a point of several
    frames pairs with all of them.  Where they do not (a detector that restarted its
    count mid-scan), only a frame whose id a point recorded pairs with it.
    """
    if (np.diff(last_ids) > 0).all():
        return np.searchsorted(last_ids, unique_ids)  # the first point whose last id >= id
    index = {int(uid): row for row, uid in enumerate(last_ids)}
    return np.array([index.get(int(uid), len(last_ids)) for uid in unique_ids], np.int64)


def _preprocessing(start: Mapping[str, Any]) -> PreprocessConfig:
    """How the run's workers cropped and binned its frames (its pool facts' ``preprocess``)."""
    recorded = from_signal_value(start.get(METADATA_KEY, {}).get("preprocess", ""))
    return validated(PreprocessConfig, recorded) if recorded else PreprocessConfig()


def load_inference(run: Any) -> InferenceData:
    """Read the ``inference`` stream of a run (a Tiled ``BlueskyRun`` client node), with
    its stored mosaic and its frames' statistics where it has them: each row's own
    (:func:`input_moments`), else the points' (:func:`load_frame_statistics`; statistics
    it names wrongly are logged and left out: the run still replays as the live view
    drew it)."""
    run = as_v3(run)
    uid = run.metadata["start"]["uid"]
    if STREAM not in run:
        raise KeyError(f"run {uid} has no {STREAM!r} stream")
    stream = run[STREAM]
    if "unique_id" not in stream:
        raise KeyError(f"run {uid} stored no rows in its {STREAM!r} stream (see its accounting)")
    unique_id = stream["unique_id"].read()
    statistics = input_moments(stream)
    if statistics is None:
        try:
            statistics = load_frame_statistics(run, unique_id)
        except ValueError as err:
            log.warning("%s; its patches keep their own tilts", err)
    return InferenceData(
        start=dict(run.metadata["start"]),
        stop=dict(run.metadata.get("stop") or {}),
        unique_id=unique_id,
        x=stream["x"].read(),
        y=stream["y"].read(),
        phase=stream["phase"].read(),
        amplitude=stream["amplitude"].read() if "amplitude" in stream else None,
        mosaic=load_mosaic(run),
        statistics=statistics,
    )


def stitch_run(
    data: InferenceData, pixel_size_um: float | None = None, window: np.ndarray | None = None
) -> tuple[StitchedImage, StitchedImage | None]:
    """Phase (and amplitude) patches stitched in the stream's row order.

    Each phase patch gets the constant offset that makes it agree with the patches
    before it (:class:`~ptychonn_ophyd.analysis.mosaic.Mosaic`, the live view's
    stitcher): no frame tells its patch's absolute phase, and unaligned guesses blotch
    the image.

    ``pixel_size_um`` defaults to the start document's ``object_pixel_size_um``; frames
    without a position are left out (and logged). ``window`` weighs each patch's pixels,
    e.g. ``ptychonn_ophyd.physics.probe.probe_weight(probe)`` to trust where the beam was;
    it defaults to the window the live view stored with the run (flat without one).
    """
    pixel_size_um = _pixel_size(data, pixel_size_um)
    if window is None and data.mosaic is not None:
        window = data.mosaic.window
    _log_unplaced(data)
    return stitch_in_order(data.phase, data.positions_um, pixel_size_um, window, data.amplitude)


def stitch_with_frame_tilts(
    data: InferenceData,
    probe: np.ndarray,
    pixel_size_um: float | None = None,
    window: np.ndarray | None = None,
) -> StitchedImage:
    """The phase patches, each given the tilt its frame's centre of mass says, stitched
    with the offsets that make all of them agree best: a
    :class:`~ptychonn_ophyd.analysis.solved_mosaic.SolvedMosaic` of the stream's rows,
    the live view's computation with a probe, so that it gives the stored image again.

    ``probe`` is the complex probe the frames were taken with, of the patches' side;
    the centroids must be in the network's pattern pixels (true of an unbinned,
    uncropped detector).  ``pixel_size_um`` is as for :func:`stitch_run`; ``window``
    defaults to the stored mosaic's, else the probe's intensity
    (:func:`~ptychonn_ophyd.physics.probe.probe_weight`).  Frames without a position
    are left out (and logged).

    Raises
    ------
    ValueError
        The run recorded no frame statistics, or the probe does not fit the patches.
    """
    uid = data.start["uid"]
    if data.statistics is None:
        raise ValueError(
            f"run {uid} has no frame statistics: its inference stream has no "
            f"{INPUT_MOMENTS[0]} (stored before workers measured their input) and its start "
            f"document names none under {FRAME_STATISTICS_KEY!r} (or names them wrongly), so "
            "its patches cannot take their frames' tilts"
        )
    if probe.shape != data.phase.shape[1:]:
        raise ValueError(f"probe {probe.shape} does not fit patches {data.phase.shape[1:]}")
    pixel_size_um = _pixel_size(data, pixel_size_um)
    _log_unplaced(data)
    if window is None and data.mosaic is not None:
        window = data.mosaic.window
    mosaic = SolvedMosaic(pixel_size_um, probe, window)
    moments = data.statistics.totals, data.statistics.centroids
    mosaic.add(data.phase, data.positions_um, moments=moments)
    return mosaic.phase()


def _log_unplaced(data: InferenceData) -> None:
    """Say how many frames carry no position (stitching leaves them out)."""
    placed = np.isfinite(data.x) & np.isfinite(data.y)
    if not placed.all():
        log.warning(
            "%d of %d frames carry no position and are left out", int((~placed).sum()), len(placed)
        )


def _pixel_size(data: InferenceData, pixel_size_um: float | None) -> float:
    """``pixel_size_um``, else the run's recorded object pixel size."""
    pixel_size_um = pixel_size_um or data.start.get(PIXEL_SIZE_KEY)
    if not pixel_size_um:
        raise ValueError(
            f"run {data.start['uid']} has no {PIXEL_SIZE_KEY} in its start document; "
            "give the object pixel size"
        )
    return float(pixel_size_um)


def save_png(
    path: str | Path,
    data: InferenceData,
    phase: StitchedImage,
    amplitude: StitchedImage | None = None,
    positions: bool = False,
    stitching: str = Mosaic.stitching,
) -> Path:
    """Draw the run's stitched phase (and amplitude) with its uid, model, how it was
    ``stitching`` (a stitcher's words) and the accuracy its recipe records for that,
    and its scan positions if ``positions``; returns the path."""
    region = covered(phase.weight)
    panels = [Panel("phase", relative_phase(phase.image, region), "phase")]
    if amplitude is not None:
        panels.append(Panel("amplitude", amplitude.image, "amplitude"))
    recipe: Stitching = "tilt" if stitching == SolvedMosaic.stitching else "aligned"
    notes = "\n".join(n for n in (stitching, replay_accuracy(data.start, recipe)) if n)
    title = run_title(data.start, len(data.phase), notes)
    return save_figure(path, panels, phase, title, data.positions_um if positions else None)


def replay(
    run_id: str | int,
    catalog: Any = None,
    output: str | Path | None = None,
    pixel_size_um: float | None = None,
    window: np.ndarray | None = None,
    positions: bool = False,
    probe: np.ndarray | None = None,
) -> Path:
    """Load run ``run_id`` (uid, partial uid, scan id, or -1 for the latest), take the
    mosaic stored with it (or stitch its phase patches again), and save a PNG.

    Parameters
    ----------
    catalog
        A catalog client node, or a folder / Tiled URI of an existing catalog for
        :func:`~ptychonn_ophyd.catalog.open_existing_catalog` (``None``: the
        default catalog).
    output
        PNG path (default ``scan-<scan_id>-<uid8>.png`` in the current folder).
    pixel_size_um, window
        As for :func:`stitch_run`; either one stitches again instead of taking the
        stored mosaic.
    positions
        Mark the scan positions on the picture.
    probe
        The complex probe the frames were taken with: the phase is stitched again with
        each patch's tilt taken from its frame (:func:`stitch_with_frame_tilts`, as the
        live view does with a probe), which needs a run that recorded its frames'
        statistics.
    """
    where = _describe_catalog(catalog)
    if catalog is None or isinstance(catalog, str | Path):
        catalog = open_existing_catalog(catalog)
    data = load_inference(find_run(catalog, run_id, where))
    name = f"scan-{data.start.get('scan_id', 0)}-{data.start['uid'][:8]}"
    path = output or f"{name}.png"
    stored = data.mosaic is not None and pixel_size_um is None and window is None
    if probe is not None:
        phase = stitch_with_frame_tilts(data, probe, pixel_size_um, window)
        amplitude = data.mosaic.amplitude if stored else stitch_run(data, pixel_size_um, window)[1]
        return save_png(path, data, phase, amplitude, positions, SolvedMosaic.stitching)
    if stored:
        mosaic = data.mosaic
        return save_png(path, data, mosaic.phase, mosaic.amplitude, positions, mosaic.stitching)
    phase, amplitude = stitch_run(data, pixel_size_um, window)
    return save_png(path, data, phase, amplitude, positions)


def find_run(catalog: Any, run_id: str | int, where: str | None = None) -> Any:
    """The run ``run_id`` names in ``catalog`` (uid, partial uid, scan id, or -1).

    A string of digits names a scan id where a run has that scan id, and a partial uid
    otherwise (about one uid in 43 begins with eight decimal digits).  A scan id that several
    runs share (a RunEngine without persistent metadata starts again at 1) names them
    and picks none: the latest of them, Tiled's choice, is often not the run meant.

    Raises
    ------
    RunLookupError
        No run matches, or the scan id is ambiguous; the message names ``where``
        (default: the catalog's URI).
    """
    where = where or _describe_catalog(catalog)
    numbered = isinstance(run_id, int) or run_id.lstrip("-").isdigit()
    if numbered and not is_catalog_of_runs(catalog):
        raise RunLookupError(
            f"{run_id} names no run in {where}: it is not a catalog of Bluesky runs (no "
            f"{RUNS_SPEC['name']} spec at its root, see examples/tiled-server.yml), so "
            "only a uid finds a run there"
        )
    if isinstance(run_id, str) and run_id.lstrip("-").isdigit():
        number = int(run_id)
        run_id = number if number < 0 or _with_scan_id(catalog, number) else run_id
    if isinstance(run_id, int) and run_id > 0:
        shared = _with_scan_id(catalog, run_id)
        if len(shared) > 1:
            raise RunLookupError(
                f"scan id {run_id} is ambiguous in the catalog {where}: {len(shared)} runs "
                f"have it ({', '.join(shared)}); give a uid"
            )
    try:
        return as_v3(catalog[run_id])
    except (KeyError, IndexError):
        raise RunLookupError(f"no run {run_id!r} in the catalog {where}") from None


def _with_scan_id(catalog: Any, scan_id: int) -> list[str]:
    """The uids of the runs of ``catalog`` with scan id ``scan_id``."""
    from tiled.queries import Eq

    return list(catalog.search(Eq("start.scan_id", scan_id)).keys())


def _describe_catalog(catalog: Any) -> str:
    """Where ``catalog`` (a location, ``None`` or a client node) is, for messages."""
    if catalog is None or isinstance(catalog, str | Path):
        return str(resolve_location(catalog))
    return str(getattr(catalog, "uri", catalog))
