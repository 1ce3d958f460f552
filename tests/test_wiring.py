"""The inference stream reaches whatever is subscribed to the RunEngine; wrong wiring is refused."""

import contextlib

import bluesky.plans as bp
import pytest
from bluesky import RunEngine
from bluesky_tiled_plugins import TiledWriter
from bluesky_world import assert_gone, make_devices

from ptychonn_ophyd.catalog import assets_directory, open_catalog
from ptychonn_ophyd.errors import StreamWiringError
from ptychonn_ophyd.run_schema import frame_accounting
from ptychonn_ophyd.session.supplement import InferenceSupplement
from ptychonn_ophyd.session.wiring import connect

pytestmark = pytest.mark.processes


@contextlib.contextmanager
def devices(tmp_path, prefix, model):
    """A simulated detector and an inference device on it, unstaged afterwards."""
    _, _, det, inference = make_devices(tmp_path, prefix, model)
    pids = set()
    try:
        yield det, inference, pids
    finally:
        for device in (inference, det):
            with contextlib.suppress(Exception):
                device.unstage()
        assert_gone(pids)


def test_a_tiled_writer_subscribed_to_the_run_engine_gets_the_inference_stream(
    tmp_path, channel_prefix, small_phase_onnx
):
    with devices(tmp_path, channel_prefix, small_phase_onnx) as (det, inference, pids):
        client = open_catalog(tmp_path / "catalog")
        RE = RunEngine()
        RE.preprocessors.append(
            InferenceSupplement(inference, assets_dir=assets_directory(tmp_path / "catalog"))
        )
        RE.subscribe(TiledWriter(client))  # as the Bluesky documentation subscribes it
        RE.subscribe(lambda name, doc: pids.update(inference.pool.pids if inference.pool else ()))

        (uid,) = RE(bp.count([det, inference], num=3))

        run = client[uid]
        assert sorted(run["inference"]["unique_id"].read()) == [1, 2, 3]
        assert run["inference"]["phase"].read().shape == (3, 128, 128)
        assert frame_accounting(run)["stored"] == 3
        client.context.close()


def test_staging_without_a_stream_for_the_results_is_refused(
    tmp_path, channel_prefix, small_phase_onnx
):
    with devices(tmp_path, channel_prefix, small_phase_onnx) as (det, inference, _):
        RE = RunEngine()  # no InferenceSupplement: the results would be lost
        with pytest.raises(StreamWiringError, match=r"inference: no RunEngine stores its results"):
            RE(bp.count([det, inference]))
        assert inference.pool is None


def test_wiring_that_would_write_runs_twice_is_refused(tmp_path, channel_prefix, small_phase_onnx):
    with devices(tmp_path, channel_prefix, small_phase_onnx) as (_, inference, _):
        RE = RunEngine()
        client = connect(RE, inference, tmp_path / "catalog")
        with pytest.raises(StreamWiringError, match="already has a TiledWriter"):
            connect(RE, inference, tmp_path / "catalog")
        with pytest.raises(StreamWiringError, match="already has an InferenceSupplement"):
            InferenceSupplement(inference)
        client.context.close()
