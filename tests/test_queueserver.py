"""The IPython profile as bluesky-queueserver runs it: a Redis server and RE Manager with
``--startup-dir`` set to the profile's startup folder, driven through the queueserver API
as a beamline's GUI or ``qserver`` would."""

import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import free_port, port_open, user_environment
from pva_consumers import wait_until

from ptychonn_ophyd.catalog import open_existing_catalog
from ptychonn_ophyd.run_schema import frame_accounting

pytestmark = pytest.mark.processes

api = pytest.importorskip("bluesky_queueserver_api.zmq", reason="bluesky-queueserver-api")
from bluesky_queueserver_api import BPlan  # noqa: E402

STARTUP = Path(__file__).resolve().parents[1] / "profiles" / "profile_ptychonn" / "startup"


@pytest.fixture
def redis_address() -> Iterator[str]:
    """A Redis server of this test's own on loopback (RE Manager keeps its queue there)."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    port = free_port()
    redis = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        assert wait_until(lambda: port_open(port), 30)
        yield f"127.0.0.1:{port}"
    finally:
        redis.terminate()
        redis.wait(30)


@pytest.fixture
def manager(tmp_path, redis_address, channel_prefix, small_phase_onnx):
    """RE Manager on the profile's startup folder (a copy: queueserver writes its list of
    plans and devices there), for a user with an empty home; yields its API."""
    startup = tmp_path / "startup"
    shutil.copytree(STARTUP, startup)
    control, info = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    env = user_environment()
    env.update(
        HOME=str(tmp_path / "home"),
        PTYCHONN_MODEL=str(small_phase_onnx),
        PTYCHONN_SIM_CHANNEL=f"{channel_prefix}:image",
    )
    command = [
        str(Path(sys.executable).with_name("start-re-manager")),
        *("--startup-dir", str(startup), "--redis-addr", redis_address),
        *("--zmq-control-addr", control, "--zmq-info-addr", info, "--zmq-publish-console", "ON"),
    ]
    log = (tmp_path / "re-manager.log").open("w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    client = api.REManagerAPI(zmq_control_addr=control, zmq_info_addr=info, timeout_recv=10)
    try:
        assert wait_until(lambda: _answers(client), 60), _tail(tmp_path / "re-manager.log")
        yield client, tmp_path / "home"
    finally:
        client.close()
        process.send_signal(signal.SIGINT)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _answers(client) -> bool:
    try:
        client.status()
    except Exception:
        return False
    return True


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text().splitlines()[-lines:])


def test_re_manager_opens_the_profile_then_queues_and_runs_step_fly_and_count(manager, tmp_path):
    client, home = manager
    client.environment_open()
    client.wait_for_idle(timeout=240)
    status = client.status()
    assert status["worker_environment_exists"], _tail(tmp_path / "re-manager.log")

    allowed = client.plans_allowed()["plans_allowed"]
    assert {"scan_with_inference", "count", "scan", "grid_scan", "list_scan"} <= set(allowed)
    grid = ("det", "inference", "sy", -0.2, 0.2, 2, "sx", -0.2, 0.2, 2)
    client.item_add(BPlan("scan_with_inference", *grid))
    client.item_add(BPlan("scan_with_inference", *grid, mode="fly"))
    client.item_add(BPlan("count", ["det", "inference"], num=3))
    client.queue_start()
    client.wait_for_idle(timeout=300)
    history = client.history_get()["items"]
    results = [item["result"]["exit_status"] for item in history]
    assert results == ["completed"] * 3, (history[0]["result"], _tail(tmp_path / "re-manager.log"))

    client.environment_close()
    client.wait_for_idle(timeout=120)
    assert not client.status()["worker_environment_exists"]

    catalog = open_existing_catalog(home / ".local" / "share" / "ptychonn-ophyd" / "catalog")
    runs = [catalog[uid] for item in history for uid in item["result"]["run_uids"]]
    plans = [run.metadata["start"]["plan_name"] for run in runs]
    assert plans == ["scan_with_inference", "scan_with_inference", "count"]
    assert [frame_accounting(run)["stored"] for run in runs] == [4, 4, 3]
    assert [run.metadata["stop"]["exit_status"] for run in runs] == ["success"] * 3
    logs = home / ".local" / "state" / "ptychonn-ophyd" / "logs"
    assert list(logs.iterdir()) == [], "the closed environment's pool left its logs"
