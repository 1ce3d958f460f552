"""Pools run as a site runs them on its GPU hosts: ``ptychonn-ophyd pool --consumer-ids``
processes, each a host's share, started before the session and stopped with SIGTERM."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from pva_consumers import process_gone


def share_command(
    model: Path,
    input_channel: str,
    prefix: str,
    log_dir: Path,
    consumer_ids: Sequence[int],
    n_workers: int,
    *extra: str,
) -> list[str]:
    """``ptychonn-ophyd pool`` for one host's share, one CPU thread a worker."""
    return [
        *(sys.executable, "-m", "ptychonn_ophyd", "pool", "--model", str(model)),
        *("--input-channel", input_channel, "--output-prefix", prefix),
        *("--workers", str(n_workers), "--consumer-ids", ",".join(map(str, consumer_ids))),
        *("--backend", "onnxruntime", "--threads", "1", "--log-dir", str(log_dir)),
        *("--no-wait-for-input", "--report-period", "1", *extra),
    ]


class Services:
    """Pool shares started as services; :meth:`close` stops them with SIGTERM (SIGKILL
    after a minute), so a failing test leaves none behind."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen] = []

    def start(self, command: list[str], wrapper: Sequence[str] = ()) -> subprocess.Popen:
        """Start ``command`` (inside ``wrapper``, e.g. ``ip netns exec NS``) and return
        once it prints its ready line.

        Raises
        ------
        AssertionError
            It ended without one; its error output is in the message.
        """
        service = subprocess.Popen(
            [*wrapper, *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.running.append(service)
        ready = service.stdout.readline()
        assert " ready: " in ready, f"the pool service did not start: {service.stderr.read()}"
        return service

    def close(self) -> None:
        for service in self.running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(service.pid, signal.SIGTERM)
        for service in self.running:
            try:
                service.wait(60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(service.pid, signal.SIGKILL)
                service.wait(10)
            assert process_gone(service.pid)


@contextlib.contextmanager
def services() -> Iterator[Services]:
    running = Services()
    try:
        yield running
    finally:
        running.close()
