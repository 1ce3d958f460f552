"""Fixtures shared by the test suite: loopback PV Access, unique channels, small models."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pytest
from pva_source import FrameSource

from ptychonn_ophyd.loopback import use_loopback
from ptychonn_ophyd.pool import ConsumerPool
from ptychonn_ophyd.settings import PoolConfig

use_loopback()

SHARED_MODELS = Path(
    os.environ.get(
        "PTYCHONN_SHARED_MODELS", Path(__file__).resolve().parents[2] / "shared" / "models"
    )
)


@pytest.fixture
def channel_prefix() -> str:
    """A PV name prefix no other test uses, so tests cannot hear each other."""
    return f"test{uuid.uuid4().hex[:10]}"


def _random_state_dict(preset: str, seed: int) -> dict[str, np.ndarray]:
    from ptychonn_ophyd.models import PRESETS

    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in PRESETS[preset].parameter_shapes().items():
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        state[key] = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
    return state


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory):
    """Write a PtychoNN ``.pth`` (and ONNX export) of a preset with seeded random weights."""
    torch = pytest.importorskip("torch", reason="making .pth fixtures needs PyTorch")
    from ptychonn_ophyd.models import PRESETS, export_onnx_bytes

    def make(preset: str = "small_phase", seed: int = 0) -> tuple[Path, Path]:
        folder = tmp_path_factory.mktemp(f"{preset}-{seed}")
        state = _random_state_dict(preset, seed)
        pth = folder / f"{preset}.pth"
        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, pth)
        onnx = folder / f"{preset}.onnx"
        onnx.write_bytes(export_onnx_bytes(PRESETS[preset], state))
        return pth, onnx

    return make


@pytest.fixture(scope="session")
def small_phase_onnx(make_checkpoint) -> Path:
    """A dynamic-batch ONNX small phase model with random weights."""
    return make_checkpoint("small_phase", seed=1)[1]


@pytest.fixture
def shared_models() -> Path:
    """The published PtychoNN checkpoints beside the repository, or a clean skip."""
    if not SHARED_MODELS.is_dir():
        pytest.skip(f"published checkpoints not found at {SHARED_MODELS}")
    return SHARED_MODELS


@pytest.fixture
def source(channel_prefix):
    """A detector stand-in serving ``<prefix>:image``."""
    with FrameSource(f"{channel_prefix}:image") as frames:
        yield frames


@pytest.fixture
def make_pool(tmp_path, channel_prefix, small_phase_onnx):
    """Pools on the test's channels, stopped after the test whatever happened."""
    pools: list[ConsumerPool] = []

    def make(**settings) -> ConsumerPool:
        config = {
            "model": small_phase_onnx,
            "input_channel": f"{channel_prefix}:image",
            "output_prefix": channel_prefix,
            "backend": "onnxruntime",
            "threads": 1,
            "status_period": 0.2,
            "log_dir": tmp_path / f"pool-{len(pools) + 1}",
            **settings,
        }
        pool = ConsumerPool(PoolConfig(**config))
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        pool.stop()
