"""scan_with_inference end to end: sim detector, pvapy workers, callback, Tiled catalog."""

import os
import re
import signal
import threading
import warnings

import bluesky.plans as bp
import numpy as np
import pytest
from bluesky.callbacks.best_effort import BestEffortCallback
from bluesky.suspenders import SuspendBoolHigh
from bluesky.utils import RunEngineInterrupted
from bluesky_world import assert_every_frame_counted, assert_gone, beamline, validate_all
from ophyd import Signal

from ptychonn_ophyd.errors import WorkerDiedError
from ptychonn_ophyd.run_schema import (
    ACCOUNTING_STREAM,
    FRAME_STATISTICS_KEY,
    MOSAIC_STREAM,
    STREAM,
    frame_accounting,
)
from ptychonn_ophyd.session.live_view import LiveView
from ptychonn_ophyd.session.plans import scan_with_inference

pytestmark = pytest.mark.processes


@pytest.fixture
def world(tmp_path, channel_prefix, small_phase_onnx):
    """A one-worker simulated beamline (see :func:`bluesky_world.beamline`)."""
    with beamline(tmp_path, channel_prefix, small_phase_onnx) as built:
        yield built


def primary_positions(run):
    primary = run["primary"].read()
    return np.stack([primary["sx"].values, primary["sy"].values], axis=1)


@pytest.mark.parametrize("channels", [1, 2], ids=["one-channel", "scattered-over-two"])
def test_step_scan_writes_one_row_per_frame_into_the_run(
    tmp_path, channel_prefix, small_phase_onnx, channels
):
    seen_during_scan = []
    with beamline(
        tmp_path,
        channel_prefix,
        small_phase_onnx,
        n_workers=2,
        frames_per_point=2,
        channels=channels,
    ) as w:

        def look(name, doc):
            if name == "event" and doc["seq_num"] == 6 and "sx" in doc["data"]:
                run = w.catalog.values().last()
                stream = run.get("inference")
                seen_during_scan.append(0 if stream is None else len(stream["unique_id"].read()))

        w.RE.subscribe(look)
        (uid,) = w.RE(
            scan_with_inference(w.det, w.inference, w.sy, -0.2, 0.2, 3, w.sx, -0.2, 0.2, 3)
        )

        run = w.catalog[uid]
        inference = run["inference"].read()
        assert sorted(inference["unique_id"].values) == list(range(1, 19))
        assert set(inference["consumer_id"].values) == {1, 2}
        assert (inference["latency"].values > 0).all()
        assert inference["phase"].shape == (18, 128, 128)
        positions = primary_positions(run)
        rows = np.stack([inference["x"].values, inference["y"].values], axis=1)
        np.testing.assert_allclose(rows, positions[inference["point"].values])

        start, stop = run.metadata["start"], run.metadata["stop"]
        config = run["inference"].metadata["configuration"]["inference"]["data"]
        assert config["inference_model_hash"] == start["ptychonn"]["model_hash"]
        assert start["ptychonn"]["n_workers"] == 2
        assert start["ptychonn"]["model_hash"]
        assert start["object_pixel_size_um"] == pytest.approx(0.01)
        assert stop["num_events"] == {"primary": 9, "inference": 18, "inference_accounting": 1}
        assert frame_accounting(run)["produced"] == frame_accounting(run)["stored"] == 18
        assert frame_accounting(run)["not_in_time"] == 0
        validate_all(w.documents)
        assert 0 < max(seen_during_scan) < 18  # rows were readable while the scan ran


@pytest.mark.parametrize("channels", [1, 2], ids=["one-channel", "scattered-over-two"])
def test_fly_scan_rows_carry_the_path_positions(
    tmp_path, channel_prefix, small_phase_onnx, channels
):
    with beamline(tmp_path, channel_prefix, small_phase_onnx, n_workers=2, channels=channels) as w:
        w.det.fly_rate_hz = 200
        (uid,) = w.RE(
            scan_with_inference(
                w.det, w.inference, w.sy, -0.3, 0.3, 5, w.sx, -0.3, 0.3, 5, mode="fly"
            )
        )

        run = w.catalog[uid]
        inference = run["inference"].read()
        path = np.array(w.det.fly_positions_um)
        assert len(path) == 25
        assert sorted(inference["unique_id"].values) == list(range(1, 26))
        assert sorted(inference["point"].values) == list(range(25))
        rows = np.stack([inference["x"].values, inference["y"].values], axis=1)
        np.testing.assert_allclose(rows, path[inference["point"].values])
        assert run.metadata["start"]["mode"] == "fly"
        assert FRAME_STATISTICS_KEY not in run.metadata["start"]  # no point recorded any
        assert frame_accounting(run)["stored"] == 25
        assert frame_accounting(run)["missed"] == 0
        validate_all(w.documents)


def last_table_row(printed: str) -> dict[str, str]:
    """The last row of the last table BestEffortCallback printed, by column name."""
    lines = [line for line in printed.splitlines() if line.startswith("|")]
    header = next(line for line in reversed(lines) if "seq_num" in line)
    names = [cell.strip() for cell in header.strip("|").split("|")]
    values = [cell.strip() for cell in lines[-1].strip("|").split("|")]
    return dict(zip(names, values, strict=True))


def test_the_live_table_counts_frames_of_this_scan_on_both_sides(
    tmp_path, channel_prefix, small_phase_onnx, capsys
):
    with beamline(tmp_path, channel_prefix, small_phase_onnx) as w:
        bec = BestEffortCallback()
        bec.disable_plots()
        w.RE.subscribe(bec)
        w.RE(scan_with_inference(w.det, w.inference, w.sy, -0.3, 0.3, 2, w.sx, -0.3, 0.3, 2))
        w.det.fly_rate_hz = 200
        capsys.readouterr()

        w.RE(
            scan_with_inference(
                w.det, w.inference, w.sy, -0.3, 0.3, 3, w.sx, -0.3, 0.3, 3, mode="fly"
            )
        )

        row = last_table_row(capsys.readouterr().out)
        assert row["det_frames_sent"] == row["inference_inferred"] == "9"
        assert "det_last_unique_id" not in row  # 13 here: it runs on across scans
        assert w.det.last_unique_id.get() == 13


def test_best_effort_plots_draw_nothing_for_the_writer_s_streams(
    tmp_path, channel_prefix, small_phase_onnx, capsys
):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.close("all")
    live_view = LiveView(figure=False, channel=False)
    with beamline(tmp_path, channel_prefix, small_phase_onnx, live_view=live_view) as w:
        w.RE.subscribe(BestEffortCallback())  # plots on
        w.RE(scan_with_inference(w.det, w.inference, w.sy, -0.3, 0.3, 2, w.sx, -0.3, 0.3, 2))
        w.RE(bp.count([w.det, w.inference], num=3))
        figures = plt.get_fignums()
        w.det.fly_rate_hz = 200
        with warnings.catch_warnings(record=True) as warned:
            warnings.simplefilter("always")
            fly = scan_with_inference(
                w.det, w.inference, w.sy, -0.3, 0.3, 2, w.sx, -0.3, 0.3, 2, mode="fly"
            )
            w.RE(fly)
        # a fly scan's primary stream is one event: no one-point plot of it
        assert plt.get_fignums() == figures and not [str(m.message) for m in warned]

    writers = (STREAM, ACCOUNTING_STREAM, MOSAIC_STREAM)
    descriptors = [doc for name, doc in w.documents if name == "descriptor"]
    assert {doc["name"] for doc in descriptors} >= set(writers)
    written = {key for doc in descriptors if doc["name"] in writers for key in doc["data_keys"]}
    plotted = {ax.get_ylabel() for n in plt.get_fignums() for ax in plt.figure(n).axes}
    assert plt.get_fignums() and "det_frames_sent" in plotted  # the primary stream is drawn
    assert not plotted & written, plotted & written
    said = capsys.readouterr()
    assert "did not get any data" not in said.out + said.err
    plt.close("all")


def test_abort_mid_scan_leaves_no_worker_and_a_readable_run(world):
    def interrupt(name, doc):  # Ctrl-C twice, as a user would: pause now
        if name == "event" and doc["seq_num"] == 3:
            os.kill(os.getpid(), signal.SIGINT)
            threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()

    world.RE.subscribe(interrupt)
    with pytest.raises(RunEngineInterrupted):
        world.RE(
            scan_with_inference(
                world.det, world.inference, world.sx, -0.5, 0.5, world.sy, 0, 0, num=100
            )
        )
    pids = set(world.inference.pool.pids)
    world.RE.abort()

    assert world.inference.pool is None
    assert_gone(pids)
    run = world.catalog.values().last()
    stop = run.metadata["stop"]
    assert stop["exit_status"] == "abort"
    summary = frame_accounting(run)
    assert summary["stored"] >= 3
    assert summary["stored"] == summary["inferred"]
    assert_every_frame_counted(summary)
    assert len(run["inference"]["phase"].read()) == summary["stored"]


def beam_lost_at_trigger(world, n: int) -> Signal:
    """A suspender signal that goes high right after the detector's ``n``-th trigger and
    back a second later: bluesky suspends mid-point, rewinds and re-takes the point."""
    beam_lost = Signal(name="beam_lost", value=0)
    world.RE.install_suspender(SuspendBoolHigh(beam_lost, sleep=0.2))
    trigger, calls = world.det.trigger, []

    def trigger_then_lose_beam():
        status = trigger()
        calls.append(status)
        if len(calls) == n:
            beam_lost.put(1)
            threading.Timer(1.0, beam_lost.put, (0,)).start()
        return status

    world.det.trigger = trigger_then_lose_beam
    return beam_lost


@pytest.mark.parametrize(
    "plan",
    [
        lambda w: bp.scan([w.det, w.inference], w.sx, -0.3, 0.3, 6),
        lambda w: scan_with_inference(w.det, w.inference, w.sx, -0.3, 0.3, w.sy, 0, 0, num=6),
    ],
    ids=["bp.scan", "scan_with_inference"],
)
def test_a_point_retaken_after_a_suspension_keeps_its_rows_joined_to_its_event(world, plan):
    beam_lost_at_trigger(world, 4)

    (uid,) = world.RE(plan(world))

    run = world.catalog[uid]
    primary, rows = run["primary"].read(), run["inference"].read()
    first, last = primary["det_first_unique_id"].values, primary["det_last_unique_id"].values
    ids, points = rows["unique_id"].values, rows["point"].values
    assert len(primary["sx"]) == 6 and len(ids) == 7  # point 3 was taken twice
    assert (points == np.searchsorted(last, ids)).all(), (points, ids, last)
    of_its_event = (ids >= first[points]) & (ids <= last[points])
    retaken = ids[~of_its_event]
    assert retaken.tolist() == [first[3] - 1] and points[~of_its_event].tolist() == [3]
    assert rows["x"].values[points == 3].tolist() == [primary["sx"].values[3]] * 2
    summary = frame_accounting(run)
    assert summary["produced"] == summary["inferred"] == summary["stored"] == 7
    assert_every_frame_counted(summary)


def test_a_worker_that_dies_fails_the_plan_with_a_clear_error(
    tmp_path, channel_prefix, small_phase_onnx
):
    with beamline(tmp_path, channel_prefix, small_phase_onnx, n_workers=2) as w:

        def kill_worker(name, doc):
            if name == "event" and doc["seq_num"] == 2:
                os.kill(w.inference.pool.pids[0], signal.SIGKILL)

        w.RE.subscribe(kill_worker)
        with pytest.raises(Exception) as failure:
            w.RE(scan_with_inference(w.det, w.inference, w.sx, -0.5, 0.5, w.sy, 0, 0, num=40))

        causes = []
        error = failure.value
        while error is not None:
            causes.append(error)
            error = error.__cause__ or error.__context__
        died = [e for e in causes if isinstance(e, WorkerDiedError)]
        assert died, f"no WorkerDiedError in {causes!r}"
        assert "worker 1" in str(died[0])
        stop = w.catalog.values().last().metadata["stop"]
        assert stop["exit_status"] == "fail"
        reason = stop["reason"]
        assert re.match(
            r"worker 1 \(pid \d+\) died with exit status -9 \(its last status: ", reason
        )
        assert re.search(r"\d+ received, \d+ inferred, \d+ dropped, \d+ rejected", reason)
        log_lines = reason.split("its last log lines", 1)[1].splitlines()[1:]
        assert log_lines and not any(line.startswith(("{", " ")) for line in log_lines), reason
        assert "consumer 1 ready" in reason


def test_workers_kept_warm_infer_every_frame_of_a_fly_scan_right_after_a_step_scan(
    tmp_path, channel_prefix, small_phase_onnx
):
    with beamline(tmp_path, channel_prefix, small_phase_onnx, n_workers=2, keep_warm=True) as w:
        w.det.fly_rate_hz = 200
        (step,) = w.RE(scan_with_inference(w.det, w.inference, w.sx, -0.3, 0.3, num=4))
        server = w.det.server  # its channel stays up between scans, as an IOC's does
        (fly,) = w.RE(
            scan_with_inference(
                w.det, w.inference, w.sy, -0.3, 0.3, 3, w.sx, -0.3, 0.3, 3, mode="fly"
            )
        )
        assert w.det.server is server
        for uid, ids in ((step, range(1, 5)), (fly, range(5, 14))):
            run = w.catalog[uid]
            assert sorted(run["inference"]["unique_id"].read()) == list(ids)
            assert_every_frame_counted(frame_accounting(run))
