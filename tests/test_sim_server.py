"""The simulated areaDetector on loopback PV Access, heard by a real pvaccess monitor."""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pvaccess as pva
import pytest
from ophyd.sim import SynAxis
from pva_consumers import wait_until

from ptychonn_ophyd.cli import sim as sim_command
from ptychonn_ophyd.moments import frame_moments
from ptychonn_ophyd.physics.diffraction import PtychoSimulation
from ptychonn_ophyd.physics.objects import held_out_object
from ptychonn_ophyd.physics.probe import make_probe
from ptychonn_ophyd.physics.scan import fermat_spiral
from ptychonn_ophyd.sim.detector import SimPtychoDetector
from ptychonn_ophyd.sim.scatter import ScatteredServer
from ptychonn_ophyd.sim.server import Share, SimDetectorServer
from ptychonn_ophyd.sim.server_process import SimDetectorProcess
from ptychonn_ophyd.wire import read_attributes


class Recorder:
    """Monitor on a channel keeping uniqueId, attributes and pixel data of every update."""

    def __init__(self, channel: str) -> None:
        self.updates: list[tuple[int, dict, np.ndarray]] = []
        self.stamps: list[float] = []
        self._lock = threading.Lock()
        self.connected = threading.Event()
        self.channel = pva.Channel(channel)
        request = "record[queueSize=1000]field(uniqueId,attribute,value,dimension,dataTimeStamp)"
        self.channel.monitor(self._on_update, request)

    def _on_update(self, pv: pva.PvObject) -> None:
        self.connected.set()  # a monitor's first update is the value it connected to
        if pv["uniqueId"] == 0:  # the empty NTNDArray a server starts with
            return
        value = next(iter(pv["value"][0].values()))
        stamp = pv["dataTimeStamp"]
        with self._lock:
            self.updates.append((pv["uniqueId"], read_attributes(pv), np.array(value)))
            self.stamps.append(stamp["secondsPastEpoch"] + 1e-9 * stamp["nanoseconds"])

    def wait_for(self, n: int, timeout: float = 10.0) -> list:
        deadline = time.monotonic() + timeout
        while len(self.updates) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.updates)

    def close(self) -> None:
        self.channel.stopMonitor()


SERVER_KINDS = [
    pytest.param(SimDetectorServer, id="in-process"),
    pytest.param(SimDetectorProcess, id="own-process", marks=pytest.mark.processes),
]
"""The simulated detector sending from this process's threads, and from a child's."""


@pytest.fixture(params=SERVER_KINDS)
def server(channel_prefix, request):
    with request.param(f"{channel_prefix}:image") as srv:
        yield srv
    assert not srv.running


@pytest.fixture
def recorder(server):
    rec = Recorder(server.channel)
    assert rec.connected.wait(timeout=30), f"no monitor connection to {server.channel}"
    yield rec
    rec.close()


def test_published_frames_arrive_with_consecutive_ids_positions_and_pixels(server, recorder):
    frames = np.arange(4 * 8 * 6, dtype=np.int16).reshape(4, 8, 6)
    positions = [[0.5, -1.0], [0.6, -1.0], [0.7, -1.1], [0.8, -1.2]]
    last = server.publish(frames, positions, points=[0, 1, 2, 3])
    updates = recorder.wait_for(4)
    assert last == 4 and server.frames_sent == 4
    assert [u[0] for u in updates] == [1, 2, 3, 4]
    assert abs(recorder.stamps[0] - time.time()) < 60 and np.all(np.diff(recorder.stamps) >= 0)
    for (_, attributes, pixels), frame, (x, y), point in zip(
        updates, frames, positions, range(4), strict=True
    ):
        assert attributes["x"] == pytest.approx(x) and attributes["y"] == pytest.approx(y)
        assert attributes["point"] == point and attributes["ColorMode"] == 0
        np.testing.assert_array_equal(pixels.reshape(frame.shape), frame)


def test_free_run_reaches_its_rate_without_gaps_and_cycles_the_path(server, recorder):
    frames = np.random.default_rng(0).poisson(50, (10, 128, 128)).astype(np.int16)
    positions = np.column_stack([np.arange(10) * 0.1, np.zeros(10)])
    server.start_free_run(frames, positions, rate_hz=500, n_frames=250)
    assert server.wait_free_run(timeout=10)
    updates = recorder.wait_for(250)
    ids = [u[0] for u in updates]
    assert ids == list(range(1, 251))
    assert server.free_run_rate == pytest.approx(500, rel=0.1)
    assert [u[1]["point"] for u in updates[:12]] == [*range(10), 0, 1]
    assert updates[13][1]["x"] == pytest.approx(0.3)


def test_stop_free_run_ends_an_endless_run(server):
    server.start_free_run(np.zeros((2, 16, 16), np.uint16), [[0, 0], [1, 1]], rate_hz=200)
    assert wait_until(lambda: server.frames_sent > 10, timeout=30)
    server.stop_free_run()
    sent = server.frames_sent
    time.sleep(0.1)
    assert not server.free_running and server.frames_sent == sent > 10


@pytest.mark.parametrize(("of", "run"), [(1, 1), (2, 3), (3, 1), (4, 16)])
@pytest.mark.parametrize("offset", [0, 1, 7])
def test_the_shares_of_a_scattered_run_take_each_frame_once_in_turns_from_the_first(
    of, run, offset
):
    shares = [Share(k, of, run, offset) for k in range(of)]
    for n in (0, 1, run, 5 * of * run + 2):
        taken = sorted(s.frame(j) for s in shares for j in range(s.count(n)))
        assert taken == list(range(n))
    for share in shares:  # the detector's frame offset + k is in turn (offset + k) // run
        turns = {(offset + share.frame(j)) // run % of for j in range(share.count(50))}
        assert turns <= {share.index}


def test_a_scattered_detector_takes_turns_across_step_frames_and_runs_with_one_uniqueid_sequence(
    channel_prefix,
):
    channels = [f"{channel_prefix}:a", f"{channel_prefix}:b"]
    with ScatteredServer(channels, run=3) as detector:
        recorders = [Recorder(channel) for channel in channels]
        assert all(r.connected.wait(timeout=30) for r in recorders)
        frames = np.arange(7 * 4 * 4, dtype=np.int16).reshape(7, 4, 4)
        assert detector.publish(frames, [[0.5, 1.0]], points=range(7)) == 7
        detector.start_free_run(frames, np.zeros((7, 2)), rate_hz=400, n_frames=60)
        assert detector.wait_free_run(timeout=30)
        a, b = (r.wait_for(n) for r, n in zip(recorders, (4 + 30, 3 + 30), strict=True))
        for recorder in recorders:
            recorder.close()
    assert [u[0] for u in a[:4]] == [1, 2, 3, 7] and [u[0] for u in b[:3]] == [4, 5, 6]
    for unique_id, attributes, pixels in a[:4] + b[:3]:
        np.testing.assert_array_equal(pixels.reshape(4, 4), frames[unique_id - 1])
        assert attributes["point"] == unique_id - 1
    run_ids = sorted(u[0] for u in a[4:] + b[3:])
    assert run_ids == list(range(8, 68)) and detector.last_unique_id == 67
    assert all((u[0] - 1) // 3 % 2 == 0 for u in a)  # turns of 3 from the first frame
    assert all((u[0] - 1) // 3 % 2 == 1 for u in b)
    assert all(u[1]["point"] == (u[0] - 8) % 7 for u in a[4:] + b[3:])
    assert detector.frames_sent == 67 and not detector.running


def test_a_point_triggered_again_after_a_pause_keeps_its_number(channel_prefix):
    x, y = SynAxis(name="x"), SynAxis(name="y")
    sim = PtychoSimulation(held_out_object(size=192), make_probe(), seed=0)
    det = SimPtychoDetector(sim, x, y, channel=f"{channel_prefix}:det", name="det")
    det.stage()
    try:
        recorder = Recorder(f"{channel_prefix}:det")
        assert recorder.connected.wait(timeout=30), "no monitor connection to the detector"
        det.trigger()
        det.read()
        det.pause()  # between points: nothing to re-take
        det.resume()
        det.trigger()
        det.pause()  # mid-point: bluesky rewinds and triggers it again
        det.resume()
        det.trigger()
        reading = det.read()
        det.trigger()
        updates = recorder.wait_for(4)
        recorder.close()
    finally:
        det.unstage()
        det.close()
    assert [u[1]["point"] for u in updates] == [0, 1, 1, 2]
    assert reading["det_first_unique_id"]["value"] == reading["det_last_unique_id"]["value"] == 3


def test_detector_trigger_publishes_frames_at_the_motor_position_and_reads_their_stats(
    channel_prefix,
):
    obj = held_out_object(size=192)
    sim = PtychoSimulation(obj, make_probe(), seed=0)
    x, y = SynAxis(name="x"), SynAxis(name="y")
    det = SimPtychoDetector(
        sim, x, y, channel=f"{channel_prefix}:det", frames_per_point=3, name="det"
    )
    det.stage()
    try:
        recorder = Recorder(f"{channel_prefix}:det")
        assert recorder.connected.wait(timeout=30), "no monitor connection to the detector"
        x.set(0.2).wait()
        y.set(-0.1).wait()
        assert det.trigger().done
        reading = det.read()
        updates = recorder.wait_for(3)
        recorder.close()
    finally:
        det.unstage()
    assert det.server.running  # the channel stays up between scans, as an IOC's does
    with pytest.raises(RuntimeError, match="not staged"):
        det.trigger()
    det.close()
    assert det.server is None
    assert reading["det_first_unique_id"]["value"] == 1
    assert reading["det_last_unique_id"]["value"] == 3
    assert reading["det_frames_sent"]["value"] == 3
    assert [u[0] for u in updates] == [1, 2, 3]
    assert all(
        u[1]["x"] == pytest.approx(0.2) and u[1]["y"] == pytest.approx(-0.1) for u in updates
    )
    assert all(u[1]["point"] == 0 for u in updates)
    assert updates[0][2].size == 128 * 128
    total, centroid = frame_moments(np.stack([u[2].reshape(128, 128) for u in updates]))
    assert reading["det_stats_total"]["value"] == pytest.approx(total.mean())
    assert reading["det_stats_centroid_x"]["value"] == pytest.approx(centroid[:, 0].mean())
    assert reading["det_stats_centroid_y"]["value"] == pytest.approx(centroid[:, 1].mean())


@pytest.mark.parametrize("server_process", [False, pytest.param(True, marks=pytest.mark.processes)])
def test_detector_fly_scan_streams_the_path_and_completes(channel_prefix, server_process):
    sim = PtychoSimulation(held_out_object(size=192), make_probe(), seed=0)
    det = SimPtychoDetector(
        sim,
        SynAxis(name="x"),
        SynAxis(name="y"),
        f"{channel_prefix}:fly",
        name="det",
        server_process=server_process,
    )
    det.fly_positions_um = fermat_spiral(0.3, 0.05)
    det.fly_rate_hz = 400
    det.stage()
    try:
        det.kickoff().wait(60)
        det.complete().wait(60)
        assert det.frames_sent.get() == len(det.fly_positions_um)
    finally:
        det.unstage()
    assert det.last_unique_id.get() == len(det.fly_positions_um)
    server = det.server
    det.stage()  # a second acquisition continues the uniqueId sequence, as an IOC does
    try:
        assert det.server is server  # on the same server: its clients stay connected
        det.trigger()
        assert det.last_unique_id.get() == len(det.fly_positions_um) + 1
        assert det.frames_sent.get() == 1
    finally:
        det.destroy()
    assert det.server is None and not server.running


def sim_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    sim_command.add_parser(parser.add_subparsers())
    return parser.parse_args(["sim", *argv])


def test_sim_command_builds_large_frames_and_sends_the_requested_count(channel_prefix, capsys):
    args = sim_args(
        *("--channel", f"{channel_prefix}:cli", "--rate", "400", "--frames", "40"),
        *("--frame-size", "516", "--scan", "raster", "--radius", "0.5", "--step", "0.25"),
    )
    sim = sim_command.build_simulation(args)
    assert len(sim) == 25 and sim.frame_shape == (516, 516)
    assert sim_command.run(args) == 0
    assert "sent 40 frames" in capsys.readouterr().out


def test_sim_command_scatters_the_frames_over_channels_in_runs(channel_prefix, capsys):
    channels = f"{channel_prefix}:a,{channel_prefix}:b"
    args = sim_args("--channel", channels, "--scatter-run", "2", "--rate", "400", "--frames", "12")
    assert sim_command.run(args) == 0
    out = capsys.readouterr().out
    assert f"serving {channels} in runs of 2 at 400 Hz" in out and "sent 12 frames" in out
    assert f"{channel_prefix}:a 6, {channel_prefix}:b 6" in out


@pytest.mark.parametrize(
    ("channel", "run", "said"),
    [
        ("sim:a,", "1", "--channel 'sim:a,' has an empty channel name"),
        ("sim:a,sim:b", "0", "--scatter-run must be 1 frame or more, not 0"),
    ],
)
def test_sim_command_refuses_bad_channels_in_one_line(capsys, channel, run, said):
    assert sim_command.run(sim_args("--channel", channel, "--scatter-run", run)) == 2
    assert capsys.readouterr().err == f"error: {said}\n"


@pytest.mark.processes
def test_an_error_in_the_detector_process_is_raised_in_the_session(channel_prefix):
    with SimDetectorProcess(f"{channel_prefix}:image") as server:
        with pytest.raises(RuntimeError, match=r"ValueError: .* at least one frame"):
            server.load_path(np.zeros((0, 8, 8), np.uint16), np.zeros((0, 2)))
        with pytest.raises(RuntimeError, match="no path loaded"):
            server.start_path_run(100)
        assert server.running and not server.free_running
        process = server.process
    assert not process.is_alive()


@pytest.mark.processes
def test_the_detector_process_ends_when_its_session_does(channel_prefix, tmp_path):
    script = tmp_path / "session.py"
    script.write_text(
        "import os\n"
        "from ptychonn_ophyd.sim.server_process import SimDetectorProcess\n"
        "if __name__ == '__main__':\n"
        f"    server = SimDetectorProcess({channel_prefix + ':image'!r}).start()\n"
        "    print(server.process.pid, flush=True)\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    session = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert session.stdout.strip(), session.stderr
    child = psutil.Process(int(session.stdout.split()[0]))
    with contextlib.suppress(psutil.NoSuchProcess):
        child.wait(timeout=60)  # a zombie left to a container's init counts as ended
        assert child.status() == psutil.STATUS_ZOMBIE
