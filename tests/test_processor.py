"""The PtychoNN processor under the stock ``pvapy-hpc-consumer``, on loopback PV Access."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
from frames import poisson_frames
from pva_collector import BatchCollector, Collector
from pva_consumers import (
    Consumer,
    connected,
    consumer_args,
    process_gone,
    ready,
    status,
    wait_until,
)
from pva_source import FrameSource, boolean_frame, empty_frame, ntnda, unknown_codec_frame

from ptychonn_ophyd.engines import create_engine
from ptychonn_ophyd.moments import frame_moments
from ptychonn_ophyd.wire import BATCH_FRAME_FIELDS, BATCH_STRUCTURE_ID, parse_final_counts

pytestmark = [pytest.mark.processes, pytest.mark.timeout(60)]

SLOW_PROCESSOR = Path(__file__).with_name("pva_slow_processor.py")
P4P_READER = Path(__file__).with_name("p4p_batch_reader.py")


@pytest.fixture
def consumers(tmp_path):
    """Start ``pvapy-hpc-consumer`` processes that are stopped after the test, pass or fail."""
    started: list[Consumer] = []

    def start(args: list[str]) -> Consumer:
        consumer = Consumer(args, tmp_path / f"consumer-{len(started) + 1}.log")
        started.append(consumer)
        return consumer

    yield start
    for consumer in started:
        consumer.stop()


def cpu_args(model: Path, **settings) -> dict:
    return {"model": str(model), "backend": "onnxruntime", "threads": 1, **settings}


def start_ready(consumers, prefix: str, source: FrameSource, args: dict, **kw) -> Consumer:
    consumer = consumers(consumer_args(prefix, source.channel, args, **kw))
    assert wait_until(lambda: ready(f"{prefix}:1:status"), 30), consumer.log()
    return consumer


def user_stats(prefix: str, consumer_id: int = 1) -> dict:
    return status(f"{prefix}:{consumer_id}:status")["userStats"]


def test_partial_batch_is_flushed_and_results_keep_frame_identity(
    consumers, source, channel_prefix, small_phase_onnx
):
    args = cpu_args(small_phase_onnx, batch_size=8, batch_timeout=0.05)
    start_ready(consumers, channel_prefix, source, args)
    collector = Collector([f"{channel_prefix}:1:output"])
    frames = poisson_frames(3, seed=4)
    ids = source.publish_frames(frames, first_point=10)

    assert collector.wait_for(3, timeout=10), "a partial batch of 3 frames was never flushed"
    engine = create_engine(small_phase_onnx, backend="onnxruntime", max_batch=8)
    expected = engine.infer(frames.astype(np.float32)).phase
    by_id = {r.unique_id: r for r in collector.results}
    assert sorted(by_id) == ids
    for i, unique_id in enumerate(ids):
        result = by_id[unique_id]
        assert result.image.dtype == np.float32 and result.image.shape == (128, 128)
        np.testing.assert_allclose(result.image, expected[i], rtol=1e-4, atol=1e-5)
        attributes = result.attributes
        assert attributes["point"] == 10 + i
        assert attributes["x"] == pytest.approx(0.5 * (10 + i))
        assert attributes["y"] == pytest.approx(-0.25 * (10 + i))
        assert result.model_hash == engine.model_hash
        assert result.consumer_id == 1
        assert 0 < result.latency < 5
        sent = result.timestamp["secondsPastEpoch"] + result.timestamp["nanoseconds"] * 1e-9
        assert sent == pytest.approx(source.sent_at[unique_id], abs=1e-6)
    assert wait_until(lambda: user_stats(channel_prefix)["inferred"] == 3, 5)
    stats = user_stats(channel_prefix)
    assert stats["received"] == 3 and stats["queueDepth"] == 0 and stats["batches"] >= 1
    assert stats["backend"] == "onnxruntime" and stats["modelHash"] == engine.model_hash


def test_bad_frames_are_counted_and_the_stream_goes_on(
    consumers, source, channel_prefix, small_phase_onnx
):
    consumer = start_ready(consumers, channel_prefix, source, cpu_args(small_phase_onnx))
    collector = Collector([f"{channel_prefix}:1:output"])
    good = poisson_frames(2, seed=5)
    ids = [source.publish(ntnda(good[0], 0))]
    source.publish(empty_frame(0))
    source.publish(boolean_frame(0))
    source.publish(unknown_codec_frame(0))
    source.publish(ntnda(np.zeros((64, 64), np.int16), 0))
    ids.append(source.publish(ntnda(good[1], 0)))

    assert collector.wait_for(2, timeout=10)
    assert wait_until(lambda: user_stats(channel_prefix)["received"] == 6, 5)
    stats = user_stats(channel_prefix)
    assert sorted(collector.ids()) == ids
    assert stats["inferred"] == 2 and stats["rejected"] == 4 and stats["dropped"] == 0
    for reason in ("Empty", "Dtype", "Codec", "Shape"):
        assert stats[f"rejected{reason}"] == 1, reason
    assert "rejected (codec)" in consumer.log()


def test_warmup_queue_holds_frames_and_counts_overflow(
    consumers, source, channel_prefix, small_phase_onnx
):
    args = {**cpu_args(small_phase_onnx, batch_size=8, warmup_queue_size=16), "start_delay": 4}
    extra = ("--processor-file", str(SLOW_PROCESSOR))
    consumer = consumers(
        consumer_args(channel_prefix, source.channel, args, "SlowStartProcessor", extra)
    )
    status_channel = f"{channel_prefix}:1:status"
    assert wait_until(lambda: connected(status_channel), 20), consumer.log()
    assert not user_stats(channel_prefix)["ready"]
    collector = Collector([f"{channel_prefix}:1:output"])
    ids = source.publish_frames(poisson_frames(40, seed=6))

    assert wait_until(lambda: user_stats(channel_prefix)["inferred"] == 16, 20), consumer.log()
    assert collector.wait_for(16, timeout=5)
    stats = user_stats(channel_prefix)
    assert stats["ready"] and stats["received"] == 40 and stats["queueCapacity"] == 16
    assert stats["droppedQueueFull"] == 24 and stats["dropped"] == 24
    assert sorted(collector.ids()) == ids[:16]
    assert "queue of 16 frames is full (the engine is starting)" in consumer.log()


def test_frames_waiting_for_an_engine_at_stop_are_counted(
    consumers, source, channel_prefix, small_phase_onnx
):
    args = {**cpu_args(small_phase_onnx), "start_delay": 60}
    extra = ("--processor-file", str(SLOW_PROCESSOR))
    consumer = consumers(
        consumer_args(channel_prefix, source.channel, args, "SlowStartProcessor", extra)
    )
    assert wait_until(lambda: connected(f"{channel_prefix}:1:status"), 20), consumer.log()
    source.publish_frames(poisson_frames(5, seed=10))
    assert wait_until(lambda: user_stats(channel_prefix)["queueDepth"] == 5, 5)
    assert consumer.stop() == 0
    final = parse_final_counts(consumer.log())
    assert (final.received, final.inferred, final.dropped_by_reason["stopped"]) == (5, 0, 5)
    assert final.unaccounted == 0


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"colour": "blue"}, "unknown key 'colour'"),
        ({"model": None}, "'model' is required"),
        ({"model": "/no/such/model.onnx"}, "no model file at /no/such/model.onnx"),
        ({"outputs": ["phase", "amplitude"]}, "has no amplitude head"),
        ({"batch_size": 0}, "batch_size: Input should be greater than or equal to 1"),
    ],
)
def test_bad_processor_args_end_the_worker_with_one_message(
    consumers, source, channel_prefix, small_phase_onnx, settings, message
):
    args = {k: v for k, v in {**cpu_args(small_phase_onnx), **settings}.items() if v is not None}
    consumer = consumers(consumer_args(channel_prefix, source.channel, args))
    assert consumer.process.wait(30) == 2
    log = consumer.log()
    assert message in log and "Traceback" not in log, log
    assert log.strip().splitlines()[-1].startswith("InferPtychoNNImageProcessor: ")


def test_two_head_model_publishes_amplitude_beside_phase(
    consumers, source, channel_prefix, make_checkpoint
):
    model = make_checkpoint("small_amp_phase", seed=3)[1]
    args = cpu_args(model, outputs=["phase", "amplitude"])
    start_ready(consumers, channel_prefix, source, args)
    phase = Collector([f"{channel_prefix}:1:output"])
    ids = source.publish_frames(poisson_frames(5, seed=7))
    assert phase.wait_for(1, timeout=10)
    amplitude = Collector([f"{channel_prefix}:1:amplitude"])
    ids += source.publish_frames(poisson_frames(5, seed=8))

    assert phase.wait_for(10, timeout=10) and amplitude.wait_for(5, timeout=10)
    assert sorted(phase.ids()) == ids and sorted(amplitude.ids()) == ids[5:]
    expected = create_engine(model, backend="onnxruntime").infer(
        poisson_frames(5, seed=8).astype(np.float32)
    )
    phases = {r.unique_id: r for r in phase.results}
    for i, result in enumerate(sorted(amplitude.results, key=lambda r: r.unique_id)):
        assert result.attributes == phases[result.unique_id].attributes
        np.testing.assert_allclose(result.image, expected.amplitude[i], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(
            phases[result.unique_id].image, expected.phase[i], rtol=1e-4, atol=1e-5
        )


def test_seed_command_line_in_fork_mode(consumers, source, channel_prefix, small_phase_onnx):
    args = {"onnx_mdl": str(small_phase_onnx), "bsz": 8, "backend": "onnxruntime", "threads": 1}
    extra = ("--n-consumers", "2", "--distributor-updates", "8", "--server-queue-size", "100")
    consumer = consumers(consumer_args(channel_prefix, source.channel, args, extra=extra))
    for k in (1, 2):
        assert wait_until(lambda k=k: ready(f"{channel_prefix}:{k}:status"), 30), consumer.log()
    children = [p.pid for p in psutil.Process(consumer.process.pid).children(recursive=True)]
    collector = Collector([f"{channel_prefix}:1:output", f"{channel_prefix}:2:output"])
    ids = source.publish_frames(poisson_frames(32, seed=9), rate_hz=200)

    assert collector.wait_for(32, timeout=20)
    counts = collector.ids()
    assert sorted(counts) == ids and set(counts.values()) == {1}
    assert {r.channel for r in collector.results} == set(collector._connected)
    assert consumer.stop() == 0
    assert children and wait_until(lambda: all(process_gone(pid) for pid in children), 10)


def test_batch_channel_carries_every_frame_with_its_identity_moments_and_result(
    consumers, source, channel_prefix, small_phase_onnx
):
    args = cpu_args(small_phase_onnx, batch_size=4, batch_timeout=0.05, frame_outputs="none")
    start_ready(consumers, channel_prefix, source, args)
    collector = BatchCollector([f"{channel_prefix}:1:batch"])
    frames = poisson_frames(10, seed=5)
    ids = source.publish_frames(frames, first_point=20)

    assert collector.wait_for(10, timeout=20), f"{collector.frames} of 10 frames in batches"
    batches = sorted(collector.batches, key=lambda b: b.batch)
    assert [b.batch for b in batches] == list(range(1, len(batches) + 1))
    assert [b.frames_before for b in batches] == list(
        np.cumsum([0] + [len(b) for b in batches])[:-1]
    )
    order = np.argsort(collector.column("uniqueId"))
    column = {name: collector.column(name)[order] for name in BATCH_FRAME_FIELDS}
    assert column["uniqueId"].tolist() == ids
    np.testing.assert_array_equal(column["point"], np.arange(20, 30))
    np.testing.assert_allclose(column["x"], 0.5 * np.arange(20, 30))
    np.testing.assert_allclose(column["y"], -0.25 * np.arange(20, 30))
    np.testing.assert_allclose(column["frameTime"], [source.sent_at[i] for i in ids], atol=1e-6)
    totals, centroids = frame_moments(frames.astype(np.float32))
    np.testing.assert_allclose(column["inputTotal"], totals)
    np.testing.assert_allclose(column["inputCentroidX"], centroids[:, 0])
    np.testing.assert_allclose(column["inputCentroidY"], centroids[:, 1])
    engine = create_engine(small_phase_onnx, backend="onnxruntime", max_batch=10)
    expected = engine.infer(frames.astype(np.float32)).phase
    phases = np.concatenate([b.phase for b in collector.batches])[order]
    np.testing.assert_allclose(phases, expected, rtol=1e-4, atol=1e-5)
    assert {(b.consumer_id, b.model_hash) for b in batches} == {(1, engine.model_hash)}
    assert all(b.amplitude is None for b in batches)
    # each batch goes out after its own frames were sent (a first batch may go out
    # before the last frames are, on a busy machine)
    assert all(b.published >= b.frames["frameTime"].max() for b in batches)
    assert wait_until(lambda: user_stats(channel_prefix)["inferred"] == 10, 5)
    stats = user_stats(channel_prefix)
    assert stats["batchesPublished"] == len(batches) and stats["published"] == 0


def test_preview_publishes_a_few_frames_on_their_own_and_every_frame_in_batches(
    consumers, source, channel_prefix, small_phase_onnx
):
    args = cpu_args(small_phase_onnx, frame_outputs="preview", preview_period=30)
    start_ready(consumers, channel_prefix, source, args)
    previews = Collector([f"{channel_prefix}:1:output"])
    batches = BatchCollector([f"{channel_prefix}:1:batch"])
    ids = source.publish_frames(poisson_frames(20, seed=6), rate_hz=200)

    assert batches.wait_for(20, timeout=20) and previews.wait_for(1, timeout=10)
    assert sorted(batches.column("uniqueId").tolist()) == ids
    assert [r.unique_id for r in previews.results] == ids[:1]  # one preview per 30 s
    assert wait_until(lambda: user_stats(channel_prefix)["published"] == 1, 5)


def test_two_head_batches_carry_the_amplitude_beside_the_phase(
    consumers, source, channel_prefix, make_checkpoint
):
    model = make_checkpoint("small_amp_phase", seed=3)[1]
    args = cpu_args(model, outputs=["phase", "amplitude"], frame_outputs="none")
    start_ready(consumers, channel_prefix, source, args)
    collector = BatchCollector([f"{channel_prefix}:1:batch"])
    frames = poisson_frames(6, seed=8)
    source.publish_frames(frames)

    assert collector.wait_for(6, timeout=20)
    expected = create_engine(model, backend="onnxruntime").infer(frames.astype(np.float32))
    order = np.argsort(collector.column("uniqueId"))
    amplitude = np.concatenate([b.amplitude for b in collector.batches])[order]
    phase = np.concatenate([b.phase for b in collector.batches])[order]
    np.testing.assert_allclose(amplitude, expected.amplitude, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(phase, expected.phase, rtol=1e-4, atol=1e-5)


def test_batch_channel_reads_with_p4p(consumers, source, channel_prefix, small_phase_onnx):
    pytest.importorskip("p4p", reason="p4p (the test extra) reads the batch channel")
    start_ready(consumers, channel_prefix, source, cpu_args(small_phase_onnx, batch_size=4))
    reader = subprocess.Popen(
        [sys.executable, str(P4P_READER), f"{channel_prefix}:1:batch", "8", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert reader.stdout.readline().strip() == "connected", reader.stdout.read()
        ids = source.publish_frames(poisson_frames(8, seed=2), first_point=3)
        out, _ = reader.communicate(timeout=60)
    finally:
        reader.kill()
    seen = json.loads(out.splitlines()[-1])
    assert sorted(seen["uniqueId"]) == ids and sorted(seen["point"]) == list(range(3, 11))
    assert {tuple(shape[1:3]) for shape in seen["shape"]} == {(128, 128)}
    assert all(n * 128 * 128 == size for n, _, _, size in seen["shape"])
    assert set(seen["id"]) == {BATCH_STRUCTURE_ID}
