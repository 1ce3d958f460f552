"""The simulated areaDetector in a process of its own, as a detector's IOC is.

A :class:`~ptychonn_ophyd.sim.server.SimDetectorServer` sending from the Bluesky
session's process costs that process its PV Access server threads: at 20 kHz they were
28 of the 45 µs a frame measured for the session, and they held the simulated detector
to 11,000 frames a second.  :class:`SimDetectorProcess` runs the same server in a child
process and offers the same methods, so a benchmark of the session measures the session.

The methods are calls over a pipe, answered one at a time; the counters a fly scan reads
while it runs (``last_unique_id``, ``frames_sent``, whether the free run ended) are
shared memory the child writes with every frame, read without a call.  The child ends
with :meth:`SimDetectorProcess.stop`, and by itself when the session's end of the pipe
closes, so it is never orphaned.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from ptychonn_ophyd.sim.server import WHOLE, Share, SimDetectorServer

START_TIMEOUT = 60.0
"""Seconds the child may take to import pvaccess and serve its channel (a loaded
2-core machine takes several)."""
CALL_TIMEOUT = 600.0
"""Seconds a call may take: loading a long path encodes tens of thousands of frames."""
POLL = 0.005
"""Seconds between looks at the shared counters while waiting for a free run's end."""

_LAST_ID, _SENT, _RUNS_ENDED = range(3)
"""Slots of the shared counters."""
VERBS = frozenset({"publish", "load_path", "start_path_run", "stop_free_run", "free_run_figures"})
"""The server's methods the child answers."""


class _SharingServer(SimDetectorServer):
    """The child's server: writes its counters to shared memory with every frame."""

    def __init__(self, channel: str, first_unique_id: int, announce: bool, shared) -> None:
        super().__init__(channel, first_unique_id, announce)
        self._shared = shared

    def _send(self, array, unique_id: int) -> None:
        super()._send(array, unique_id)
        self._shared[_LAST_ID] = self.last_unique_id
        self._shared[_SENT] = self.frames_sent

    def _free_run(self, *args: Any) -> None:
        try:
            super()._free_run(*args)
        finally:
            self._shared[_RUNS_ENDED] += 1

    def free_run_figures(self) -> tuple[float, float]:
        return self.free_run_rate, self.free_run_cpu


def _serve(connection: Connection, channel: str, first_unique_id: int, announce: bool, shared):
    """The child: serve ``channel`` and answer calls until told to stop or orphaned."""
    server = _SharingServer(channel, first_unique_id, announce, shared)
    try:
        server.start()
        connection.send(("ok", None))
        while True:
            try:
                verb, args = connection.recv()
            except EOFError:  # the session's process ended
                return
            if verb == "stop":
                server.stop()
                connection.send(("ok", None))
                return
            try:
                reply = ("ok", getattr(server, verb)(*args))
            except Exception as error:  # sent back and raised in the session
                reply = ("error", f"{type(error).__name__}: {error}")
            connection.send(reply)
    finally:
        server.stop()


class SimDetectorProcess:
    """:class:`~ptychonn_ophyd.sim.server.SimDetectorServer` served from a child process.

    Parameters
    ----------
    channel, first_unique_id, announce
        As for :class:`~ptychonn_ophyd.sim.server.SimDetectorServer`.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.  An error in the
    child is raised here as a ``RuntimeError`` carrying its type and message.
    """

    def __init__(self, channel: str, first_unique_id: int = 1, announce: bool = True) -> None:
        self.channel = channel
        self.announce = announce
        self._first_unique_id = first_unique_id
        self._context = mp.get_context("spawn")  # the session runs PV Access threads
        self._shared = self._context.RawArray("q", 3)
        self._shared[_LAST_ID] = first_unique_id - 1
        self._connection: Connection | None = None
        self.process: mp.process.BaseProcess | None = None
        """The child, while it serves."""
        self._lock = threading.Lock()
        self._runs_started = 0

    @property
    def last_unique_id(self) -> int:
        return int(self._shared[_LAST_ID])

    @property
    def frames_sent(self) -> int:
        return int(self._shared[_SENT])

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.is_alive()

    @property
    def free_running(self) -> bool:
        return self._shared[_RUNS_ENDED] < self._runs_started

    @property
    def free_run_rate(self) -> float:
        """Frames per second the last free run sent (0 before one ends)."""
        return self._call("free_run_figures")[0]

    @property
    def free_run_cpu(self) -> float:
        """CPU seconds the last free run's sending thread used, in the child."""
        return self._call("free_run_figures")[1]

    def start(self) -> SimDetectorProcess:
        """Start the child and wait until it serves the channel."""
        if self.process is None:
            ours, theirs = self._context.Pipe()
            args = (theirs, self.channel, self._first_unique_id, self.announce, self._shared)
            name = f"sim-detector {self.channel}"
            self.process = self._context.Process(target=_serve, args=args, name=name, daemon=True)
            self.process.start()
            theirs.close()
            self._connection = ours
            self._answer("serve its channel", START_TIMEOUT)
        return self

    def stop(self) -> None:
        """Stop the free run, the server and the child."""
        if self.process is None:
            return
        with contextlib.suppress(RuntimeError):  # it ended already, and said so before
            self._call("stop", timeout=START_TIMEOUT)
        self.process.join(START_TIMEOUT)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self._connection.close()
        self.process = self._connection = None

    def __enter__(self) -> SimDetectorProcess:
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
        """Send frames now (as ``SimDetectorServer.publish``); returns the last
        ``uniqueId``."""
        ids = None if unique_ids is None else np.asarray(unique_ids)
        return self._call("publish", np.asarray(frames), positions_um, np.asarray(points), ids)

    def start_free_run(
        self,
        frames: np.ndarray,
        positions_um: np.ndarray | Sequence[Sequence[float]],
        rate_hz: float,
        n_frames: int | None = None,
    ) -> None:
        """Send ``frames`` over and over at ``rate_hz`` from the child (as
        ``SimDetectorServer.start_free_run``)."""
        self.load_path(frames, positions_um)
        self.start_path_run(rate_hz, n_frames)

    def load_path(
        self, frames: np.ndarray, positions_um: np.ndarray | Sequence[Sequence[float]]
    ) -> None:
        """Hand a path's frames to the child, which makes their NTNDArrays."""
        self._call("load_path", np.asarray(frames), np.asarray(positions_um, float))

    def start_path_run(
        self,
        rate_hz: float,
        n_frames: int | None = None,
        share: Share = WHOLE,
        first_unique_id: int | None = None,
    ) -> None:
        """Start a free run along the loaded path in the child (as
        ``SimDetectorServer.start_path_run``)."""
        self._call("start_path_run", rate_hz, n_frames, share, first_unique_id)
        self._runs_started += 1

    def wait_free_run(self, timeout: float | None = None) -> bool:
        """Wait for a free run with ``n_frames`` to end; True when it has."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.free_running and self.running:
            if deadline is not None and time.monotonic() >= deadline:
                break
            time.sleep(POLL)
        return not self.free_running

    def stop_free_run(self) -> None:
        """End the free run (if any)."""
        if self.running:
            self._call("stop_free_run")

    def _call(self, verb: str, *args: Any, timeout: float = CALL_TIMEOUT) -> Any:
        if verb not in VERBS | {"stop"}:
            raise ValueError(f"the simulated detector process does not answer {verb!r}")
        if self._connection is None:
            raise RuntimeError(f"the simulated detector process for {self.channel} is not started")
        with self._lock:
            try:
                self._connection.send((verb, args))
            except (BrokenPipeError, OSError) as error:
                raise self._ended() from error
            return self._answer(verb, timeout)

    def _answer(self, what: str, timeout: float) -> Any:
        """The child's reply to the last call (raised here if it is an error)."""
        try:
            if not self._connection.poll(timeout):
                raise RuntimeError(
                    f"the simulated detector process for {self.channel} did not {what} "
                    f"within {timeout:.0f} s"
                )
            status, value = self._connection.recv()
        except EOFError as error:
            raise self._ended() from error
        if status == "error":
            raise RuntimeError(f"simulated detector {self.channel}: {value}")
        return value

    def _ended(self) -> RuntimeError:
        code = self.process.exitcode if self.process is not None else None
        return RuntimeError(
            f"the simulated detector process for {self.channel} ended (exit code {code})"
        )
