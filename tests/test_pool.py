"""ConsumerPool: real worker processes on loopback PV Access, accounted for by PID."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import tifffile
from frames import poisson_frames
from pool_services import share_command
from pva_collector import Collector
from pva_consumers import Consumer, connected, consumer_args, process_gone, status, wait_until
from pva_source import ntnda

from ptychonn_ophyd.errors import PoolStartError, WorkerDiedError
from ptychonn_ophyd.sim.scatter import ScatteredServer
from ptychonn_ophyd.wire import parse_final_counts

pytestmark = [pytest.mark.processes, pytest.mark.timeout(90)]


@pytest.fixture
def reap():
    """PIDs to SIGKILL after the test, so a failing test leaves no process behind."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if not process_gone(pid):
            with_signal(pid, signal.SIGKILL)


def with_signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def test_every_unique_id_comes_back_exactly_once_from_two_workers(make_pool, source):
    pool = make_pool(n_workers=2, distributor_updates=4)
    pool.start(timeout=60)
    collector = Collector(pool.output_channels)
    ids = source.publish_frames(poisson_frames(160, seed=1), rate_hz=100)

    assert collector.wait_for(160, timeout=30)
    counts = collector.ids()
    assert sorted(counts) == ids and set(counts.values()) == {1}
    assert {r.channel for r in collector.results} == set(pool.output_channels)
    for result in collector.results:
        consumer = pool.output_channels.index(result.channel) + 1
        assert result.consumer_id == consumer
        assert result.attributes["point"] == result.unique_id - 1
    assert wait_until(lambda: pool.stats().inferred == 160, 5)
    stats = pool.stats()
    assert stats.received == 160 and stats.dropped == 0 and stats.missed == 0
    assert sum(stats.rejected.values()) == 0 and stats.queue_depth == 0
    assert all(w["inferred"] > 0 and w["alive"] for w in stats.per_worker)
    assert 0 < stats.latency_p50_s <= stats.latency_p99_s < 5
    facts = pool.facts()
    assert facts["backend"] == "onnxruntime" and facts["n_workers"] == 2
    assert facts["model_hash"] == collector.results[0].model_hash


@pytest.mark.parametrize(
    ("updates", "run"),
    [(2, "scatter_run"), (1, 1)],
    ids=["runs-of-scatter_run", "one-frame-at-a-time-as-NDPluginScatter"],
)
def test_a_pool_on_scattered_channels_infers_every_frame_once_and_counts_none_missed(
    make_pool, channel_prefix, updates, run
):
    pool = make_pool(
        input_channel=f"{channel_prefix}:a,{channel_prefix}:b",
        n_workers=4,
        distributor_updates=updates,
    )
    config = pool.config
    run = config.scatter_run if run == "scatter_run" else run
    frames, positions = poisson_frames(12, seed=4), np.zeros((12, 2))
    with ScatteredServer(config.input_channels, run) as detector:
        pool.start(timeout=60)
        collector = Collector(pool.output_channels)
        detector.start_free_run(frames, positions, rate_hz=150, n_frames=240)
        assert detector.wait_free_run(timeout=60)
        assert collector.wait_for(240, timeout=30)
        assert wait_until(lambda: pool.stats().inferred == 240, 30)
        stats = pool.stats()
    counts = collector.ids()
    assert sorted(counts) == list(range(1, 241)) and set(counts.values()) == {1}
    for result in collector.results:  # worker k reads channel a for k <= 2, else b
        consumer = pool.output_channels.index(result.channel) + 1
        assert (result.unique_id - 1) // run % 2 == (consumer - 1) // 2
        assert result.attributes["point"] == (result.unique_id - 1) % 12
    assert stats.received == 240 and stats.missed == 0 and stats.dropped == 0
    assert all(w["inferred"] > 0 for w in stats.per_worker)
    assert pool.facts()["input_channel"] == config.input_channel


def test_stats_since_a_moment_count_every_frame_received_before_it(make_pool, source):
    pool = make_pool(status_period=2.0)
    pool.start(timeout=60)
    collector = Collector(pool.output_channels)
    source.publish_frames(poisson_frames(12, seed=3), rate_hz=100)
    assert collector.wait_for(12, timeout=30)

    stats = pool.stats(since=time.time())
    assert stats.received == 12 and stats.inferred == 12


def test_nan_and_inf_frames_are_rejected_as_nonfinite_not_inferred(
    make_pool, source, channel_prefix
):
    pool = make_pool()
    pool.start(timeout=60)
    collector = Collector(pool.output_channels)
    good = poisson_frames(2, seed=11).astype(np.float32)
    nan, inf = good[0].copy(), good[1].copy()
    nan[5, 7] = np.nan
    inf[100, 3] = np.inf
    ids = [source.publish(ntnda(good[0], 0))]
    source.publish(ntnda(nan, 0))
    source.publish(ntnda(inf, 0))
    ids.append(source.publish(ntnda(good[1], 0)))

    assert collector.wait_for(2, timeout=10)
    assert wait_until(lambda: pool.stats().received == 4, 10)
    stats = pool.stats()
    assert sorted(collector.ids()) == ids
    assert stats.inferred == 2 and stats.dropped == 0
    assert stats.rejected == {**dict.fromkeys(stats.rejected, 0), "nonfinite": 2}
    channel = f"{channel_prefix}:1:status"
    assert wait_until(lambda: (status(channel) or {}).get("userStats", {}).get("rejected"), 10)
    user = status(channel)["userStats"]
    assert user["rejectedNonfinite"] == 2 and user["rejected"] == 2


def halving_onnx(path) -> object:
    """An ONNX model that maps [batch, 1, 128, 128] frames to [batch, 1, 64, 64] (a max pool)."""
    import onnx
    from onnx import TensorProto, helper

    frames = helper.make_tensor_value_info("frames", TensorProto.FLOAT, ["batch", 1, 128, 128])
    phase = helper.make_tensor_value_info("phase", TensorProto.FLOAT, ["batch", 1, 64, 64])
    pool = helper.make_node("MaxPool", ["frames"], ["phase"], kernel_shape=[2, 2], strides=[2, 2])
    graph = helper.make_graph([pool], "halving", [frames], [phase])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


SHAPES_REFUSED = r"takes 128x128 frames but gives phase results of 64x64"


def test_model_whose_results_are_smaller_than_its_frames_is_refused_at_start(
    make_pool, source, tmp_path
):
    pool = make_pool(model=halving_onnx(tmp_path / "halving.onnx"))
    with pytest.raises(PoolStartError, match=r"worker 1 \(pid \d+\) exited") as raised:
        pool.start(timeout=60)
    lines = [line for line in str(raised.value).splitlines() if "halving.onnx" in line]
    assert any(re.search(SHAPES_REFUSED, line) for line in lines), str(raised.value)
    assert all(process_gone(pid) for pid in pool.pids)


def test_model_whose_results_are_smaller_than_its_frames_is_refused_on_swap(
    make_pool, source, tmp_path, small_phase_onnx
):
    pool = make_pool(swap_dirs=[tmp_path])
    pool.start(timeout=60)
    with pytest.raises(
        ValueError, match=rf"worker 1 \(pid \d+\): .*halving.onnx: {SHAPES_REFUSED}"
    ):
        pool.swap_model(halving_onnx(tmp_path / "halving.onnx"), timeout=30)
    collector = Collector(pool.output_channels)
    ids = source.publish_frames(poisson_frames(3, seed=12))
    assert collector.wait_for(3, timeout=10)
    assert sorted(collector.ids()) == ids
    model_hash = pool.facts()["model_hash"]
    assert {r.model_hash for r in collector.results} == {model_hash}
    assert all(r.image.shape == (128, 128) for r in collector.results)


def test_model_swap_loses_no_frame(make_pool, source, make_checkpoint):
    new_model = make_checkpoint("small_phase", seed=2)[1]
    pool = make_pool(n_workers=2, distributor_updates=4, swap_dirs=[new_model.parent])
    pool.start(timeout=60)
    old_hash = pool.facts()["model_hash"]
    collector = Collector(pool.output_channels)
    sender = threading.Thread(
        target=source.publish_frames, args=(poisson_frames(160, seed=2),), kwargs={"rate_hz": 80}
    )
    sender.start()
    wait_until(lambda: len(collector.results) > 40, 10)
    new_hash = pool.swap_model(new_model, timeout=30)
    sender.join()
    source.publish_frames(poisson_frames(80, seed=3), rate_hz=80, first_point=160)

    assert collector.wait_for(240, timeout=30)
    counts = collector.ids()
    assert sorted(counts) == list(range(1, 241)) and set(counts.values()) == {1}
    assert new_hash != old_hash
    for channel in pool.output_channels:
        ordered = sorted(
            (r for r in collector.results if r.channel == channel), key=lambda r: r.unique_id
        )
        hashes = [r.model_hash for r in ordered]
        swap = hashes.index(new_hash)
        assert set(hashes[:swap]) == {old_hash} and set(hashes[swap:]) == {new_hash}
    stats = pool.stats()
    assert stats.dropped == 0 and stats.missed == 0


def test_a_model_outside_the_swap_folders_is_refused_and_every_request_logged(
    make_pool, source, make_checkpoint
):
    pool = make_pool()
    pool.start(timeout=60)
    running = pool.facts()["model_hash"]
    elsewhere = make_checkpoint("small_phase", seed=4)[1].resolve()
    with pytest.raises(ValueError, match="is outside the folders models may be swapped from"):
        pool.swap_model(elsewhere, timeout=30)
    collector = Collector(pool.output_channels)
    source.publish_frames(poisson_frames(2, seed=13))
    assert collector.wait_for(2, timeout=10)
    assert {r.model_hash for r in collector.results} == {running}
    assert f"configure request: {{'model': '{elsewhere}'" in pool.log_paths[0].read_text()


def test_seed_file_writer_chain_saves_one_tiff_per_frame(
    make_pool, source, channel_prefix, tmp_path
):
    pool = make_pool()
    pool.start(timeout=60)
    files = tmp_path / "tiff"
    writer_args = {
        "outputDirectory": str(files),
        "outputFileNameFormat": "{uniqueId:06}.{processorId}.tiff",
    }
    writer = Consumer(
        consumer_args(
            f"{channel_prefix}files",
            f"{channel_prefix}:*:output",
            writer_args,
            "pvapy.hpc.adOutputFileProcessor.AdOutputFileProcessor",
        ),
        tmp_path / "writer.log",
    )
    try:
        assert wait_until(lambda: connected(f"{channel_prefix}files:1:status"), 30), writer.log()
        collector = Collector(pool.output_channels)
        ids = source.publish_frames(poisson_frames(12, seed=3), rate_hz=100)
        assert collector.wait_for(12, timeout=20)
        assert wait_until(lambda: len(list(files.glob("*.tiff"))) == 12, 20), writer.log()
    finally:
        writer.stop()
    results = {r.unique_id: r.image for r in collector.results}
    for unique_id in ids:
        image = tifffile.imread(files / f"{unique_id:06}.1.tiff")
        assert image.dtype == np.float32
        np.testing.assert_array_equal(image, results[unique_id])


def test_stop_leaves_no_worker_and_is_idempotent(make_pool, source):
    pool = make_pool(n_workers=2)
    pool.start(timeout=60)
    pids = pool.pids
    assert len(pids) == 2 and not any(process_gone(pid) for pid in pids)
    pool.stop()
    assert all(process_gone(pid) for pid in pids)
    pool.stop()


def test_start_failure_names_the_worker_and_its_log(make_pool, source, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    pool = make_pool(model=broken)
    with pytest.raises(PoolStartError, match=r"worker 1 \(pid \d+\) exited") as raised:
        pool.start(timeout=30)
    assert "not a valid ONNX model" in str(raised.value)
    assert all(process_gone(pid) for pid in pool.pids)


def test_engine_that_cannot_start_fails_the_start(make_pool, source):
    pool = make_pool(backend="tensorrt")
    with pytest.raises(
        PoolStartError, match=r"worker 1 \(pid \d+\) exited with status 2"
    ) as raised:
        pool.start(timeout=60)
    assert "cannot start the engine" in str(raised.value) and "TensorRT" in str(raised.value)


def test_cli_runs_a_pool_and_reports(source, channel_prefix, small_phase_onnx, tmp_path):
    command = [
        *(sys.executable, "-m", "ptychonn_ophyd", "pool", "--model", str(small_phase_onnx)),
        *("--input-channel", source.channel, "--output-prefix", channel_prefix),
        *("--backend", "onnxruntime", "--threads", "1", "--log-dir", str(tmp_path)),
        *("--report-period", "1", "--runtime", "10"),
    ]
    cli = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        ready_line = cli.stdout.readline()
        source.publish_frames(poisson_frames(10, seed=4), rate_hz=100)
        out, _ = cli.communicate(timeout=90)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 0, out
    assert ready_line.startswith("1 worker ready: onnxruntime CPU")
    assert f"{channel_prefix}:1:output" in ready_line
    assert out.strip().splitlines()[-1].startswith("received 10  inferred 10  dropped 0")


def test_dead_worker_is_reported(make_pool, source):
    pool = make_pool(n_workers=2)
    pool.start(timeout=60)
    pool.check_health()
    with_signal(pool.pids[1], signal.SIGKILL)
    assert wait_until(lambda: not pool.stats().per_worker[1]["alive"], 5)
    with pytest.raises(WorkerDiedError, match=r"worker 2 \(pid \d+\) died with exit status -9"):
        pool.check_health()


POOL_SCRIPT = """
import time
from ptychonn_ophyd.pool import ConsumerPool
from ptychonn_ophyd.settings import PoolConfig
config = PoolConfig(model={model!r}, input_channel={channel!r}, output_prefix={prefix!r},
                    n_workers=2, backend="onnxruntime", threads=1, wait_for_input=False)
pool = ConsumerPool(config)
pool.start(timeout=60)
print(*pool.pids, flush=True)
time.sleep({linger})
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["killed", "ctrl-c"])
def test_no_worker_outlives_its_parent(channel_prefix, small_phase_onnx, reap, sig):
    parent = start_pool_script(channel_prefix, small_phase_onnx, linger=120)
    reap.append(parent.pid)
    pids = [int(pid) for pid in parent.stdout.readline().split()]
    reap.extend(pids)
    assert len(pids) == 2 and not any(process_gone(pid) for pid in pids)

    parent.send_signal(sig)
    parent.wait(60)  # a Ctrl-C'd parent stops its workers: stop_drain + STOP_MARGIN_S at most
    assert wait_until(lambda: all(process_gone(pid) for pid in pids), 30)


def test_a_pool_left_running_when_its_program_ends_stops_and_removes_its_logs(
    channel_prefix, small_phase_onnx, reap, tmp_path, monkeypatch
):
    logs = tmp_path / "logs"
    monkeypatch.setenv("PTYCHONN_LOGS", str(logs))
    parent = start_pool_script(channel_prefix, small_phase_onnx, linger=0)
    reap.append(parent.pid)
    pids = [int(pid) for pid in parent.stdout.readline().split()]
    reap.extend(pids)

    assert parent.wait(60) == 0
    assert all(process_gone(pid) for pid in pids)
    assert list(logs.iterdir()) == []


def start_pool_script(channel_prefix: str, model, linger: float) -> subprocess.Popen:
    """A program that starts a pool of two workers, prints their PIDs, and after
    ``linger`` s ends without stopping them."""
    script = textwrap.dedent(POOL_SCRIPT).format(
        model=str(model), channel=f"{channel_prefix}:image", prefix=channel_prefix, linger=linger
    )
    return subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True
    )


def test_cli_pool_on_a_channel_nobody_serves_says_so_and_gives_up_after_runtime(
    channel_prefix, small_phase_onnx, tmp_path
):
    channel = f"{channel_prefix}:nobody"
    command = [
        *(sys.executable, "-m", "ptychonn_ophyd", "pool", "--model", str(small_phase_onnx)),
        *("--input-channel", channel, "--output-prefix", channel_prefix),
        *("--backend", "onnxruntime", "--threads", "1", "--log-dir", str(tmp_path)),
        *("--start-timeout", "300", "--runtime", "12"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    assert lines[0].startswith("waiting for worker 1 (pid "), done.stderr
    assert any(f"not connected to input channel {channel} (" in line for line in lines[:-1])
    assert lines[-1].startswith("error: worker 1 (pid "), done.stderr
    assert f"not ready after 12 s: not connected to input channel {channel}; its log: " in lines[-1]


def test_clean_stop_removes_the_logs_it_made_under_ptychonn_logs(
    make_pool, source, tmp_path, monkeypatch
):
    logs = tmp_path / "logs"
    monkeypatch.setenv("PTYCHONN_LOGS", str(logs))
    pool = make_pool(log_dir=None)
    pool.start(timeout=60)
    assert pool.log_dir.parent == logs and pool.log_paths[0].is_file()
    pool.stop()
    assert list(logs.iterdir()) == []


def test_failed_start_keeps_the_logs_it_names(make_pool, source, tmp_path, monkeypatch):
    logs = tmp_path / "logs"
    monkeypatch.setenv("PTYCHONN_LOGS", str(logs))
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    pool = make_pool(model=broken, log_dir=None)
    with pytest.raises(PoolStartError) as raised:
        pool.start(timeout=30)
    assert pool.log_dir.parent == logs
    assert f"({pool.log_paths[0]})" in str(raised.value) and pool.log_paths[0].is_file()


def test_two_hosts_shares_of_one_pool_split_the_frames_and_stop_cleanly_on_sigterm(
    source, channel_prefix, small_phase_onnx, tmp_path, reap
):
    shares = []
    for k in (1, 2):
        command = share_command(
            small_phase_onnx, source.channel, channel_prefix, tmp_path / f"h{k}", (k,), 2
        )
        cli = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, start_new_session=True)
        reap.append(cli.pid)
        shares.append(cli)
    ready = [cli.stdout.readline() for cli in shares]
    assert ready[0].startswith("1 worker (1 of 2) ready") and ready[1].startswith("1 worker (2")
    assert f"{channel_prefix}:2:output" in ready[1] and f"{channel_prefix}:1:" not in ready[1]
    statuses = [f"{channel_prefix}:{k}:status" for k in (1, 2)]
    assert wait_until(lambda: all(connected(s) for s in statuses), 60)
    source.publish_frames(poisson_frames(32, seed=5), rate_hz=100)
    inferred = lambda k: (status(statuses[k - 1]) or {}).get("userStats", {}).get("inferred", 0)  # noqa: E731
    assert wait_until(lambda: inferred(1) + inferred(2) == 32, 60)
    for cli in shares:
        cli.send_signal(signal.SIGTERM)
    outputs = [cli.communicate(timeout=60)[0] for cli in shares]
    for cli, out in zip(shares, outputs, strict=True):
        assert cli.returncode == 0, out
        assert out.strip().splitlines()[-1].startswith("received 16  inferred 16  dropped 0")
    for k in (1, 2):  # each worker drained and wrote its last counts as it stopped
        final = parse_final_counts((tmp_path / f"h{k}" / f"worker-{k}.log").read_text())
        assert final is not None and (final.consumer_id, final.inferred) == (k, 16)


def test_a_share_naming_a_worker_the_pool_has_not_is_refused_in_one_line(small_phase_onnx):
    command = [sys.executable, "-m", "ptychonn_ophyd", "pool", "--model", str(small_phase_onnx)]
    command += ["--input-channel", "nobody:image", "--workers", "2", "--consumer-ids", "2,3"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr == (
        "error: consumer_ids: 2, 3 is not a set of distinct ids among the pool's 2 workers "
        "(1 to 2)\n"
    )
