"""An ophyd detector that simulates ptychography frames and serves them over PVA.

``SimPtychoDetector`` stands in for an areaDetector with a PVA plugin.  The first staging
starts its :class:`~ptychonn_ophyd.sim.server.SimDetectorServer`; each ``trigger()``
reads the two motors it was given, simulates ``frames_per_point`` diffraction frames at
that position and publishes them with the position as NTNDArray attributes.  For fly
scans, ``start_free_run`` (or ``kickoff``/``complete``) streams a whole path at a fixed
frame rate.  Unstaging ends acquisition but, as an IOC's PVA channel does, the channel
stays up, so workers kept warm between scans stay connected; ``close()`` (or
``destroy()``) stops the server.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
from ophyd import Component as Cpt
from ophyd import Device, Signal, Staged
from ophyd.signal import SignalRO
from ophyd.status import StatusBase

from ptychonn_ophyd.moments import frame_moments
from ptychonn_ophyd.physics.diffraction import PtychoSimulation
from ptychonn_ophyd.settings import channel_names
from ptychonn_ophyd.sim.scatter import Server, make_server

DEFAULT_CHANNEL = "sim:det:image"


class _ServerCounter(SignalRO):
    """A read-only signal that reports one counter of the parent's server, less the
    counter's value at the last staging when ``per_staging``."""

    def __init__(self, *args, counter: str, per_staging: bool = False, **kwargs) -> None:
        super().__init__(*args, value=0, **kwargs)
        self._counter = counter
        self._per_staging = per_staging
        self._baseline = 0

    def rebase(self) -> None:
        """Count from here (at staging)."""
        server = self.parent.server
        self._baseline = getattr(server, self._counter) if server is not None else 0
        self._readback = 0

    def get(self, **kwargs) -> int:
        server = self.parent.server
        if server is not None:
            value = getattr(server, self._counter)
            self._readback = value - self._baseline if self._per_staging else value
        return self._readback


class FrameStats(Device):
    """What an areaDetector statistics plugin reports of the last point's frames: their
    total counts and centroid (column ``x``, row ``y``, in detector pixels), averaged
    over the point's frames.  A step scan records them with every point; they give each
    patch's tilt (:mod:`ptychonn_ophyd.analysis.tilt`)."""

    total = Cpt(Signal, value=0.0, kind="normal")
    centroid_x = Cpt(Signal, value=float("nan"), kind="normal")
    centroid_y = Cpt(Signal, value=float("nan"), kind="normal")

    def record(self, frames: np.ndarray) -> None:
        """Set the statistics of ``frames`` ``(n, h, w)``."""
        total, centroid = frame_moments(frames)
        self.total.put(float(total.mean()))
        self.centroid_x.put(float(centroid[:, 0].mean()))
        self.centroid_y.put(float(centroid[:, 1].mean()))


class SimPtychoDetector(Device):
    """Simulated ptychography detector publishing NTNDArrays on ``channel``.

    Parameters
    ----------
    simulation
        Source of frames; its object, probe and detector settings are used and its
        own scan positions are ignored (frames come at the motors' positions).
    x_motor, y_motor
        Positioners in micrometres (e.g. ``ophyd.sim.SynAxis``).
    channel
        PV name of the image channel, or several separated by commas: the frames are
        then scattered over them in runs of ``scatter_run``, as areaDetector's
        ``NDPluginScatter`` feeds several PVA plugins
        (:class:`~ptychonn_ophyd.sim.scatter.ScatteredServer`).
    frames_per_point
        Frames published per ``trigger()``.
    server_process
        Serve the frames from a process of its own, as a detector's IOC does, instead of
        from threads of this one (:mod:`~ptychonn_ophyd.sim.server_process`): a benchmark
        of the session then leaves the sending out.  Each of several channels gets one.
    scatter_run
        Frames each of several channels sends in turn: a pool's
        :attr:`~ptychonn_ophyd.settings.PoolConfig.scatter_run`.

    Components
    ----------
    last_unique_id, frames_sent
        ``uniqueId`` of the last frame (it keeps counting across stagings, as an IOC's
        array counter does) and frames sent since the last staging; live during a free
        run and read by ``read()``, so an inference device can wait for them. ``frames_sent``
        is the hinted one: a live table shows it beside the inference device's
        ``inferred``, both counted in this scan, so the two compare.
    first_unique_id
        ``uniqueId`` of the first frame of the last ``trigger()``: an event's frames are
        ``first_unique_id`` to ``last_unique_id``.
    stats
        :class:`FrameStats` of each ``trigger()``'s frames (not of a free run's).
    channel, frames_per_point
        Configuration signals.
    """

    last_unique_id = Cpt(_ServerCounter, counter="last_unique_id", kind="normal")
    first_unique_id = Cpt(Signal, value=0, kind="normal")
    frames_sent = Cpt(_ServerCounter, counter="frames_sent", per_staging=True, kind="hinted")
    stats = Cpt(FrameStats, kind="normal")
    channel = Cpt(Signal, value=DEFAULT_CHANNEL, kind="config")
    frames_per_point = Cpt(Signal, value=1, kind="config")

    def __init__(
        self,
        simulation: PtychoSimulation,
        x_motor,
        y_motor,
        channel: str = DEFAULT_CHANNEL,
        frames_per_point: int = 1,
        *,
        name: str,
        server_process: bool = False,
        scatter_run: int = 1,
        **kwargs,
    ) -> None:
        super().__init__(name=name, **kwargs)
        if frames_per_point < 1:
            raise ValueError(f"frames_per_point must be at least 1, got {frames_per_point}")
        self.simulation = simulation
        self.probe = simulation.probe
        """The complex probe its frames are taken with, for the live view's stitching."""
        self.x_motor = x_motor
        self.y_motor = y_motor
        self.channel.put(channel)
        self.frames_per_point.put(frames_per_point)
        self.server_process = server_process
        self.scatter_run = scatter_run
        self.server: Server | None = None
        """The PVA server: started at the first staging, up until :meth:`close`."""
        self.fly_positions_um: np.ndarray | None = None
        self.fly_rate_hz = 100.0
        self.fly_passes = 1
        """Times a fly scan's path is flown (a long run at a high rate need not simulate
        every frame: the frames of a pass repeat)."""
        self._loaded_path: object = None
        """The path the server has loaded (:meth:`prepare` loads the scan's)."""
        self._point = 0
        self._unread = False
        """Whether the last ``trigger()``'s frames were not read yet (a pause then makes
        the next trigger re-take its point)."""

    def stage(self) -> list[object]:
        """Serve the channel (from the first staging on; again if ``channel`` changed);
        ``frames_sent`` and the scan point index count from 0, ``uniqueId`` runs on."""
        staged = super().stage()
        names = channel_names(self.channel.get())
        channel = ",".join(names)
        if self.server is not None and (not self.server.running or self.server.channel != channel):
            self.close()
        if self.server is None:
            first_id = int(self.last_unique_id.get()) + 1
            server = make_server(names, self.scatter_run, first_id, self.server_process)
            self.server = server.start()
            self._loaded_path = None
        self.frames_sent.rebase()
        self._point = 0
        self._unread = False
        return staged

    def unstage(self) -> list[object]:
        """Stop any free run; the channel stays up, as an IOC's does between scans."""
        self.stop_free_run()
        return super().unstage()

    def close(self) -> None:
        """Stop any free run and the PVA server: the channel disappears."""
        if self.server is not None:
            self.server.stop()
            self.last_unique_id.get(), self.frames_sent.get()  # keep the final counts
            self.server = None

    def destroy(self) -> None:
        self.unstage()
        self.close()
        super().destroy()

    def trigger(self) -> StatusBase:
        """Publish ``frames_per_point`` frames at the motors' position, numbered with the
        scan point they will be read as; returns done."""
        server = self._require_server()
        position = [[float(self.x_motor.position), float(self.y_motor.position)]]
        n = int(self.frames_per_point.get())
        frames = self.simulation.frames_at(position * n)
        self.stats.record(frames)
        self.first_unique_id.put(int(self.last_unique_id.get()) + 1)
        server.publish(frames, position, [self._point] * n)
        self._point += 1
        self._unread = True
        return _finished()

    def read(self) -> dict:
        self._unread = False
        return super().read()

    def pause(self) -> None:
        """The RunEngine pauses or suspends: if the last point was triggered but not read,
        bluesky rewinds and triggers it again, so the re-taken frames get its number
        (the interrupted ones keep it too; they lie before the event's
        ``first_unique_id``)."""
        if self._unread:
            self._point -= 1
            self._unread = False
        super().pause()

    def start_free_run(
        self,
        positions_um: np.ndarray | Sequence[Sequence[float]],
        rate_hz: float,
        repeats: int = 1,
    ) -> int:
        """Stream one frame per position at ``rate_hz``, ``repeats`` times over the path.

        Frames are simulated first (point ``k`` is position ``k``), then sent by a
        background thread.  Returns the number of frames the run will send.
        """
        server = self._require_server()
        positions = np.asarray(positions_um, dtype=np.float64).reshape(-1, 2)
        frames = self.simulation.frames_at(positions)
        n_frames = len(frames) * repeats
        server.start_free_run(frames, positions, rate_hz, n_frames)
        return n_frames

    def stop_free_run(self) -> None:
        """End a free run early."""
        if self.server is not None:
            self.server.stop_free_run()

    def prepare(self, points: list[dict]) -> StatusBase:
        """Take a fly path: the scan's points, ``{motor: position}`` each, and simulate
        its frames now and load them on the server, so that :meth:`kickoff` starts
        sending at once.

        The frames' positions are the ``x_motor`` and ``y_motor`` values of each point;
        a motor the scan does not move stays where it is.
        """
        axes = (self.x_motor, self.y_motor)
        self.fly_positions_um = [tuple(float(p.get(m, m.position)) for m in axes) for p in points]
        self._load(self._require_server(), self.fly_positions_um)
        return _finished()

    def kickoff(self) -> StatusBase:
        """Start a free run along ``fly_positions_um`` at ``fly_rate_hz``, ``fly_passes``
        times over."""
        if self.fly_positions_um is None:
            raise RuntimeError("set fly_positions_um (and fly_rate_hz) before kickoff")
        positions, server = self.fly_positions_um, self._require_server()
        if self._loaded_path is not positions:  # set by hand since prepare
            self._load(server, positions)
        server.start_path_run(self.fly_rate_hz, len(positions) * self.fly_passes)
        self._loaded_path = None
        return _finished()

    def _load(self, server: Server, positions) -> None:
        """Simulate the frames of ``positions`` and load them on ``server``."""
        server.load_path(self.simulation.frames_at(positions), positions)
        self._loaded_path = positions

    def complete(self) -> StatusBase:
        """A status that finishes when the free run has sent all its frames."""
        server = self._require_server()
        status = StatusBase()

        def wait() -> None:
            server.wait_free_run()
            status.set_finished()

        threading.Thread(target=wait, name=f"{self.name}-complete", daemon=True).start()
        return status

    def _require_server(self) -> Server:
        if self.server is None or self._staged != Staged.yes:
            raise RuntimeError(f"{self.name} is not staged")
        return self.server


def _finished() -> StatusBase:
    status = StatusBase()
    status.set_finished()
    return status
