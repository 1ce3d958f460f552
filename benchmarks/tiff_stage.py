"""Loop the seed's two-stage run and count the TIFFs its second stage writes.

Each loop starts, with fresh channel names, real processes only:

1. the seed's first stage, ``pvapy-hpc-consumer --n-consumers 2`` running
   :class:`~ptychonn_ophyd.processor.InferPtychoNNImageProcessor` on ``<p>:image``;
2. the seed's TIFF stage, ``pvapy-hpc-consumer --input-channel '<p>:*:output'
   --processor-class pvapy.hpc.adOutputFileProcessor.AdOutputFileProcessor
   --n-consumers 2`` (pvapy's fork mode, as in the seed);
3. ``pvapy-hpc-sim-server`` (``pvapy-ad-sim-server``) sending ``--frames`` 128x128 int16
   frames at ``--rate`` Hz,

waits until every frame the simulator sent has been published and saved (or a deadline
passes), stops everything with SIGINT and prints one line per loop: frames sent,
results published, TIFFs written, and each file consumer's ``receiverStats``.  A loop
that writes fewer TIFFs than frames sent fails; the exit status is the number of failed
loops.

Examples
--------
Twenty short loops, then the same under a CPU hog (``yes``, one per core)::

    python benchmarks/tiff_stage.py --loops 20 --frames 40
    python benchmarks/tiff_stage.py --loops 20 --frames 40 --hog

The issue's long form (301 frames at 100 Hz, the edgePtychoNN batch-8 model)::

    python benchmarks/tiff_stage.py --loops 6 --frames 301 \\
        --model ../shared/models/edgeptychonn_ptychoNN_8.onnx
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ptychonn_ophyd.loopback import use_loopback

PROCESSOR = "ptychonn_ophyd.processor.InferPtychoNNImageProcessor"
FILE_PROCESSOR = "pvapy.hpc.adOutputFileProcessor.AdOutputFileProcessor"
STATUS = "field(userStats,processorStats,receiverStats,publisherStats)"


@dataclass
class Loop:
    """The outcome of one two-stage run."""

    sent: int = 0
    published: int = 0
    tiffs: int = 0
    seconds: float = 0.0
    files: list[dict] = field(default_factory=list)
    error: str = ""
    connected: bool = False
    probed: list[tuple] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.error and self.sent > 0 and self.tiffs == self.sent

    def line(self) -> str:
        files = " ".join(
            f"[{f.get('nReceived')}/{f.get('nProcessed')}/{f.get('nFilesSaved')}]"
            for f in self.files
        )
        return (
            f"{'ok  ' if self.ok else 'FAIL'} sent {self.sent:4d} published {self.published:4d} "
            f"tiffs {self.tiffs:4d} in {self.seconds:5.1f} s  TIFF stage connected before "
            f"frames: {'yes' if self.connected else 'no '}  file consumers "
            f"(received/processed/saved) {files}"
            + (f" probe (updates, first uniqueId) {self.probed}" if self.probed else "")
            + f" {self.error}"
        )


def consumer(args: list[str], log: Path) -> subprocess.Popen:
    """A stock ``pvapy-hpc-consumer`` in a session of its own."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pvapy.cli.hpcConsumer", *args, "--disable-curses"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGINT to the process group (pvapy stops cleanly), SIGKILL after ``timeout`` s."""
    for sig, wait in ((signal.SIGINT, timeout), (signal.SIGKILL, 5.0)):
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(wait)


class Watch:
    """The latest value of a status channel (a monitor, so reading never blocks)."""

    def __init__(self, name: str) -> None:
        import pvaccess as pva

        self.value: dict | None = None
        self._channel = pva.Channel(name)
        self._channel.monitor(self._update, STATUS)

    def _update(self, pv) -> None:
        self.value = pv.toDict()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._channel.stopMonitor()


class Probe:
    """Counts the updates a plain monitor in this process receives on a channel."""

    def __init__(self, name: str) -> None:
        import pvaccess as pva

        self.count = 0
        self.first: int | None = None
        self._channel = pva.Channel(name)
        self._channel.monitor(self._update, "field(uniqueId)")

    def _update(self, pv) -> None:
        if self.first is None:
            self.first = pv["uniqueId"]
        self.count += 1

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._channel.stopMonitor()


def wait_until(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return bool(predicate())
        time.sleep(interval)
    return True


def one_loop(opts: argparse.Namespace, folder: Path) -> Loop:
    prefix = f"tiff{uuid.uuid4().hex[:8]}"
    out = folder / prefix
    out.mkdir()
    tiffs = out / "tiff"
    n = opts.consumers
    infer_args = [
        *("--input-channel", f"{prefix}:image"),
        *("--control-channel", f"{prefix}:*:control", "--status-channel", f"{prefix}:*:status"),
        *("--output-channel", f"{prefix}:*:output", "--processor-class", PROCESSOR),
        "--processor-args",
        json.dumps({"model": str(opts.model), "batch_size": opts.batch_size, "threads": 1}),
        *("--n-consumers", str(n), "--distributor-updates", str(opts.distributor_updates)),
        *("--report-period", "1", "--server-queue-size", "100", "--log-level", "info"),
    ]
    file_args = [
        *("--input-channel", f"{prefix}:*:output"),
        *("--control-channel", f"{prefix}:files:*:control"),
        *("--status-channel", f"{prefix}:files:*:status"),
        *("--processor-class", FILE_PROCESSOR, "--processor-args"),
        json.dumps(
            {
                "outputDirectory": str(tiffs),
                "outputFileNameFormat": "{uniqueId:06d}.{processorId}.tiff",
            }
        ),
        *("--n-consumers", str(n), "--report-period", "1", "--log-level", "info"),
        *("--server-queue-size", "100"),
        *opts.file_extra,
    ]
    infer_watch = [Watch(f"{prefix}:{k}:status") for k in range(1, n + 1)]
    file_watch = [Watch(f"{prefix}:files:{k}:status") for k in range(1, n + 1)]
    probes = [Probe(f"{prefix}:{k}:output") for k in range(1, n + 1)] if opts.probe else []
    processes: list[subprocess.Popen] = []
    loop = Loop()
    started = time.monotonic()
    try:
        # The simulator first, as in the seed: its record is there before the consumers
        # search for it, and its frames start after --start-delay s.
        sim = subprocess.Popen(
            [
                *(sys.executable, "-m", "pvapy.cli.adSimServer", "-cn", f"{prefix}:image"),
                *("-nx", "128", "-ny", "128", "-dt", "int16", "-fps", str(opts.rate)),
                *("-nf", "10", "-rt", str((opts.frames - 1) / opts.rate - 0.005)),
                *("-std", str(opts.start_delay), "-shd", "0.5", "-rp", "0", "-dc"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        processes.append(sim)
        infer = consumer(infer_args, out / "infer.log")
        processes.append(infer)
        if opts.order == "files-first":
            processes.append(consumer(file_args, out / "files.log"))
        ready = wait_until(
            lambda: all(w.value and w.value["userStats"]["ready"] for w in infer_watch), 90
        )
        if not ready:
            loop.error = "PtychoNN consumers not ready"
            return loop
        if opts.order == "files-last":
            processes.append(consumer(file_args, out / "files.log"))
        if not wait_until(lambda: all(w.value for w in file_watch), 60):
            loop.error = "file consumers did not start"
            return loop
        # The documented order: frames only once the TIFF stage has its initial update.
        loop.connected = wait_until(
            lambda: all(w.value["receiverStats"].get("nReceived", 0) >= 1 for w in file_watch),
            opts.start_delay,
        )
        if sim.poll() is None and not loop.connected:
            loop.error = "TIFF stage not connected when frames started"
        try:
            sim_out, _ = sim.communicate(timeout=opts.start_delay + opts.frames / opts.rate + 60)
        except subprocess.TimeoutExpired:
            loop.error = "simulator did not end"
            return loop
        (out / "sim.log").write_text(sim_out)
        match = re.search(r"Published frames:\s+(\d+)", sim_out)
        loop.sent = int(match.group(1)) if match else 0

        def published() -> int:
            return sum(
                (w.value or {}).get("userStats", {}).get("published", 0) for w in infer_watch
            )

        def n_tiffs() -> int:
            return len(list(tiffs.glob("*.tiff"))) if tiffs.is_dir() else 0

        wait_until(lambda: published() >= loop.sent, 30)
        wait_until(lambda: n_tiffs() >= loop.sent, opts.deadline)
        loop.published = published()
        loop.tiffs = n_tiffs()
        time.sleep(1.2)  # one report period, so the file consumers' stats are current
        loop.files = [dict((w.value or {}).get("receiverStats", {})) for w in file_watch]
        for f, w in zip(loop.files, file_watch, strict=True):
            f["nProcessed"] = (w.value or {}).get("processorStats", {}).get("nProcessed")
            f["nFilesSaved"] = (w.value or {}).get("userStats", {}).get("nFilesSaved")
        return loop
    finally:
        loop.seconds = time.monotonic() - started
        for watch in infer_watch + file_watch + probes:
            watch.close()
        loop.probed = [(p.count, p.first) for p in probes]
        for process in reversed(processes):
            stop(process)
        if not loop.ok:
            loop.error += f" (logs in {out})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loops", type=int, default=20)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--consumers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--distributor-updates", type=int, default=8)
    parser.add_argument(
        "--start-delay", type=float, default=8.0, help="the simulator's -std (seed: 10 s)"
    )
    parser.add_argument("--deadline", type=float, default=20.0, help="s to wait for TIFFs")
    parser.add_argument("--model", type=Path, default=None, help="default: the bundled demo")
    parser.add_argument(
        "--order",
        choices=["files-first", "files-last"],
        default="files-first",
        help="start the TIFF stage with the first stage, or once it is ready",
    )
    parser.add_argument("--hog", action="store_true", help="run one `yes` per core meanwhile")
    parser.add_argument("--probe", action="store_true", help="also monitor outputs here")
    parser.add_argument("--keep", action="store_true", help="keep every loop's logs")
    parser.add_argument(
        "--file-extra", nargs=argparse.REMAINDER, default=[], help="more TIFF-stage options"
    )
    opts = parser.parse_args(argv)
    if opts.model is None:
        from ptychonn_ophyd.models.bundled import demo_model_path

        opts.model = demo_model_path()
    use_loopback()
    hogs = []
    if opts.hog:
        hogs = [
            subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) for _ in range(os.cpu_count() or 1)
        ]
    failed = 0
    folder = Path(tempfile.mkdtemp(prefix="tiff-stage-"))
    try:
        for i in range(opts.loops):
            loop = one_loop(opts, folder)
            failed += not loop.ok
            print(f"loop {i + 1:3d}: {loop.line()}", flush=True)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    print(f"{failed} of {opts.loops} loops lost TIFFs (logs under {folder})")
    return failed


if __name__ == "__main__":
    sys.exit(main())
