"""benchmarks/native_pipeline.py: its pvxs receiver decodes what a pvapy server sends,
frame for frame, and a whole run through it accounts for every frame."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pvaccess as pva
import pytest

from ptychonn_ophyd.loopback import LOOPBACK_ENV
from ptychonn_ophyd.sim.server import make_frame
from ptychonn_ophyd.wire import stamp

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ to build the receiver"),
]

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "native_pipeline.py"


@pytest.fixture(scope="module")
def native():
    """The benchmark script as the module ``native_pipeline``."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        yield importlib.import_module("native_pipeline")
    finally:
        sys.path.remove(str(SCRIPT.parent))


@pytest.fixture(scope="module")
def receiver_library(native, tmp_path_factory):
    return native.load_receiver(native.build_receiver(tmp_path_factory.mktemp("receiver")))


def taken(receiver, n_frames: int, timeout: float = 30.0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(frames, tags)`` copies of the batches taken until ``n_frames`` have come."""
    batches, got, deadline = [], 0, time.monotonic() + timeout
    while got < n_frames and time.monotonic() < deadline:
        if (batch := receiver.take(0.1)) is not None:
            buffer, n = batch
            batches.append((receiver.frames[buffer, :n].copy(), receiver.tags[buffer, :n].copy()))
            receiver.release(buffer)
            got += n
    return batches


@pytest.mark.parametrize("dtype", ["int16", "uint8", "float32"])
def test_the_receiver_decodes_each_frame_its_tags_and_a_partial_batch(
    native, receiver_library, channel_prefix, dtype
):
    """Seven frames in batches of up to four, the last one partial, handed out after the
    batch timeout, with pixels, uniqueId, time and position as the server sent them."""
    channel = f"{channel_prefix}:{dtype}"
    rng = np.random.default_rng(1)
    images = (rng.random((7, 16, 16)) * 200).astype(dtype)
    server = pva.PvaServer()
    server.addRecord(channel, pva.NtNdArray(), None)
    server.start()
    first = make_frame(images[0], 0.5, -0.5, 0)
    stamp(first, 1, when=1000.0)
    server.update(channel, first)  # a monitor's first update: the value it connects to
    receiver = native.Receiver(receiver_library, channel, (16, 16), 4, 0.05, 100)
    try:
        deadline = time.monotonic() + 30
        while receiver.counts()["received"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert receiver.counts()["received"] == 1, "the receiver never heard the channel"
        for k in range(1, 7):
            array = make_frame(images[k], 0.5 * (k + 1), -0.5 * (k + 1), k)
            stamp(array, k + 1, when=1000.0 + k)
            server.update(channel, array)
        batches = taken(receiver, 7)
    finally:
        receiver.close()
        server.stop()
    sizes = [len(frames) for frames, _ in batches]  # [4, 3] unless a frame came late
    assert sum(sizes) == 7 and max(sizes) <= 4, sizes
    frames = np.concatenate([f for f, _ in batches])
    tags = np.concatenate([t for _, t in batches])
    np.testing.assert_array_equal(frames, images.astype(np.float32))
    np.testing.assert_array_equal(tags[:, 0], np.arange(1, 8))  # uniqueId
    np.testing.assert_allclose(tags[:, 1], 1000.0 + np.arange(7), atol=1e-6)  # frame time
    np.testing.assert_allclose(tags[:, 2:5], [[0.5 * (k + 1), -0.5 * (k + 1), k] for k in range(7)])
    assert (np.diff(tags[:, 5]) >= 0).all()  # times of receipt, in order


@pytest.mark.processes
def test_a_run_through_the_native_worker_accounts_for_every_frame(tmp_path):
    out = tmp_path / "run.json"
    command = [sys.executable, str(SCRIPT), "--copy-model", "--backend", "onnxruntime"]
    command += ["--threads", "1", "--rate", "200", "--seconds", "1", "--json", str(out)]
    done = subprocess.run(
        command,
        cwd=tmp_path,
        env={**os.environ, **LOOPBACK_ENV},
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (trial,) = json.loads(out.read_text())["trials"]
    assert trial["sent"] > 0
    assert trial["distinct"] == trial["sent"]
    assert trial["lost"] == trial["not_in_time"] == trial["missed"] == 0
    assert trial["worker_cpu_ms"] > 0
