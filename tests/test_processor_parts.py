"""The streaming processor's parts, in-process: arguments, frames, batching, counts, results."""

from __future__ import annotations

import logging
import sys
import threading
import time

import numpy as np
import pvaccess as pva
import pytest
from pva_source import boolean_frame, empty_frame, ntnda, unknown_codec_frame
from pvapy.utility.adImageUtility import AdImageUtility

from ptychonn_ophyd.errors import ArgsError, FrameRejected
from ptychonn_ophyd.settings import parse_args, parse_update
from ptychonn_ophyd.throttle import Throttle
from ptychonn_ophyd.wire import (
    BATCH_FRAME_FIELDS,
    FRAME_TAGS,
    STATS_PVA_TYPES,
    ResultBatch,
    WorkerChannels,
    new_batch_value,
    parse_ntndarray,
    parse_result_batch,
    read_frame_tags,
    read_result_descriptor,
    sibling_channel,
    stamp,
    write_result_batch,
)
from ptychonn_ophyd.worker.batching import BatchQueue
from ptychonn_ophyd.worker.frames import NoFrameYet, decode_frame
from ptychonn_ophyd.worker.output import FrameOutputGate, ResultBuilder
from ptychonn_ophyd.worker.stats import FrameCounts


def copy_into(frame: np.ndarray, slot: np.ndarray) -> None:
    np.copyto(slot, frame, casting="unsafe")


def queue(n_buffers: int = 2, batch: int = 4, timeout: float = 0.05) -> BatchQueue:
    return BatchQueue(n_buffers, batch, (2, 2), timeout, copy_into)


class TestArgs:
    def test_seed_aliases_and_pvapy_keys(self, small_phase_onnx):
        args = parse_args(
            {"onnx_mdl": str(small_phase_onnx), "bsz": 16, "processorId": 3, "outputChannel": "x"}
        )
        assert args.model == small_phase_onnx and args.batch_size == 16
        assert args.gpu == "auto" and args.outputs == ("phase",)

    def test_every_problem_in_one_line(self):
        with pytest.raises(ArgsError) as raised:
            parse_args({"bsz": 0, "colour": "blue"})
        message = str(raised.value)
        assert "\n" not in message
        assert "'model' is required" in message and "unknown key 'colour'" in message
        assert "batch_size" in message and "known keys: model, backend" in message

    @pytest.mark.parametrize(
        ("settings", "message"),
        [
            ({"outputs": ["amplitude"]}, 'outputs is ["phase"] or ["phase", "amplitude"]'),
            ({"gpu": -1}, "a GPU index is 0 or more"),
            ({"backend": "cuda"}, "backend: Input should be"),
            ({"preprocess": {"crop": -1}}, "crop must not be negative"),
        ],
    )
    def test_bad_values(self, small_phase_onnx, settings, message):
        with pytest.raises(ArgsError) as raised:
            parse_args({"model": str(small_phase_onnx), **settings})
        assert message in str(raised.value)

    def test_engine_device(self, small_phase_onnx):
        assert parse_args({"model": small_phase_onnx, "gpu": 1}).engine_device(3) == "cuda:1"
        cpu = parse_args({"model": small_phase_onnx, "backend": "onnxruntime", "gpu": 1})
        assert cpu.engine_device(3) == "cpu"

    def test_runtime_update(self, small_phase_onnx):
        assert parse_update({"onnx_mdl": str(small_phase_onnx)}).model == small_phase_onnx
        assert parse_update({"batch_timeout": 0.1, "objectIdOffset": 3}).batch_timeout == 0.1
        with pytest.raises(ArgsError, match="unknown key 'batch_size'"):
            parse_update({"batch_size": 4})


class TestFrames:
    def test_view_of_the_image(self):
        frame = np.arange(12, dtype=np.uint16).reshape(3, 4)
        image, compressed = decode_frame(ntnda(frame, 1))
        assert not compressed and image.dtype == np.uint16
        np.testing.assert_array_equal(image, frame)

    @pytest.mark.parametrize(
        ("array", "reason"),
        [
            (empty_frame(1), "empty"),
            (boolean_frame(1), "dtype"),
            (unknown_codec_frame(1), "codec"),
            (ntnda(np.zeros((0, 0), np.int16), 1), "empty"),
        ],
    )
    def test_rejections(self, array, reason):
        with pytest.raises(FrameRejected) as raised:
            decode_frame(array)
        assert raised.value.reason == reason

    def test_a_channel_without_a_frame_yet_is_no_frame(self):
        with pytest.raises(NoFrameYet):
            decode_frame(pva.NtNdArray())  # a freshly started server's value

    def test_dimensions_must_match_the_data(self):
        array = ntnda(np.zeros((4, 4), np.int16), 1)
        array["dimension"] = [
            pva.PvDimension(3, 0, 3, 1, False),
            pva.PvDimension(4, 0, 4, 1, False),
        ]
        with pytest.raises(FrameRejected, match="do not match") as raised:
            decode_frame(array)
        assert raised.value.reason == "shape"

    def test_stamp_sets_the_id_and_both_times_and_leaves_the_image(self):
        array = ntnda(np.arange(12, dtype=np.float32).reshape(3, 4), unique_id=1)
        stamp(array, 42, when=1_700_000_000.25)
        assert array["uniqueId"] == 42
        for field in ("timeStamp", "dataTimeStamp"):
            assert array[field]["secondsPastEpoch"] == 1_700_000_000
            assert array[field]["nanoseconds"] == 250_000_000
        frame, _ = decode_frame(array)
        np.testing.assert_array_equal(frame, np.arange(12, dtype=np.float32).reshape(3, 4))


class TestBatchQueue:
    def test_full_batches_come_at_once(self):
        q = queue(timeout=10)
        for i in range(4):
            assert q.put(np.full((2, 2), i), f"meta{i}", time.perf_counter())
        buffer, n = q.take()
        assert n == 4 and q.meta[buffer] == ["meta0", "meta1", "meta2", "meta3"]
        np.testing.assert_array_equal(q.frames[buffer, :, 0, 0], [0, 1, 2, 3])
        assert q.depth() == 0
        q.release(buffer, n)
        assert q.meta[buffer] == [None] * 4

    def test_partial_batch_waits_for_its_timeout(self):
        q = queue(timeout=0.2)
        start = time.perf_counter()
        q.put(np.zeros((2, 2)), "a", start)
        q.put(np.zeros((2, 2)), "b", start)
        assert q.take()[1] == 2
        assert 0.15 < time.perf_counter() - start < 1.0

    def test_take_wakes_when_a_first_frame_arrives(self):
        q = queue(timeout=0.05)
        taken = []
        thread = threading.Thread(target=lambda: taken.append(q.take()))
        thread.start()
        time.sleep(0.1)
        q.put(np.zeros((2, 2)), "a", time.perf_counter())
        thread.join(2)
        assert taken and taken[0][1] == 1

    def test_refuses_frames_when_full_or_closed(self):
        q = queue(n_buffers=2, batch=2)
        assert all(q.put(np.zeros((2, 2)), i, 0.0) for i in range(4))
        assert not q.put(np.zeros((2, 2)), 4, 0.0)
        assert q.capacity == 4 and q.depth() == 4
        q.close()
        assert {q.take(), q.take()} == {(0, 2), (1, 2)} and q.take() is None
        assert not q.put(np.zeros((2, 2)), 5, 0.0)

    def test_a_failed_fill_queues_nothing(self):
        def refuse(frame, slot):
            raise FrameRejected("shape", "no")

        q = BatchQueue(2, 2, (2, 2), 0.01, refuse)
        with pytest.raises(FrameRejected):
            q.put(np.zeros((2, 2)), "x", 0.0)
        assert q.depth() == 0

    def test_close_flushes_a_partial_batch_at_once(self):
        q = queue(timeout=60)
        q.put(np.zeros((2, 2)), "a", time.perf_counter())
        q.close()
        assert q.take()[1] == 1 and q.take() is None

    def test_the_buffer_released_last_is_filled_next(self):
        q = queue(n_buffers=4, batch=1)
        q.put(np.zeros((2, 2)), "a", 0.0)
        first, n = q.take()
        q.release(first, n)
        q.put(np.zeros((2, 2)), "b", 0.0)
        assert q.take()[0] == first

    def test_discard(self):
        q = queue(n_buffers=3, batch=2)
        for i in range(5):
            q.put(np.zeros((2, 2)), i, 0.0)
        assert q.discard() == 5 and q.depth() == 0
        assert all(q.put(np.zeros((2, 2)), i, 0.0) for i in range(6))


class TestFrameCounts:
    def test_latency_window_wraps(self):
        counts = FrameCounts(latency_window=4)
        counts.record_batch(np.array([9.0, 9.0, 9.0]))
        counts.record_batch(np.array([1.0, 2.0, 3.0]))
        p50, p99 = counts.latency_percentiles()
        assert counts.inferred == 6 and counts.batches == 2
        assert p50 == pytest.approx(2.5) and p99 == pytest.approx(8.82)

    def test_user_stats_fields_are_the_published_ones(self):
        counts = FrameCounts()
        counts.received = 7
        counts.rejected["codec"] = 2
        counts.dropped["queue_full"] = 1
        counts.take(3)
        stats = counts.user_stats(queued=lambda: 4)
        assert stats["rejected"] == 2 and stats["rejectedCodec"] == 2
        assert stats["dropped"] == 1 and stats["droppedQueueFull"] == 1
        assert stats["queueDepth"] == 7 and set(stats) <= set(STATS_PVA_TYPES)

    def test_a_reading_never_counts_a_frame_twice_while_frames_move_on(self):
        counts, q = FrameCounts(), queue(n_buffers=4, batch=2, timeout=0.001)

        def monitor():
            for _ in range(20_000):
                counts.received += 1
                if not q.put(np.zeros((2, 2)), None, time.perf_counter()):
                    counts.dropped["queue_full"] += 1
            q.close()

        def infer():
            while (batch := q.take()) is not None:
                counts.take(batch[1])
                counts.record_batch(np.zeros(batch[1]))
                q.release(*batch)

        def counted(stats):
            return stats["inferred"] + stats["dropped"] + stats["rejected"] + stats["queueDepth"]

        threads = [threading.Thread(target=monitor), threading.Thread(target=infer)]
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # let the threads interleave between any two reads
        try:
            for thread in threads:
                thread.start()
            while threads[1].is_alive():
                stats = counts.user_stats(q.depth)
                assert counted(stats) <= stats["received"]
        finally:
            sys.setswitchinterval(interval)
            for thread in threads:
                thread.join(30)
        stats = counts.user_stats(q.depth)
        assert counted(stats) == stats["received"] == 20_000

    def test_rate_over_a_window(self):
        counts = FrameCounts(rate_window=0.05)
        counts.rate()
        counts.record_batch(np.zeros(10))
        time.sleep(0.1)
        assert 20 < counts.rate() < 200


class TestResults:
    def test_result_keeps_identity_and_says_who_made_it_and_when(self):
        frame = ntnda(np.zeros((8, 8), np.int16), 42, {"x": 1.5, "point": 3})
        frame["dataTimeStamp"] = pva.PvTimeStamp(1000.25)
        builder = ResultBuilder(consumer_id=2, shape=(4, 4), resized=True)
        builder.set_model_hash("0123456789ab")
        image = np.arange(16, dtype=np.float32).reshape(4, 4)
        result = builder.result(frame.copy(), image, 1000.26, 812345.0, (63.9123456, 64.1))
        unique_id, decoded, nx, ny, *_ = AdImageUtility.reshapeNtNdArray(result)
        assert (unique_id, nx, ny) == (42, 4, 4)
        np.testing.assert_array_equal(decoded, image)
        assert result["dataTimeStamp"]["secondsPastEpoch"] == 1000
        attributes = {a["name"]: a["value"][0]["value"] for a in result["attribute"]}
        assert attributes == {"ColorMode": 0, "x": 1.5, "point": 3}
        parsed = parse_ntndarray(result)
        tags = read_result_descriptor(parsed.descriptor)
        assert (tags.consumer_id, tags.model_hash) == (2, "0123456789ab")
        assert tags.input_total == 812345.0
        assert tags.input_centroid == pytest.approx((63.912346, 64.1), abs=1e-6)
        assert parsed.published - parsed.timestamp == pytest.approx(0.01, abs=1e-6)
        assert result["uncompressedSize"] == 64
        sibling = builder.sibling(result, image * 2)
        assert sibling["attribute"] == result["attribute"]
        assert sibling["uniqueId"] == 42

    def test_a_descriptor_without_moments_or_not_ours_reads_as_unknown(self):
        older = read_result_descriptor("ptychonn consumer=3 model=0123456789ab")
        assert (older.consumer_id, older.model_hash) == (3, "0123456789ab")
        assert np.isnan([older.input_total, *older.input_centroid]).all()
        other = read_result_descriptor("a detector's frame")
        assert (other.consumer_id, other.model_hash) == (-1, "")
        assert np.isnan([other.input_total, *other.input_centroid]).all()

    def test_sibling_channel(self):
        assert sibling_channel("inference:3:output", "amplitude") == "inference:3:amplitude"
        assert sibling_channel("results", "amplitude") == "results:amplitude"
        assert sibling_channel(None, "amplitude") is None


def batch(n: int, amplitude: bool = False, seed: int = 0) -> ResultBatch:
    rng = np.random.default_rng(seed)
    frames = {name: rng.integers(-5, 1000, n).astype(float) for name in BATCH_FRAME_FIELDS}
    images = rng.random((2, n, 3, 5), np.float32)
    return ResultBatch(4, "0123456789ab", 7, 70, 1000.5, frames, images[0], images[1] * amplitude)


class TestResultBatches:
    @pytest.mark.parametrize("amplitude", [False, True])
    def test_a_batch_reads_back_as_written(self, amplitude):
        sent = batch(6, amplitude)
        if not amplitude:
            sent = ResultBatch(**{**sent.__dict__, "amplitude": None})
        value = new_batch_value()
        write_result_batch(value, sent)
        got = parse_result_batch(value)
        assert (got.consumer_id, got.model_hash, got.batch, got.frames_before) == (
            4,
            sent.model_hash,
            7,
            70,
        )
        assert got.published == pytest.approx(1000.5, abs=1e-6) and len(got) == 6
        for name in BATCH_FRAME_FIELDS:
            np.testing.assert_array_equal(got.frames[name], sent.frames[name])
        assert got.unique_ids.dtype == np.int64 and got.frames["point"].dtype == np.int32
        np.testing.assert_array_equal(got.phase, sent.phase)
        if amplitude:
            np.testing.assert_array_equal(got.amplitude, sent.amplitude)
        else:
            assert got.amplitude is None

    def test_a_reused_value_takes_a_smaller_batch_whole(self):
        value = new_batch_value()
        write_result_batch(value, batch(8, amplitude=True))
        smaller = ResultBatch(**{**batch(3, seed=1).__dict__, "amplitude": None})
        write_result_batch(value, smaller)
        got = parse_result_batch(value)
        assert len(got) == 3 and got.amplitude is None
        np.testing.assert_array_equal(got.unique_ids, smaller.unique_ids)

    def test_arrays_that_do_not_fit_the_batch_are_refused(self):
        value = new_batch_value()
        write_result_batch(value, batch(4))
        value["x"] = np.zeros(3)
        with pytest.raises(ValueError, match="a batch of 4 frames of 3x5"):
            parse_result_batch(value)

    def test_frame_tags_are_read_in_their_declared_order(self):
        frame = ntnda(np.zeros((8, 8), np.int16), 42, {"point": 3, "y": -0.5, "x": 1.5})
        frame["dataTimeStamp"] = pva.PvTimeStamp(1000.25)
        tags = dict(zip(FRAME_TAGS, read_frame_tags(frame), strict=True))
        assert tags == {"uniqueId": 42, "frameTime": 1000.25, "x": 1.5, "y": -0.5, "point": 3}
        plain = ntnda(np.zeros((2, 2), np.int16), 1)
        bare = dict(zip(FRAME_TAGS, read_frame_tags(plain), strict=True))
        assert np.isnan(bare["x"]) and np.isnan(bare["y"]) and bare["point"] == -1

    def test_the_batch_channel_sits_beside_the_output(self):
        channels = WorkerChannels.of("inference", 3)
        assert channels.batch == sibling_channel(channels.output, "batch") == "inference:3:batch"


class TestFrameOutputGate:
    def test_every_and_none(self):
        assert all(FrameOutputGate("every", 1.0).wants(t) for t in range(5))
        assert not any(FrameOutputGate("none", 1.0).wants(t) for t in range(5))

    def test_a_preview_takes_the_first_frame_of_each_period(self):
        gate = FrameOutputGate("preview", 0.25)
        times = [10.0, 10.1, 10.2, 10.26, 10.3, 10.6]
        assert [gate.wants(t) for t in times] == [True, False, False, True, False, True]


def test_throttle_counts_what_it_holds_back(caplog):
    throttle = Throttle(logging.getLogger("throttle-test"), period=0.2)
    with caplog.at_level(logging.WARNING, logger="throttle-test"):
        for _ in range(5):
            throttle.warning("k", "bad frame")
        time.sleep(0.25)
        throttle.warning("k", "bad frame")
    assert [r.getMessage() for r in caplog.records] == [
        "bad frame",
        "bad frame (4 more like it since the last report)",
    ]
