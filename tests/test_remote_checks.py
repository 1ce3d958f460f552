"""What a session checks in workers it attaches to, without processes."""

from __future__ import annotations

import json

import pytest

from ptychonn_ophyd.errors import ModelError
from ptychonn_ophyd.models import model_hash_of, open_model
from ptychonn_ophyd.pool.remote import mismatches
from ptychonn_ophyd.settings import PoolConfig, parse_args
from ptychonn_ophyd.worker.processor import published_identity


@pytest.fixture
def config(small_phase_onnx) -> PoolConfig:
    return PoolConfig(model=small_phase_onnx, input_channel="det:image", n_workers=4, attach=True)


def reported(config: PoolConfig, consumer_id: int = 1, **changes) -> dict:
    """The settings worker ``consumer_id`` of ``config``'s pool publishes, with ``changes``."""
    args = parse_args(config.processor_args(consumer_id, 1))
    published = published_identity(args, config.channel_of(consumer_id))["settings"]
    return {**json.loads(published), **changes}


def test_a_worker_of_the_same_pool_agrees_whatever_its_host_chose_for_itself(config):
    assert mismatches(config, 1, reported(config, batch_size=64, backend="torch", gpu=3)) == []


def test_each_setting_that_decides_frames_or_results_is_named_with_both_values(config):
    wrong = reported(
        config,
        input_channel="other:image",
        n_workers=2,
        preprocess={"crop": [2, 2, 2, 2], "bin": 1, "threshold": None},
    )
    assert mismatches(config, 1, wrong) == [
        "input_channel is 'other:image' there, 'det:image' here",
        "n_workers is 2 there, 4 here",
        "preprocess is {'crop': [2, 2, 2, 2], 'bin': 1, 'threshold': None} there, "
        "{'crop': [0, 0, 0, 0], 'bin': 1, 'threshold': None} here",
    ]


def test_each_worker_of_a_pool_on_several_channels_is_checked_against_its_own(config):
    scattered = config.model_copy(update={"input_channel": "det:a,det:b"})
    assert mismatches(scattered, 3, reported(scattered, 3)) == []
    assert mismatches(scattered, 1, reported(scattered, 3)) == [
        "input_channel is 'det:b' there, 'det:a' here"
    ]


def test_a_worker_that_publishes_no_settings_is_not_taken_for_a_match(config):
    assert mismatches(config, 1, {}) == [
        "it publishes no settings (a ptychonn-ophyd older than this session's?)"
    ]


def test_the_model_hash_of_a_file_is_the_one_its_model_carries(small_phase_onnx, tmp_path):
    assert model_hash_of(small_phase_onnx) == open_model(small_phase_onnx).model_hash
    with pytest.raises(ModelError, match="no such model file"):
        model_hash_of(tmp_path / "gone.onnx")
