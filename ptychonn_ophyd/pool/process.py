"""One ``pvapy-hpc-consumer`` process running the PtychoNN processor, seen from its parent:
its command line, log file, status and lifetime."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ptychonn_ophyd.pool.member import Member
from ptychonn_ophyd.wire import FinalCounts, WorkerChannels, parse_final_counts

PROCESSOR_CLASS = "ptychonn_ophyd.processor.InferPtychoNNImageProcessor"
CONSUMER_MODULE = "pvapy.cli.hpcConsumer"
"""pvapy's own ``pvapy-hpc-consumer``, run with this interpreter so the venv is the same."""


class Worker(Member):
    """A consumer process this pool starts: its command line, log file and lifetime.

    The process runs in a session of its own, so a Ctrl-C in the parent's terminal
    reaches the parent only; the parent decides when workers stop.
    """

    def __init__(
        self, consumer_id: int, command: list[str], log_path: Path, channels: WorkerChannels
    ) -> None:
        super().__init__(consumer_id, channels)
        self.command = command
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def name(self) -> str:
        return f"worker {self.consumer_id} (pid {self.pid or 'not started'})"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def launch(self) -> None:
        """Start the process, its output going to :attr:`log_path`."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def exit_code(self) -> int | None:
        """The exit status once the process has ended, else ``None``."""
        return self.process.poll() if self.process else None

    def kill(self, sig: int) -> None:
        """Send ``sig`` to the worker's process group."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the process to end; whether it has."""
        if self.process is None:
            return True
        try:
            self.process.wait(max(timeout, 0.0))
        except subprocess.TimeoutExpired:
            return False
        return True

    def final_counts(self) -> FinalCounts | None:
        """The counts the worker wrote as it stopped; ``None`` when it did not (killed,
        died, or still running)."""
        try:
            return parse_final_counts(_read_end(self.log_path, LOG_TAIL_BYTES))
        except OSError:
            return None

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` meaningful lines of the worker's output.

        pvapy prints the statistics every report period as a multi-line dict, which
        would fill any tail; those reports are left out (the status channel has the
        counts), and lines are cut at :data:`LOG_LINE_CHARS` characters.  Only the
        file's last :data:`LOG_TAIL_BYTES` are read.
        """
        try:
            text = _read_end(self.log_path, LOG_TAIL_BYTES)
        except OSError as err:
            return f"(no log: {err})"
        kept = meaningful_lines(text.splitlines())[-lines:]
        return "\n".join(_shortened(line) for line in kept).rstrip() or "(the log is empty)"


LOG_TAIL_BYTES = 1 << 20
"""How much of the end of a worker's log :meth:`Worker.log_tail` reads."""
LOG_LINE_CHARS = 400
"""Longest log line :meth:`Worker.log_tail` shows whole."""


def meaningful_lines(lines: list[str]) -> list[str]:
    """``lines`` without pvapy's statistics reports.

    A report is a pretty-printed dict: a line starting ``{`` and the indented lines
    after it until its braces close.  A report cut off by the process's death ends
    at the first line that is not indented.
    """
    kept, depth = [], 0
    for line in lines:
        if depth > 0 and not line.startswith((" ", "\t")):
            depth = 0  # a report cut short: this line is not part of it
        if depth == 0 and not line.startswith("{"):
            kept.append(line)
            continue
        depth = max(depth, 0) + line.count("{") - line.count("}")
    return kept


def _read_end(path: Path, n_bytes: int) -> str:
    """The last ``n_bytes`` of a text file, from the first whole line among them."""
    with open(path, "rb") as file:
        size = file.seek(0, os.SEEK_END)
        file.seek(max(size - n_bytes, 0))
        data = file.read()
    if size > n_bytes:
        data = data.partition(b"\n")[2]
    return data.decode(errors="replace")


def _shortened(line: str) -> str:
    if len(line) <= LOG_LINE_CHARS:
        return line
    return f"{line[:LOG_LINE_CHARS]}... ({len(line) - LOG_LINE_CHARS} more characters)"


def consumer_command(
    consumer_id: int,
    input_channel: str,
    prefix: str,
    processor_args: dict,
    options: dict[str, object],
) -> list[str]:
    """The ``pvapy-hpc-consumer`` command line of one worker.

    ``options`` are further ``--name value`` pairs (``None`` values left out).
    """
    command = [sys.executable, "-m", CONSUMER_MODULE, "--input-channel", input_channel]
    for option, pattern in WorkerChannels.patterns(prefix).items():
        command += [f"--{option}", pattern]
    command += [
        "--processor-class",
        PROCESSOR_CLASS,
        "--processor-args",
        json.dumps(processor_args),
        "--consumer-id",
        str(consumer_id),
        "--disable-curses",
    ]
    for name, value in options.items():
        if value is not None:
            command += [f"--{name}", str(value)]
    return command


def terminate(workers: list[Worker], timeout: float) -> None:
    """Stop ``workers``: SIGINT (pvapy then stops cleanly), SIGKILL after ``timeout`` s."""
    for worker in workers:
        worker.kill(signal.SIGINT)
    deadline = time.monotonic() + timeout
    for worker in workers:
        if not worker.wait(deadline - time.monotonic()):
            worker.kill(signal.SIGKILL)
            worker.wait(5.0)
