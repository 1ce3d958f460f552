"""Stock ``pvapy-hpc-consumer`` processes for the streaming tests, and their clean-up."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from ptychonn_ophyd.pool.member import ChannelWatch
from ptychonn_ophyd.wire import STATUS_REQUEST

PROCESSOR = "ptychonn_ophyd.processor.InferPtychoNNImageProcessor"


def consumer_args(
    prefix: str,
    input_channel: str,
    processor_args: dict,
    processor: str = PROCESSOR,
    extra: tuple[str, ...] = (),
) -> list[str]:
    """Arguments of one consumer on ``input_channel`` publishing on ``<prefix>:*:output``.

    The input's server queues 100 frames per consumer, as in the seed's command line, so
    a burst of test frames on a busy machine is queued rather than overwritten.
    """
    return [
        "--input-channel",
        input_channel,
        "--output-channel",
        f"{prefix}:*:output",
        "--status-channel",
        f"{prefix}:*:status",
        "--control-channel",
        f"{prefix}:*:control",
        "--processor-class",
        processor,
        "--processor-args",
        json.dumps(processor_args),
        "--report-period",
        "0.2",
        "--report-stats",
        "user",
        "--log-level",
        "info",
        "--server-queue-size",
        "100",
        "--disable-curses",
        *extra,
    ]


class Consumer:
    """A ``pvapy-hpc-consumer`` started by a test; :meth:`stop` ends it whatever happened."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pvapy.cli.hpcConsumer", *args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        """Everything the consumer printed so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGINT (pvapy stops cleanly), SIGKILL after ``timeout`` s; the exit status."""
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGKILL, 5.0)):
            if self.process.poll() is not None:
                break
            with_group(self.process.pid, sig)
            try:
                self.process.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        return self.process.returncode


def with_group(pid: int, sig: int) -> None:
    """Send ``sig`` to the process group led by ``pid``, if it still exists."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


_watches: dict[str, ChannelWatch] = {}


def status(channel: str) -> dict | None:
    """A worker's latest status as a dict, or ``None`` before it published one."""
    if channel not in _watches:
        _watches[channel] = ChannelWatch(channel, STATUS_REQUEST)
    return _watches[channel].value


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.1) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` s pass; its last truth."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return bool(predicate())
        time.sleep(interval)


def process_gone(pid: int) -> bool:
    """Whether ``pid`` no longer runs (a zombie waiting to be reaped counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def connected(channel: str) -> bool:
    """Whether the consumer behind status ``channel`` has its input's initial update."""
    stats = status(channel)
    return bool(stats) and stats["receiverStats"]["nReceived"] >= 1


def ready(channel: str) -> bool:
    """Whether the consumer behind status ``channel`` has its engine ready and its input."""
    stats = status(channel)
    return bool(stats) and stats["userStats"]["ready"] and connected(channel)
