"""Replaying a run from the catalog: its inference stream stitched into one object image.

>>> from ptychonn_ophyd.analysis.replay import replay
>>> replay(-1, "~/.local/share/ptychonn-ophyd/catalog")   # the latest run
PosixPath('scan-1-4e2fcc80.png')
"""

from __future__ import annotations

import logging
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
from ptychonn_ophyd.analysis.mosaic import stitch_in_order
from ptychonn_ophyd.analysis.stitch import StitchedImage
from ptychonn_ophyd.errors import RunLookupError
from ptychonn_ophyd.session.catalog import open_existing_catalog, resolve_location
from ptychonn_ophyd.session.live_view import MOSAIC_STREAM
from ptychonn_ophyd.session.plans import PIXEL_SIZE_KEY
from ptychonn_ophyd.session.stream import STREAM

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

    @property
    def positions_um(self) -> np.ndarray:
        """``(N, 2)`` scan positions ``(x, y)`` in micrometres."""
        return np.stack([self.x, self.y], axis=1)


@dataclass(frozen=True)
class StoredMosaic:
    """A run's final mosaic as the live view stored it (the ``mosaic`` stream)."""

    phase: StitchedImage
    amplitude: StitchedImage | None
    window: np.ndarray
    frames: int


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
    return StoredMosaic(phase, amplitude, last("window"), int(last("frames")))


def load_inference(run: Any) -> InferenceData:
    """Read the ``inference`` stream of a run (a Tiled ``BlueskyRun`` client node)."""
    if STREAM not in run:
        raise KeyError(f"run {run.metadata['start']['uid']} has no {STREAM!r} stream")
    stream = run[STREAM]
    return InferenceData(
        start=dict(run.metadata["start"]),
        stop=dict(run.metadata.get("stop") or {}),
        unique_id=stream["unique_id"].read(),
        x=stream["x"].read(),
        y=stream["y"].read(),
        phase=stream["phase"].read(),
        amplitude=stream["amplitude"].read() if "amplitude" in stream else None,
        mosaic=load_mosaic(run),
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
    pixel_size_um = pixel_size_um or data.start.get(PIXEL_SIZE_KEY)
    if not pixel_size_um:
        raise ValueError(
            f"run {data.start['uid']} has no {PIXEL_SIZE_KEY} in its start document; "
            "give the object pixel size"
        )
    if window is None and data.mosaic is not None:
        window = data.mosaic.window
    placed = np.isfinite(data.x) & np.isfinite(data.y)
    if not placed.all():
        log.warning(
            "%d of %d frames carry no position and are left out", int((~placed).sum()), len(placed)
        )
    return stitch_in_order(data.phase, data.positions_um, pixel_size_um, window, data.amplitude)


def save_png(
    path: str | Path,
    data: InferenceData,
    phase: StitchedImage,
    amplitude: StitchedImage | None = None,
    positions: bool = False,
) -> Path:
    """Draw the run's stitched phase (and amplitude) with its uid, model and recorded
    accuracy in the title, and its scan positions if ``positions``; returns the path."""
    region = covered(phase.weight)
    panels = [Panel("phase", relative_phase(phase.image, region), "phase")]
    if amplitude is not None:
        panels.append(Panel("amplitude", amplitude.image, "amplitude"))
    title = run_title(data.start, len(data.phase), replay_accuracy(data.start))
    return save_figure(path, panels, phase, title, data.positions_um if positions else None)


def replay(
    run_id: str | int,
    catalog: Any = None,
    output: str | Path | None = None,
    pixel_size_um: float | None = None,
    window: np.ndarray | None = None,
    positions: bool = False,
) -> Path:
    """Load run ``run_id`` (uid, partial uid, scan id, or -1 for the latest), take the
    mosaic stored with it (or stitch its phase patches), and save a PNG.

    Parameters
    ----------
    catalog
        A catalog client node, or a folder / Tiled URI of an existing catalog for
        :func:`~ptychonn_ophyd.session.catalog.open_existing_catalog` (``None``: the
        default catalog).
    output
        PNG path (default ``scan-<scan_id>-<uid8>.png`` in the current folder).
    pixel_size_um, window
        As for :func:`stitch_run`; either one stitches again instead of taking the
        stored mosaic.
    positions
        Mark the scan positions on the picture.
    """
    where = _describe_catalog(catalog)
    if catalog is None or isinstance(catalog, str | Path):
        catalog = open_existing_catalog(catalog)
    data = load_inference(find_run(catalog, run_id, where))
    if data.mosaic is not None and pixel_size_um is None and window is None:
        phase, amplitude = data.mosaic.phase, data.mosaic.amplitude
    else:
        phase, amplitude = stitch_run(data, pixel_size_um, window)
    name = f"scan-{data.start.get('scan_id', 0)}-{data.start['uid'][:8]}"
    return save_png(output or f"{name}.png", data, phase, amplitude, positions)


def find_run(catalog: Any, run_id: str | int, where: str | None = None) -> Any:
    """The run ``run_id`` names in ``catalog`` (uid, partial uid, scan id, or -1).

    A scan id that several runs share (a RunEngine without persistent metadata starts
    again at 1) names them and picks none: the latest of them, Tiled's choice, is
    often not the run meant.

    Raises
    ------
    RunLookupError
        No run matches, or the scan id is ambiguous; the message names ``where``
        (default: the catalog's URI).
    """
    where = where or _describe_catalog(catalog)
    if isinstance(run_id, int) and run_id > 0:
        from tiled.queries import Eq

        shared = list(catalog.search(Eq("start.scan_id", run_id)).keys())
        if len(shared) > 1:
            raise RunLookupError(
                f"scan id {run_id} is ambiguous in the catalog {where}: {len(shared)} runs "
                f"have it ({', '.join(shared)}); give a uid"
            )
    try:
        return catalog[run_id]
    except (KeyError, IndexError):
        raise RunLookupError(f"no run {run_id!r} in the catalog {where}") from None


def _describe_catalog(catalog: Any) -> str:
    """Where ``catalog`` (a location, ``None`` or a client node) is, for messages."""
    if catalog is None or isinstance(catalog, str | Path):
        return str(resolve_location(catalog))
    return str(getattr(catalog, "uri", catalog))
