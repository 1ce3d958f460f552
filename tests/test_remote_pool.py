"""Attaching to workers that run as services (``ptychonn-ophyd pool --consumer-ids``):
real services on loopback, the RemotePool and the device attached to them."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading

import pytest
from bluesky_world import beamline, until
from frames import poisson_frames
from pool_services import services, share_command
from pva_consumers import process_gone, status, wait_until
from pva_source import FrameSource

from ptychonn_ophyd.errors import PoolStartError, WorkerDiedError
from ptychonn_ophyd.loopback import announce_server
from ptychonn_ophyd.models import open_model
from ptychonn_ophyd.pool import RemotePool
from ptychonn_ophyd.run_schema import frame_accounting
from ptychonn_ophyd.session.plans import scan_with_inference
from ptychonn_ophyd.settings import PoolConfig

pytestmark = [pytest.mark.processes, pytest.mark.timeout(180)]


def remote_config(model, prefix: str, n_workers: int = 2, **settings) -> PoolConfig:
    return PoolConfig(
        model=model,
        input_channel=f"{prefix}:image",
        output_prefix=f"{prefix}:inference",
        n_workers=n_workers,
        attach=True,
        wait_for_input=False,
        **settings,
    )


def start_shares(running, model, prefix, tmp_path, shares=((1,), (2,)), *extra):
    n = sum(len(ids) for ids in shares)
    for k, ids in enumerate(shares):
        command = share_command(
            model, f"{prefix}:image", f"{prefix}:inference", tmp_path / f"host{k}", ids, n, *extra
        )
        running.start(command)


def test_a_fly_scan_over_two_hosts_services_keeps_every_frame_and_leaves_them_running(
    tmp_path, channel_prefix, small_phase_onnx
):
    with services() as running:
        start_shares(running, small_phase_onnx, channel_prefix, tmp_path)
        with beamline(tmp_path, channel_prefix, small_phase_onnx, n_workers=2, attach=True) as w:
            w.det.fly_rate_hz = 200
            plan = scan_with_inference(
                w.det, w.inference, w.sy, -0.3, 0.3, 8, w.sx, -0.3, 0.3, 8, mode="fly"
            )
            (uid,) = w.RE(plan)
            run = w.catalog[uid]
            accounting = frame_accounting(run)
            assert accounting["produced"] == accounting["stored"] == 64
            assert accounting["not_in_time"] == accounting["missed"] == 0
            workers = accounting["workers"]
            assert set(workers) == {"1", "2"} and sum(workers.values()) == 64
            assert min(workers.values()) >= 24  # runs of 8 frames dealt in turn
            facts = run.metadata["start"]["ptychonn"]
            assert facts["attached"] and set(facts["hosts"]) == {"1", "2"}
            assert w.inference.pool is None  # unstaged: the session let go of them
        for service in running.running:  # ...and they still run, for the next session
            assert service.poll() is None


def test_attaching_swaps_workers_running_another_model_to_the_session_s(
    tmp_path, channel_prefix, small_phase_onnx, make_checkpoint
):
    other = small_phase_onnx.parent / "other.onnx"  # the services may swap in their folder
    shutil.copy(make_checkpoint("small_phase", seed=2)[1], other)
    with services() as running:
        start_shares(running, other, channel_prefix, tmp_path)
        pool = RemotePool(remote_config(small_phase_onnx, channel_prefix))
        lines: list[str] = []
        with pool:
            pool.start(timeout=60, progress=lines.append)
            assert pool.facts()["model_hash"] == open_model(small_phase_onnx).model_hash
            assert {w["model_hash"] for w in pool.stats().per_worker} == {
                open_model(small_phase_onnx).model_hash
            }
        assert any(line.startswith("swapping worker 1 (host ") for line in lines)


def test_a_worker_started_with_other_settings_is_refused_in_one_line(
    tmp_path, channel_prefix, small_phase_onnx
):
    with services() as running:
        start_shares(
            running,
            small_phase_onnx,
            channel_prefix,
            tmp_path,
            ((1, 2),),
            "--distributor-updates",
            "4",
        )
        pool = RemotePool(remote_config(small_phase_onnx, channel_prefix))
        with pytest.raises(PoolStartError) as refused:
            pool.start(timeout=60)
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("worker 1 (host ")
    assert message.endswith(
        "does not make the pool this session asks for: distributor_updates is 4 there, 8 here; "
        "start that host's pool with the session's settings, or change the session's"
    )


def test_a_worker_nobody_runs_is_named_with_where_the_session_looked(
    tmp_path, channel_prefix, small_phase_onnx
):
    with services() as running:
        start_shares(running, small_phase_onnx, channel_prefix, tmp_path, ((1,),), "--workers", "2")
        pool = RemotePool(remote_config(small_phase_onnx, channel_prefix))
        with pytest.raises(PoolStartError) as missing:
            pool.start(timeout=5)
    assert str(missing.value) == (
        f"worker 2 not ready after 5 s: no answer on its status channel "
        f"{channel_prefix}:inference:2:status: is its host's pool service running, and does "
        f"EPICS_PVA_ADDR_LIST ({os.environ['EPICS_PVA_ADDR_LIST']}) reach that host?"
    )


def test_a_service_that_dies_mid_scan_fails_the_scan_naming_its_host_and_the_run_keeps_counts(
    tmp_path, channel_prefix, small_phase_onnx
):
    with services() as running:
        start_shares(running, small_phase_onnx, channel_prefix, tmp_path)
        with beamline(tmp_path, channel_prefix, small_phase_onnx, n_workers=2, attach=True) as w:
            w.det.fly_rate_hz = 50  # 400 frames: 8 s of acquisition
            plan = scan_with_inference(
                w.det, w.inference, w.sy, -0.3, 0.3, 20, w.sx, -0.3, 0.3, 20, mode="fly"
            )
            doomed = running.running[1]

            def kill_when_flying():  # host 2 drops off as a host does: all at once
                until(lambda: w.inference.inferred_count > 40, "results of the scan", 120)
                (worker,) = [
                    s for s in w.inference.pool.stats().per_worker if s["consumer_id"] == 2
                ]
                os.killpg(doomed.pid, signal.SIGKILL)
                os.kill(worker["pid"], signal.SIGKILL)

            killer = threading.Thread(target=kill_when_flying, daemon=True)
            killer.start()
            with pytest.raises(WorkerDiedError) as died:
                w.RE(plan)
            killer.join(5)
            assert "worker 2 (host " in str(died.value)
            assert "has published no status for" in str(died.value)
            run = w.catalog[-1]
            assert run.metadata["stop"]["exit_status"] == "fail"
            accounting = frame_accounting(run)
            assert accounting["stored"] == accounting["inferred"] > 40
            assert accounting["workers"]["1"] > 0
        assert running.running[0].poll() is None
        assert process_gone(doomed.pid)


def test_pool_attach_checks_the_services_prints_their_counts_and_leaves_them_running(
    tmp_path, channel_prefix, small_phase_onnx
):
    with services() as running:
        start_shares(running, small_phase_onnx, channel_prefix, tmp_path)
        command = share_command(
            small_phase_onnx, f"{channel_prefix}:image", f"{channel_prefix}:inference",
            tmp_path / "watcher", (1, 2), 2, "--attach", "--runtime", "3",
        )  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[0].startswith(f"2 workers attached on {socket.gethostname()} ready: ")
        assert lines[-1].startswith("received 0  inferred 0  dropped 0")
        assert [service.poll() for service in running.running] == [None, None]


def test_a_service_keeps_running_through_a_detector_restart_and_infers_after_it(
    tmp_path, channel_prefix, small_phase_onnx
):
    statuses = [f"{channel_prefix}:inference:{k}:status" for k in (1, 2)]

    def user(k: int, key: str) -> int:
        return (status(statuses[k]) or {}).get("userStats", {}).get(key, 0)

    def heard(k: int) -> int:
        return (status(statuses[k]) or {}).get("receiverStats", {}).get("nReceived", 0)

    def inferred() -> int:
        return user(0, "inferred") + user(1, "inferred")

    with services() as running:
        start_shares(running, small_phase_onnx, channel_prefix, tmp_path)
        with FrameSource(f"{channel_prefix}:image") as source:
            assert wait_until(lambda: heard(0) and heard(1), 60)
            source.publish_frames(poisson_frames(32, seed=3), rate_hz=100)
            assert wait_until(lambda: inferred() == 32, 60)
            before = [heard(0), heard(1)]
        with FrameSource(f"{channel_prefix}:image") as source:  # the IOC back, ids from 1
            announce_server()
            assert wait_until(lambda: heard(0) > before[0] and heard(1) > before[1], 60)
            source.publish_frames(poisson_frames(32, seed=4), rate_hz=100)
            assert wait_until(lambda: inferred() == 64, 60)
        assert [service.poll() for service in running.running] == [None, None]
