"""A simulated detector that scatters its frames over several channels.

One PV Access channel serves its monitors from the thread that updates it: on the GPU
host one channel with eight monitors (eight workers) sent at most 20,000 frames a second
(BENCHMARKS.md).  A beamline past that rate does what areaDetector offers:
``NDPluginScatter`` hands the frames in turn to several ``NDPluginPva`` plugins, each
with its own channel and its own group of workers.  :class:`ScatteredServer` does the
same, its channels served by one server as one IOC serves them (or each by a process of
its own with ``process=True``, so that they send in parallel), and offers the methods
of one :class:`~ptychonn_ophyd.sim.server.SimDetectorServer`: ``uniqueId`` still rises
by one per frame over the detector, and each channel sends its runs of ``run`` frames
(:class:`~ptychonn_ophyd.sim.server.Share`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from ptychonn_ophyd.sim.server import Share, SimDetectorServer, per_frame
from ptychonn_ophyd.sim.server_process import SimDetectorProcess


class ScatteredServer:
    """Frames in runs of ``run`` over ``channels`` in turn.

    Parameters
    ----------
    channels
        PV names, in the order the runs go to them.
    run
        Frames a channel sends before the next one takes over.  The workers of a pool
        on these channels count the frames they miss right when ``run`` is the pool's
        :attr:`~ptychonn_ophyd.settings.PoolConfig.scatter_run`.
    first_unique_id, announce
        As for :class:`~ptychonn_ophyd.sim.server.SimDetectorServer`.
    process
        Serve each channel from a process of its own
        (:class:`~ptychonn_ophyd.sim.server_process.SimDetectorProcess`), so that the
        channels send in parallel.
    """

    def __init__(
        self,
        channels: Sequence[str],
        run: int,
        first_unique_id: int = 1,
        announce: bool = True,
        process: bool = False,
    ) -> None:
        if len(channels) < 2 or run < 1:
            raise ValueError(
                f"scattering takes two channels or more and a run of 1 frame or more, not "
                f"{list(channels)} and {run}"
            )
        kind = SimDetectorProcess if process else SimDetectorServer
        self.servers = [kind(channel, first_unique_id, announce) for channel in channels]
        self.run = run
        self.channel = ",".join(channels)
        """The channels as a pool's ``input_channel`` names them."""
        self._first_unique_id = first_unique_id
        self._process = process

    @property
    def last_unique_id(self) -> int:
        """``uniqueId`` of the most recent frame sent on any channel."""
        return max(server.last_unique_id for server in self.servers)

    @property
    def frames_sent(self) -> int:
        return sum(server.frames_sent for server in self.servers)

    @property
    def running(self) -> bool:
        return all(server.running for server in self.servers)

    @property
    def free_running(self) -> bool:
        return any(server.free_running for server in self.servers)

    @property
    def free_run_rate(self) -> float:
        """Frames per second the channels sent together in the last free run."""
        return sum(server.free_run_rate for server in self.servers)

    @property
    def free_run_cpu(self) -> float:
        """CPU seconds the channels' sending threads used in the last free run."""
        return sum(server.free_run_cpu for server in self.servers)

    def start(self) -> ScatteredServer:
        """Serve every channel.

        Served from this process, the channels share the first channel's server, as one
        IOC serves its plugins' channels: every ``PvaServer`` of a process serves one
        record database, so with a server each a client could reach a channel through
        another channel's server, and on that server's stop reconnect and take the
        channel's last frame again.
        """
        first, *others = self.servers
        try:
            first.start()
            for server in others:
                if self._process:
                    server.start()
                else:
                    server.start(host=first)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every channel; served from this process, all go off the air at once."""
        for server in reversed(self.servers):
            server.stop()

    def __enter__(self) -> ScatteredServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def publish(
        self,
        frames: np.ndarray,
        positions_um: np.ndarray | Sequence[Sequence[float]],
        points: Sequence[int] | np.ndarray,
    ) -> int:
        """Send frames now, each on the channel whose turn it is; returns the last
        ``uniqueId``."""
        n = len(frames)
        positions, points = per_frame(positions_um, points, n)
        first = self._next_unique_id()
        for server, share in zip(self.servers, self._shares(first), strict=True):
            mine = np.array([share.frame(j) for j in range(share.count(n))], int)
            if len(mine):
                server.publish(frames[mine], positions[mine], points[mine], first + mine)
        return first + n - 1

    def start_free_run(
        self,
        frames: np.ndarray,
        positions_um: np.ndarray | Sequence[Sequence[float]],
        rate_hz: float,
        n_frames: int | None = None,
    ) -> None:
        """Send ``frames`` over and over at ``rate_hz`` in all, scattered."""
        self.load_path(frames, positions_um)
        self.start_path_run(rate_hz, n_frames)

    def load_path(
        self, frames: np.ndarray, positions_um: np.ndarray | Sequence[Sequence[float]]
    ) -> None:
        """Give every channel the whole path (a run that cycles it sends frame ``k`` of
        it on whichever channel's turn ``k`` falls)."""
        for server in self.servers:
            server.load_path(frames, positions_um)

    def start_path_run(self, rate_hz: float, n_frames: int | None = None) -> None:
        """Start the channels' shares of one run along the loaded path, ``rate_hz`` in
        all."""
        first = self._next_unique_id()
        started = []
        try:
            for server, share in zip(self.servers, self._shares(first), strict=True):
                server.start_path_run(rate_hz, n_frames, share, first)
                started.append(server)
        except BaseException:
            for server in started:
                server.stop_free_run()
            raise

    def wait_free_run(self, timeout: float | None = None) -> bool:
        """Wait for every channel's share of a run with ``n_frames`` to end; True when
        they all have."""
        deadline = None if timeout is None else time.monotonic() + timeout
        return all(
            server.wait_free_run(None if deadline is None else deadline - time.monotonic())
            for server in self.servers
        )

    def stop_free_run(self) -> None:
        for server in self.servers:
            server.stop_free_run()

    def _next_unique_id(self) -> int:
        return self.last_unique_id + 1

    def _shares(self, unique_id: int) -> list[Share]:
        """Each channel's share of frames from ``unique_id`` on: the turns go on from
        the detector's first frame, across step frames and runs alike."""
        offset = unique_id - self._first_unique_id
        k = len(self.servers)
        return [Share(index, k, self.run, offset) for index in range(k)]


Server = SimDetectorServer | SimDetectorProcess | ScatteredServer
"""What serves the detector's frames: the same methods, from here, from a process of
its own, or scattered over several channels."""


def make_server(
    channels: Sequence[str], run: int, first_unique_id: int = 1, process: bool = False
) -> Server:
    """The server of ``channels``: one channel's, or one scattering the frames over
    several in runs of ``run``; with ``process``, each channel sends from a process of
    its own."""
    if len(channels) > 1:
        return ScatteredServer(channels, run, first_unique_id, process=process)
    kind = SimDetectorProcess if process else SimDetectorServer
    return kind(channels[0], first_unique_id)
