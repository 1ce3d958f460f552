"""A simulated areaDetector: detector frames served as PV Access NTNDArrays.

Frames go out on one channel exactly as an areaDetector IOC's PVA plugin sends them:
``uniqueId`` rises by one per frame, ``timeStamp`` and ``dataTimeStamp`` carry the send
time, ``ColorMode`` is 0 (mono) and the scan position travels in the NTNDArray
attributes :data:`~ptychonn_ophyd.wire.POSITION_ATTRIBUTES` (``x``, ``y`` in micrometres,
``point``), as :mod:`ptychonn_ophyd.wire` describes them.

Two ways to send: :meth:`SimDetectorServer.publish` sends given frames now (step scans),
and :meth:`SimDetectorServer.start_free_run` sends pre-built frames from a background
thread at a set rate, cycling through them (fly scans, rate tests; ``load_path`` and
``start_path_run`` are its two halves).  As in pvapy's
``pvapy-ad-sim-server``, every NTNDArray is built once and only its ``uniqueId`` and time
stamps change per send, so Python keeps up with high rates.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pvaccess as pva

from ptychonn_ophyd.loopback import announce_server
from ptychonn_ophyd.wire import POSITION_ATTRIBUTES, make_ntndarray, stamp

log = logging.getLogger(__name__)


def make_frame(frame: np.ndarray, x_um: float, y_um: float, point: int) -> pva.NtNdArray:
    """One simulated frame with its position attributes (``x``, ``y``, ``point``)."""
    position = dict(zip(POSITION_ATTRIBUTES, (float(x_um), float(y_um), int(point)), strict=True))
    return make_ntndarray(frame, 0, position, DESCRIPTOR)


def encode_path(
    frames: np.ndarray, positions_um: np.ndarray | Sequence[Sequence[float]]
) -> list[pva.NtNdArray]:
    """The NTNDArrays of a path: frame ``k`` at position ``k``, ``point = k``.

    Raises
    ------
    ValueError
        The path has not one position a frame.
    """
    positions = np.asarray(positions_um, float).reshape(-1, 2)
    if len(positions) != len(frames):
        raise ValueError(f"{len(frames)} frames but {len(positions)} positions")
    return [
        make_frame(frame, x, y, point)
        for point, (frame, (x, y)) in enumerate(zip(frames, positions, strict=True))
    ]


def per_frame(
    positions_um: np.ndarray | Sequence[Sequence[float]],
    points: Sequence[int] | np.ndarray,
    n: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``(n, 2)`` positions and ``n`` point indices for ``n`` frames, from one row or
    value for all of them or one a frame."""
    positions = np.broadcast_to(np.asarray(positions_um, float).reshape(-1, 2), (n, 2))
    return positions, np.broadcast_to(np.asarray(points, int), (n,))


DESCRIPTOR = "ptychonn_ophyd simulated ptychography frame"


@dataclass(frozen=True)
class Share:
    """The frames of a run that one of ``of`` channels sends when a detector scatters
    its frames over them in runs of ``run`` frames, in turn: this channel takes the
    ``index``-th run (from 0) of every ``of``.  The turns count from the detector's
    first frame: a run that starts at its ``offset``-th frame goes on where the last
    ended."""

    index: int = 0
    of: int = 1
    run: int = 1
    offset: int = 0

    def frame(self, j: int) -> int:
        """The index in the run of this share's ``j``-th frame of it."""
        return self._position(self._taken_before + j) - self.offset

    def count(self, n: int) -> int:
        """How many of the run's first ``n`` frames are this share's."""
        return self._before(self.offset + n) - self._taken_before

    @cached_property
    def _taken_before(self) -> int:
        """This share's frames before the run (a free run asks :meth:`frame` a frame)."""
        return self._before(self.offset)

    def _position(self, j: int) -> int:
        """The detector's frame (from its first) that is this share's ``j``-th."""
        cycle, within = divmod(j, self.run)
        return (cycle * self.of + self.index) * self.run + within

    def _before(self, position: int) -> int:
        """How many of the detector's first ``position`` frames are this share's."""
        cycle, rest = divmod(position, self.of * self.run)
        return cycle * self.run + min(max(rest - self.index * self.run, 0), self.run)


WHOLE = Share()
"""Every frame: a detector on one channel."""


class SimDetectorServer:
    """A PVA server with one NTNDArray channel fed with simulated frames.

    Parameters
    ----------
    channel
        PV name, e.g. ``"sim:det:image"``.
    first_unique_id
        ``uniqueId`` of the first frame; an IOC's counter runs on across acquisitions,
        so a detector restarting its server passes its last ``uniqueId`` plus one.
    announce
        Tell this host's PV Access clients when the server starts, as an IOC's beacons
        tell a beamline's (see :meth:`start`); off only to measure what a restart costs
        without it.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, channel: str, first_unique_id: int = 1, announce: bool = True) -> None:
        self.channel = channel
        self.announce = announce
        self._server: pva.PvaServer | None = None
        self._hosted = False
        self._lock = threading.Lock()
        self._last_unique_id = first_unique_id - 1
        self._frames_sent = 0
        self._thread: threading.Thread | None = None
        self._path: list[pva.NtNdArray] = []
        self._stop_run = threading.Event()
        self.free_run_rate = 0.0
        """Frames per second the last free run actually sent (0 before one ends)."""
        self.free_run_cpu = 0.0
        """CPU seconds the last free run's sending thread used (benchmarks leave it out
        of the session's share, since a real detector sends from its own IOC)."""

    @property
    def last_unique_id(self) -> int:
        """``uniqueId`` of the most recent frame sent (0 before the first)."""
        return self._last_unique_id

    @property
    def frames_sent(self) -> int:
        """Frames sent by this server."""
        return self._frames_sent

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def free_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, host: SimDetectorServer | None = None) -> SimDetectorServer:
        """Start serving the channel (an empty NTNDArray until the first frame).

        Clients on this host that lost the channel are told at once (see
        :func:`~ptychonn_ophyd.loopback.announce_server`), so they reconnect within a
        fraction of a second, as they do when a beamline IOC restarts.

        With ``host``, a started server, the channel is served by that server, as one
        IOC serves its several plugins' channels, and goes off the air when it stops.
        """
        if self._server is None:
            server = pva.PvaServer() if host is None else host._require_server()
            server.addRecord(self.channel, pva.NtNdArray(), None)
            if host is None:
                server.start()
            self._server, self._hosted = server, host is not None
            if self.announce and host is None:
                announce_server()
            log.info("serving %s", self.channel)
        return self

    def stop(self) -> None:
        """Stop any free run and the server; the channel disappears (with a ``host``,
        when the host stops)."""
        self.stop_free_run()
        if self._server is not None:
            if not self._hosted:
                self._server.stop()
            self._server = None
            log.info("stopped %s after %d frames", self.channel, self._frames_sent)

    def __enter__(self) -> SimDetectorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def publish(
        self,
        frames: np.ndarray,
        positions_um: np.ndarray | Sequence[Sequence[float]],
        points: Sequence[int] | np.ndarray,
        unique_ids: Sequence[int] | np.ndarray | None = None,
    ) -> int:
        """Send frames now, one NTNDArray each, with consecutive ``uniqueId`` (or
        ``unique_ids``, when this channel is one of several a detector scatters over).

        Parameters
        ----------
        frames
            ``(n, H, W)`` detector frames.
        positions_um
            ``(n, 2)`` positions ``(x, y)`` in micrometres (or one row for all frames).
        points
            Scan point index of each frame.
        unique_ids
            The ``uniqueId`` of each frame (rising); default: on from the last.

        Returns
        -------
        int
            ``uniqueId`` of the last frame sent.
        """
        self._require_server()
        if self.free_running:
            raise RuntimeError("stop the free run before publishing step frames")
        n = len(frames)
        positions, points = per_frame(positions_um, points, n)
        if unique_ids is None:
            unique_ids = range(self._last_unique_id + 1, self._last_unique_id + 1 + n)
        for frame, (x, y), point, unique_id in zip(
            frames, positions, points, unique_ids, strict=True
        ):
            self._send(make_frame(frame, x, y, point), int(unique_id))
        return self._last_unique_id

    def start_free_run(
        self,
        frames: np.ndarray,
        positions_um: np.ndarray | Sequence[Sequence[float]],
        rate_hz: float,
        n_frames: int | None = None,
    ) -> None:
        """Send ``frames`` over and over at ``rate_hz`` from a background thread.

        Frame ``k`` of the run is ``frames[k % len(frames)]`` with position
        ``positions_um[k % len(frames)]`` and ``point = k % len(frames)``.  The run ends
        after ``n_frames`` frames (``None``: at :meth:`stop_free_run`).  A rate of 0 sends
        as fast as possible.  Frames due while the thread was busy are sent at once, so
        the average rate holds as long as the machine keeps up.
        """
        self.load_path(frames, positions_um)
        self.start_path_run(rate_hz, n_frames)

    def load_path(
        self, frames: np.ndarray, positions_um: np.ndarray | Sequence[Sequence[float]]
    ) -> None:
        """Make a path's NTNDArrays now, for :meth:`start_path_run`: tens of thousands of
        frames take seconds, which a fly scan spends in its ``prepare``, before its
        kickoff.

        Raises
        ------
        ValueError
            The path has no frames, or not one position a frame.
        """
        if len(frames) == 0:
            raise ValueError(f"a path for {self.channel} needs at least one frame")
        self._path = encode_path(frames, positions_um)

    def start_path_run(
        self,
        rate_hz: float,
        n_frames: int | None = None,
        share: Share = WHOLE,
        first_unique_id: int | None = None,
    ) -> None:
        """:meth:`start_free_run` along the path :meth:`load_path` took.

        Frame ``k`` of the run has ``uniqueId`` ``first_unique_id + k`` (default: on
        from the last frame sent) and is due ``k / rate_hz`` s after the start; this
        channel sends the frames of ``share`` only, so that several channels, each with
        its share, send the run together.
        """
        self._require_server()
        if self.free_running:
            raise RuntimeError("a free run is already going")
        if not self._path:
            raise RuntimeError(f"no path loaded on {self.channel}: call load_path first")
        if rate_hz < 0 or (n_frames is not None and n_frames < 0):
            raise ValueError("need rate >= 0 and n_frames >= 0")
        first = self._last_unique_id + 1 if first_unique_id is None else first_unique_id
        self._stop_run.clear()
        self._thread = threading.Thread(
            target=self._free_run,
            args=(self._path, rate_hz, n_frames, share, first),
            name="sim-free-run",
            daemon=True,
        )
        self._thread.start()

    def wait_free_run(self, timeout: float | None = None) -> bool:
        """Wait for a free run with ``n_frames`` to end; True when it has."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.free_running

    def stop_free_run(self) -> None:
        """End the free run (if any) and wait for its thread."""
        self._stop_run.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _free_run(
        self,
        cache: list[pva.NtNdArray],
        rate_hz: float,
        n_frames: int | None,
        share: Share,
        first_unique_id: int,
    ) -> None:
        """Send every frame of ``share`` that is due, then sleep until the next one is."""
        period = 1.0 / rate_hz if rate_hz > 0 else 0.0
        limit = math.inf if n_frames is None else share.count(n_frames)
        sent = 0
        start = time.perf_counter()
        while sent < limit and not self._stop_run.is_set():
            if period:
                due = min(limit, share.count(int((time.perf_counter() - start) / period) + 1))
            else:
                due = min(limit, sent + len(cache))
            while sent < due:
                k = share.frame(sent)
                self._send(cache[k % len(cache)], first_unique_id + k)
                sent += 1
            if period and sent < limit:
                next_due = start + share.frame(sent) * period
                self._stop_run.wait(max(0.0, next_due - time.perf_counter()))
        elapsed = time.perf_counter() - start
        self.free_run_rate = sent / elapsed if elapsed > 0 else 0.0
        self.free_run_cpu = time.thread_time()
        log.info("free run sent %d frames at %.0f Hz", sent, self.free_run_rate)

    def _send(self, array: pva.NtNdArray, unique_id: int) -> None:
        """Stamp ``unique_id`` and the time on ``array`` and publish it."""
        server = self._require_server()
        with self._lock:
            stamp(array, unique_id)
            server.updateUnchecked(self.channel, array)
            self._last_unique_id = unique_id
            self._frames_sent += 1

    def _require_server(self) -> pva.PvaServer:
        if self._server is None:
            raise RuntimeError(f"server for {self.channel} is not started")
        return self._server
