"""The results store in a process of its own (``store_process=True``): the session takes
each batch without its images, the store process writes the rows its runs keep."""

import os
import signal
import threading

import numpy as np
import pytest
from bluesky_world import assert_every_frame_counted, beamline, until, validate_all

from ptychonn_ophyd.errors import ResultStoreError
from ptychonn_ophyd.run_schema import MOSAIC_STREAM, frame_accounting
from ptychonn_ophyd.session.live_view import LiveView
from ptychonn_ophyd.session.plans import scan_with_inference
from ptychonn_ophyd.session.store_link import StoreLink

pytestmark = pytest.mark.processes


def fly(w, side: int):
    return scan_with_inference(
        w.det, w.inference, w.sy, -0.3, 0.3, side, w.sx, -0.3, 0.3, side, mode="fly"
    )


def test_a_fly_scan_stores_every_frame_through_the_store_process(
    tmp_path, channel_prefix, small_phase_onnx
):
    with beamline(tmp_path, channel_prefix, small_phase_onnx, n_workers=2, store_process=True) as w:
        w.det.fly_rate_hz = 500
        (uid,) = w.RE(fly(w, 12))

        run = w.catalog[uid]
        inference = run["inference"].read()
        path = np.array(w.det.fly_positions_um)
        assert sorted(inference["unique_id"].values) == list(range(1, 145))
        rows = np.stack([inference["x"].values, inference["y"].values], axis=1)
        np.testing.assert_allclose(rows, path[inference["point"].values])
        assert inference["phase"].shape == (144, 128, 128)
        assert np.isfinite(inference["phase"].values).all()
        summary = frame_accounting(run)
        assert summary["stored"] == summary["produced"] == 144
        assert_every_frame_counted(summary)
        validate_all(w.documents)
        assert len(w.pids) == 3  # two workers and the store process, all gone afterwards


def test_a_live_view_gets_the_images_the_store_process_relays(
    tmp_path, channel_prefix, small_phase_onnx
):
    live_view = LiveView(figure=False, channel=False)
    with beamline(
        tmp_path, channel_prefix, small_phase_onnx, store_process=True, live_view=live_view
    ) as w:
        w.det.fly_rate_hz = 300
        (uid,) = w.RE(fly(w, 6))

        run = w.catalog[uid]
        assert frame_accounting(run)["stored"] == 36
        mosaic = run[MOSAIC_STREAM].read()
        assert int(mosaic["frames"].values[0]) == 36
        assert np.isfinite(mosaic["stitched_phase"].values).any()


def test_a_store_process_that_dies_fails_the_scan_naming_it(
    tmp_path, channel_prefix, small_phase_onnx
):
    with beamline(tmp_path, channel_prefix, small_phase_onnx, store_process=True) as w:
        w.det.fly_rate_hz = 100

        def kill_the_store():
            until(lambda: w.inference.inferred_count >= 20, "20 frames inferred")
            os.kill(w.inference.store_pid, signal.SIGKILL)

        killer = threading.Thread(target=kill_the_store)
        killer.start()
        with pytest.raises(ResultStoreError, match=r"results store process ended \(exit code -9\)"):
            w.RE(fly(w, 20))
        killer.join()

        run = w.catalog.values().last()
        stop = run.metadata["stop"]
        assert stop["exit_status"] == "fail"
        assert "results store process ended" in stop["reason"]
        summary = frame_accounting(run)
        assert summary["stored"] >= 0 and "ResultStoreError" in summary["write_error"]


def test_a_store_process_that_cannot_reach_the_batch_channels_says_which(channel_prefix):
    link = StoreLink([f"{channel_prefix}:nobody:1:batch"], lambda batch: None)
    with pytest.raises(ResultStoreError, match=r"did not start: TimeoutError: no connection to "):
        link.start()
    assert link.pid is None  # stopped, not left running
