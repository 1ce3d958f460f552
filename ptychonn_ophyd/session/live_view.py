"""The live view of a scan: its results stitched as they arrive, shown, and stored.

The run hands the rows it keeps to :meth:`LiveView.take`, batch by batch in row order,
from the pvapy thread that received them; that only queues them.  A background thread
adds the queued rows to the run's mosaic (every frame is used) and, at most every
``update_period`` seconds, solves it, publishes a snapshot on the PVA channel
``<prefix>:mosaic`` and keeps it for the figure.  Frames come before pictures: between
the solver's steps the thread adds the rows that arrived meanwhile, and solving takes
at most :data:`SOLVING_SHARE` of its time, so pictures become rarer as a scan grows
while the queue stays short.  At the end of the run
:meth:`LiveView.finish` adds what is still queued and solves once more; the supplement
stores the final image, its weights and the window in the one-row stream ``mosaic``,
so replay and a Tiled client read it without stitching again.

With the probe the frames were taken with, the mosaic is a
:class:`~ptychonn_ophyd.analysis.solved_mosaic.SolvedMosaic`: each patch gets the tilt
its frame's centre of mass says, and the offsets are solved over everything that has
arrived, so the picture converges to the one replay stitches from the catalog.
Without a probe it is a :class:`~ptychonn_ophyd.analysis.mosaic.Mosaic`, each patch
matched to the ones before it, and the view says so once.

>>> live = LiveView(probe="probe.npy")            # figure where there is a display
>>> live = LiveView(probe=det.probe)              # the simulated detector's own
>>> catalog = connect(RE, inference, live_view=live)
>>> live.settings.enabled = False                 # the next runs are not stitched
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from bluesky.protocols import Hints
from threadpoolctl import threadpool_limits

from ptychonn_ophyd.analysis.mosaic import Mosaic, Stitcher, check_window
from ptychonn_ophyd.analysis.solved_mosaic import SolvedMosaic
from ptychonn_ophyd.analysis.stitch import StitchedImage
from ptychonn_ophyd.physics.probe import check_probe, load_probe, probe_weight
from ptychonn_ophyd.run_schema import INPUT_MOMENTS, NOT_PLOTTED, STITCHING_KEY, Rows
from ptychonn_ophyd.session.mosaic_channel import MosaicChannel
from ptychonn_ophyd.settings import LiveViewSettings, validated

log = logging.getLogger(__name__)

BATCH = 512
"""Most rows the stitching thread takes from the queue at once."""
SOLVING_SHARE = 0.25
"""Most of the stitching thread's time that solving the picture may take: as a scan
grows and a solve takes longer, the picture is updated less often than
``update_period``, so that adding the arriving patches keeps up."""
_END = None
"""Queued after the last result of a run."""


@dataclass(frozen=True)
class Snapshot:
    """The mosaic at one moment: phase (and amplitude) so far, patches in it, the
    window they were stitched with and how (in words)."""

    uid: str
    phase: StitchedImage
    amplitude: StitchedImage | None
    frames: int
    window: np.ndarray
    stitching: str


class _Run:
    """One run's mosaic, queue and stitching thread."""

    def __init__(self, uid: str, mosaic: Stitcher, channel: str | None) -> None:
        self.uid = uid
        self.mosaic = mosaic
        self.channel = channel
        self.rows: queue.SimpleQueue[Rows | None] = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.ending = False
        """Whether the run's end has been taken from the queue."""
        self.adding = 0.0
        """Seconds the stitching thread has spent adding rows."""


class LiveView:
    """Stitches each run's inference results as they arrive; shows and stores the mosaic.

    Parameters
    ----------
    window
        ``(h, w)`` trust of each patch pixel; default the probe's intensity
        (:func:`~ptychonn_ophyd.physics.probe.probe_weight`), flat without a probe.
        It is stored with each run (the ``mosaic`` stream's ``window``) for replay.
    probe
        The complex probe ``(p, p)`` the frames are taken with, or the path of a
        ``numpy.save`` file holding it: each patch then gets its frame's tilt and the
        offsets are solved over the scan.  ``None``: stitched patch by patch.
    **settings
        Fields of :class:`~ptychonn_ophyd.settings.LiveViewSettings` (``figure``,
        ``channel``, ``store``, ``update_period``, ``final_solve``, ``enabled``).

    Raises
    ------
    ValueError
        The probe cannot be read, is not a square complex array, or the window is bad.
    """

    def __init__(
        self,
        window: np.ndarray | None = None,
        *,
        probe: np.ndarray | str | Path | None = None,
        **settings: Any,
    ) -> None:
        if isinstance(probe, str | Path):
            probe = load_probe(probe)
        self.probe = None if probe is None else check_probe(probe)
        self.window = None if window is None else check_window(window)
        self.settings: LiveViewSettings = validated(LiveViewSettings, settings)
        self._told_no_probe = False
        self.latest: Snapshot | None = None
        self._run: _Run | None = None
        self._channel: MosaicChannel | None = None

    @property
    def figure_wanted(self) -> bool:
        """Whether to draw a figure: ``figure=True``, or ``"auto"`` with a display."""
        if self.settings.figure == "auto":
            import matplotlib

            return matplotlib.get_backend().lower() not in NON_INTERACTIVE
        return bool(self.settings.figure)

    # -- a run -------------------------------------------------------------------------

    def begin(
        self, uid: str, pixel_size_um: float | None, patch_shape: tuple[int, int], amplitude: bool
    ) -> bool:
        """Start the mosaic of run ``uid``; returns whether it is stitched.

        A run is not stitched when the view is disabled or the run's start document
        has no object pixel size.
        """
        self.finish()
        if not self.settings.enabled:
            return False
        if not pixel_size_um:
            log.info("run %s has no object pixel size: no live mosaic", uid)
            return False
        run = _Run(uid, self._mosaic(pixel_size_um, tuple(patch_shape), amplitude), None)
        self.latest = None
        self._run = run
        run.thread = threading.Thread(target=self._stitch, args=(run,), name="live-mosaic")
        run.thread.daemon = True
        run.thread.start()
        return True

    def _mosaic(
        self, pixel_size_um: float, patch_shape: tuple[int, int], amplitude: bool
    ) -> Stitcher:
        """The run's stitcher: solved with the probe where one fits the patches, its
        window the given one, else the probe's intensity, else flat.

        Raises
        ------
        ValueError
            The given window does not fit the patches.
        """
        window = None if self.window is None else check_window(self.window, patch_shape)
        if self.probe is not None and self.probe.shape == patch_shape:
            window = probe_weight(self.probe) if window is None else window
            return SolvedMosaic(pixel_size_um, self.probe, window, amplitude=amplitude)
        if self.probe is not None:
            log.warning(
                "the live view's probe %s does not fit the run's patches %s: each patch "
                "keeps the network's tilt",
                self.probe.shape,
                tuple(patch_shape),
            )
        elif not self._told_no_probe:
            self._told_no_probe = True
            log.warning(
                "the live view has no probe: each patch keeps the network's tilt and is "
                "matched to the ones before it (LiveView(probe=...) gives the frames' tilts)"
            )
        return Mosaic(pixel_size_um, window, patch_shape=patch_shape, amplitude=amplitude)

    def publish_on(self, prefix: str) -> None:
        """Publish the mosaics on ``<prefix>:mosaic`` (when ``channel`` is on)."""
        if not self.settings.channel:
            return
        if self._channel is None:
            self._channel = MosaicChannel()
        self._channel.serve(prefix)

    def take(self, rows: Rows) -> None:
        """Queue rows of the run (called in a pvapy thread, in row order)."""
        run = self._run
        if run is not None:
            run.rows.put(rows)

    @property
    def backlog(self) -> int:
        """Row batches of the current run queued but not stitched yet."""
        run = self._run
        return run.rows.qsize() if run is not None else 0

    def finish(self) -> Snapshot | None:
        """Stitch what is still queued, publish the final mosaic and return it."""
        run, self._run = self._run, None
        if run is None:
            return None
        run.rows.put(_END)
        run.thread.join()
        if run.error is not None:
            log.error("the live mosaic of run %s failed: %s", run.uid, run.error)
            return None
        return self.latest

    def close(self) -> None:
        """End the current run's mosaic and stop serving the channel."""
        self.finish()
        if self._channel is not None:
            self._channel.stop()
            self._channel = None

    # -- the stitching thread ----------------------------------------------------------

    def _final(self, run: _Run) -> StitchedImage:
        """The run's final image, its solve bounded by the ``final_solve`` setting."""
        seconds = self.settings.final_solve
        if not isinstance(run.mosaic, SolvedMosaic):
            return run.mosaic.phase()
        phase = run.mosaic.phase(seconds)
        if not run.mosaic.solved:
            log.warning(
                "run %s: the final mosaic's offsets were not fully solved in %g s "
                "(final_solve); it is stored as it stands, and replay --probe solves them",
                run.uid,
                seconds,
            )
        return phase

    def _stitch(self, run: _Run) -> None:
        period = self.settings.update_period
        shown_at, shown_frames = time.monotonic(), -1
        try:
            while not run.ending:
                _take_queued(run, max(shown_at + period - time.monotonic(), 0))
                now = time.monotonic()
                if not run.ending and now - shown_at >= period:
                    if run.mosaic.frames != shown_frames:
                        adding = run.adding
                        shown_frames = self._show(run, final=False)
                        solving = time.monotonic() - now - (run.adding - adding)
                        period = max(self.settings.update_period, solving / SOLVING_SHARE)
                    shown_at = now  # with nothing new, block for the next period
            self._show(run, final=True)  # the end may have come during a preview
        except Exception as error:  # the scan goes on; the run has no mosaic
            run.error = error
            log.exception("stitching the live mosaic of run %s failed", run.uid)

    def _show(self, run: _Run, final: bool) -> int:
        """Solve and publish the picture; returns how many patches it shows.  A preview
        adds the rows that arrive while it solves, between its steps."""
        mosaic = run.mosaic
        frames = mosaic.frames
        catch_up = functools.partial(_catch_up, run)
        with threadpool_limits(1, user_api="blas"):  # one core, not the BLAS threads' spin
            phase = self._final(run) if final else mosaic.preview(between=catch_up)
        snapshot = Snapshot(
            run.uid, phase, mosaic.amplitude(), frames, mosaic.window, mosaic.stitching
        )
        self.latest = snapshot
        if self._channel is not None and snapshot.frames:
            self._channel.publish(snapshot.uid, snapshot.phase, snapshot.frames)
        return frames


NON_INTERACTIVE = {"agg", "pdf", "ps", "svg", "pgf", "cairo", "template"}
"""Matplotlib backends that draw no window."""


def _drain(rows: queue.SimpleQueue[Rows | None], wait: float) -> tuple[list[Rows], bool]:
    """Queued rows up to about :data:`BATCH` (waiting up to ``wait`` s for the first),
    and whether the run's end came."""
    batch: list[Rows] = []
    count = 0
    try:
        item = rows.get(timeout=wait) if wait > 0 else rows.get_nowait()
        while True:
            if item is _END:
                return batch, True
            batch.append(item)
            count += len(item["phase"])
            if count >= BATCH:
                return batch, False
            item = rows.get_nowait()
    except queue.Empty:
        return batch, False


def _take_queued(run: _Run, wait: float) -> None:
    """Add the queued rows (waiting up to ``wait`` s for the first) to the run's
    mosaic, counting the time it takes; note the run's end when it comes."""
    batch, ending = _drain(run.rows, wait)
    run.ending = run.ending or ending
    if batch:
        start = time.monotonic()
        _add(run.mosaic, batch)
        run.adding += time.monotonic() - start


def _catch_up(run: _Run) -> None:
    """Add every row queued, without waiting: frames come before pictures."""
    while not run.ending and not run.rows.empty():
        _take_queued(run, 0)


def _add(mosaic: Stitcher, batch: list[Rows]) -> None:
    """Add the queued batches of rows in one call: their positions and moments joined,
    their images passed as the batches they came in (joining them would copy each
    image once more, 16 µs a 128x128 frame on the 2-core machine)."""
    positions = np.stack([_joined(batch, "x"), _joined(batch, "y")], axis=1)
    amplitude = None
    if mosaic.has_amplitude and all("amplitude" in rows for rows in batch):
        amplitude = [rows["amplitude"] for rows in batch]
    mosaic.add([rows["phase"] for rows in batch], positions, amplitude, _moments(batch))


def _moments(batch: list[Rows]) -> tuple[np.ndarray, np.ndarray] | None:
    """The frames' totals and centroids over the batches; NaN for rows without them,
    ``None`` where no row has them."""
    if not any(INPUT_MOMENTS[0] in rows for rows in batch):
        return None
    total, x, y = (_joined(batch, key) for key in INPUT_MOMENTS)
    return total, np.stack([x, y], axis=1)


def _joined(batch: list[Rows], key: str) -> np.ndarray:
    """Column ``key`` over the batches, NaN for rows without it."""
    return np.concatenate(
        [
            np.asarray(rows[key], np.float64)
            if key in rows
            else np.full(len(rows["phase"]), np.nan)
            for rows in batch
        ]
    )


class MosaicReading:
    """The final mosaic of a run as a ``Readable``, read into :data:`MOSAIC_STREAM`.

    ``stitched_phase`` (and ``stitched_amplitude``) with ``weight`` are the stitched
    images (NaN where no patch landed), ``window`` the patch trust they were stitched
    with, ``center_row``/``center_col`` the pixel scan position ``(0, 0)`` lights.  The
    images are not called ``phase``/``amplitude``: bluesky-tiled-plugins' ``TiledWriter``
    remembers which keys are external per run, not per stream, and would take them for
    the inference stream's external columns.
    """

    hints: Hints = NOT_PLOTTED
    """Nothing for BestEffortCallback to plot (:data:`.run_schema.NOT_PLOTTED`)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.parent = None
        self._values: dict[str, Any] = {}
        self._time = 0.0

    def set(self, snapshot: Snapshot) -> None:
        phase = snapshot.phase
        self._values = {
            "stitched_phase": phase.image,
            "weight": phase.weight,
            **({"stitched_amplitude": snapshot.amplitude.image} if snapshot.amplitude else {}),
            "window": snapshot.window,
            "center_row": phase.center[0],
            "center_col": phase.center[1],
            "pixel_size_um": phase.pixel_size_um,
            "frames": snapshot.frames,
            STITCHING_KEY: snapshot.stitching,
        }
        self._time = time.time()

    def read(self) -> dict[str, dict[str, Any]]:
        return {k: {"value": v, "timestamp": self._time} for k, v in self._values.items()}

    def describe(self) -> dict[str, dict[str, Any]]:
        return {k: _data_key(self.name, v) for k, v in self._values.items()}


def _data_key(name: str, value: Any) -> dict[str, Any]:
    source = f"ptychonn:{name}"
    if isinstance(value, np.ndarray):
        return {
            "source": source,
            "dtype": "array",
            "dtype_numpy": value.dtype.str,
            "shape": list(value.shape),
        }
    if isinstance(value, str):
        return {"source": source, "dtype": "string", "shape": []}
    kind = "integer" if isinstance(value, int) else "number"
    return {"source": source, "dtype": kind, "shape": []}
