"""One settings schema: processor args, pool config, CLI options and device signals agree."""

import argparse

import pytest
from frames import poisson_frames
from pva_collector import Collector
from pva_source import FrameSource

from ptychonn_ophyd.cli.options import add_settings_options, settings_from_args
from ptychonn_ophyd.errors import ArgsError
from ptychonn_ophyd.pool import ConsumerPool
from ptychonn_ophyd.pool.process import consumer_command
from ptychonn_ophyd.session.device import PtychoNNDetector
from ptychonn_ophyd.settings import PoolConfig, auto_gpu, parse_args


def test_processor_args_of_a_pool_are_what_a_worker_accepts(small_phase_onnx):
    config = PoolConfig(
        model=small_phase_onnx, input_channel="ad:image", n_workers=2, gpus="0,1", batch_size=4
    )
    for consumer in (1, 2):
        args = parse_args(config.processor_args(consumer, parent_pid=1))
        assert args.batch_size == 4 and args.gpu == consumer - 1 and args.parent_pid == 1


def test_a_cli_option_and_a_device_signal_come_from_each_setting(small_phase_onnx):
    parser = argparse.ArgumentParser()
    add_settings_options(parser)
    args = parser.parse_args(
        ["--model", str(small_phase_onnx), "--input-channel", "x", "--receiver-queue-size", "64"]
    )
    from_cli = PoolConfig(**settings_from_args(args))
    device = PtychoNNDetector(name="inference", **from_cli.model_dump())

    assert device.receiver_queue_size.get() == 64
    assert device.pool_config() == from_cli
    assert set(PoolConfig.model_fields) <= set(device.configuration_attrs)


def test_workers_are_dealt_to_several_input_channels_in_equal_groups(small_phase_onnx):
    config = PoolConfig(
        model=small_phase_onnx, input_channel="det:a, det:b", n_workers=4, distributor_updates=2
    )
    assert config.input_channels == ("det:a", "det:b")
    assert [config.channel_of(k) for k in (1, 2, 3, 4)] == ["det:a", "det:a", "det:b", "det:b"]
    options = config.consumer_options(3)
    assert options["oid-offset"] == 7  # as for 4 workers on one channel
    assert (
        options["distributor-group"] == "det_b" != config.consumer_options(2)["distributor-group"]
    )
    command = consumer_command(3, config.channel_of(3), "p", {}, {})
    assert command[command.index("--input-channel") + 1] == "det:b"


@pytest.mark.parametrize(
    ("channels", "workers", "why"),
    [
        ("det:a,det:b", 3, r"^n_workers \(3\) is not a multiple of the 2 input channels"),
        ("det:a,,det:b", 2, r"^input_channel: 'det:a,,det:b' has an empty channel name$"),
    ],
)
def test_input_channels_that_workers_cannot_share_are_refused_in_one_line(
    small_phase_onnx, channels, workers, why
):
    device = PtychoNNDetector(
        name="inference", model=str(small_phase_onnx), input_channel=channels, n_workers=workers
    )
    with pytest.raises(ArgsError, match=why) as error:
        device.pool_config()
    assert "\n" not in str(error.value)


def test_a_bad_setting_is_named_in_one_line(small_phase_onnx):
    device = PtychoNNDetector(name="inference", model=str(small_phase_onnx), input_channel="x")
    device.gpus.put("zero")
    with pytest.raises(ArgsError, match=r"^gpus.*") as error:
        device.pool_config()
    assert "\n" not in str(error.value)


@pytest.mark.processes
def test_the_receiver_queue_option_reaches_pvapy_and_frames_flow(
    tmp_path, channel_prefix, small_phase_onnx
):
    config = PoolConfig(
        model=small_phase_onnx,
        input_channel=f"{channel_prefix}:image",
        output_prefix=channel_prefix,
        backend="onnxruntime",
        threads=1,
        receiver_queue_size=256,
        log_dir=tmp_path,
    )
    command = consumer_command(
        1, config.input_channel, channel_prefix, {}, config.consumer_options(1)
    )
    assert command[command.index("--receiver-queue-size") + 1] == "256"
    with FrameSource(config.input_channel) as source, ConsumerPool(config) as pool:
        pool.start(timeout=60)
        collector = Collector(pool.output_channels)
        ids = source.publish_frames(poisson_frames(40, seed=2), rate_hz=100)
        assert collector.wait_for(40, timeout=30)
        assert sorted(collector.ids()) == ids


@pytest.mark.parametrize(
    ("gpu_count", "expected"),
    [(1, ["cuda:0"] * 4), (2, ["cuda:0", "cuda:1"] * 2), (4, [f"cuda:{k}" for k in range(4)])],
)
def test_auto_gpu_puts_consumer_k_on_gpu_k_minus_one_mod_the_count(gpu_count, expected):
    assert [auto_gpu(k, gpu_count) for k in (1, 2, 3, 4)] == expected


def test_auto_gpu_without_a_gpu_leaves_the_choice_to_the_engine():
    assert auto_gpu(3, 0) == "auto"


def test_a_gpu_list_is_dealt_round_robin_and_an_index_is_honoured(small_phase_onnx):
    config = PoolConfig(model=small_phase_onnx, input_channel="x", n_workers=3, gpus=[2, 5])
    gpus = [config.processor_args(k, parent_pid=1)["gpu"] for k in (1, 2, 3)]
    assert gpus == [2, 5, 2]
    for k, gpu in zip((1, 2, 3), gpus, strict=True):
        args = parse_args({**config.processor_args(k, parent_pid=1), "backend": "torch"})
        assert args.engine_device(k) == f"cuda:{gpu}"
    single = PoolConfig(model=small_phase_onnx, input_channel="x", gpus=1)
    assert single.processor_args(1, parent_pid=1)["gpu"] == 1
