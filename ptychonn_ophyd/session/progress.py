"""What a scan is doing, said at the terminal: the pool's start, then a bar over the scan.

The IPython profile and the demo both use it::

    progress = show_progress(RE, inference)
    RE(scan_with_inference(det, inference, sy, -1, 1, 9, sx, -1, 1, 9))

    inference: starting 1 worker on sim:det:image at 14:02:11 (model demo.onnx, auto)
    inference: 1 worker ready in 4.2 s (onnxruntime CPU fp32, default threads)
    scan 7: 100%|██████████| 81/81 [00:09<00:00,  8.61point/s]

A step scan's bar counts its points (primary events); a fly scan has one event, at its
end, so its bar counts the frames the inference device has inferred in this scan.
Subscribe it before a BestEffortCallback: the bar is wiped before each document, so
the table's lines print on a clean line and the bar is drawn again below them.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import IO, TYPE_CHECKING, Any

from bluesky import RunEngine
from tqdm import tqdm

from ptychonn_ophyd.run_schema import FLY_FRAMES_KEY

if TYPE_CHECKING:
    from ptychonn_ophyd.session.device import PtychoNNDetector

QUIET_S = 0.02
"""The bar, wiped for each document, is drawn again this long after the last one: by then
the subscribers after it (called in the same thread, at once) have printed their line,
so none lands on the bar's line, and the bar is gone for no longer than that."""


class ScanProgress:
    """A RunEngine subscription drawing one bar per run; it also says the pool's start.

    Parameters
    ----------
    file
        Where to write (default: ``sys.stderr``, as tqdm does).
    period
        Seconds between two redraws of the bar.

    On a terminal the bar is redrawn in place; elsewhere (a log, a pipe) only its final
    line is written, once, when the run stops.
    """

    def __init__(self, file: IO[str] | None = None, period: float = 0.25) -> None:
        self.file = file or sys.stderr
        self.period = period
        self.inference: PtychoNNDetector | None = None
        self._live = bool(getattr(self.file, "isatty", lambda: False)())
        self._lock = threading.Lock()
        self._bar: _Bar | None = None
        self._primary: set[str] = set()
        self._last_document = 0.0
        self._shown = 0
        self._done = threading.Event()

    def follow(self, inference: PtychoNNDetector) -> None:
        """Count ``inference``'s results in fly scans, and say its pool's start here."""
        self.inference = inference
        inference.announce = self.say

    def say(self, line: str) -> None:
        """Write ``line`` above the bar."""
        with self._lock:
            self._clear()
            self.file.write(line + "\n")
            self.file.flush()

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        with self._lock:
            self._last_document = time.monotonic()
            self._clear()
            if name == "start":
                self._start(doc)
            elif name == "descriptor" and doc["name"] == "primary":
                self._primary.add(doc["uid"])
            elif name == "event" and self._bar and doc["descriptor"] in self._primary:
                self._bar.points += 1
            elif name == "stop" and self._bar:
                self._stop()

    def _start(self, doc: dict[str, Any]) -> None:
        inference = self.inference
        fly = doc.get("mode") == "fly" and inference is not None
        fly = fly and inference.name in doc.get("detectors", ())
        self._bar = _Bar(
            f"scan {doc.get('scan_id', '')}".strip(),
            doc.get(FLY_FRAMES_KEY) if fly else doc.get("num_points"),
            doc["time"],
            (lambda: inference.inferred_count) if fly else None,
        )
        self._primary = set()
        self._done = threading.Event()
        if self._live:
            threading.Thread(target=self._redraw, args=(self._done,), daemon=True).start()

    def _stop(self) -> None:
        self._done.set()
        self.file.write(self._bar.line() + "\n")
        self.file.flush()
        self._bar = None

    def _redraw(self, done: threading.Event) -> None:
        """While the run lasts, draw the bar :data:`QUIET_S` after a document wiped it,
        and every ``period`` s to move its counts and rate on."""
        drawn = 0.0
        while not done.wait(QUIET_S / 2):
            with self._lock:
                now = time.monotonic()
                quiet = now - self._last_document >= QUIET_S
                due = not self._shown or now - drawn >= self.period
                if self._bar is not None and quiet and due:
                    line = self._bar.line()
                    self.file.write("\r" + line.ljust(self._shown))
                    self.file.flush()
                    self._shown, drawn = len(line), now

    def _clear(self) -> None:
        if self._shown:
            self.file.write("\r" + " " * self._shown + "\r")
            self._shown = 0


class _Bar:
    """One run's progress: points seen, or frames counted by ``frames`` in a fly scan."""

    def __init__(self, name: str, total: int | None, started: float, frames: Any) -> None:
        self.name = name
        self.total = total
        self.started = started
        self.frames = frames
        self.points = 0

    def line(self) -> str:
        unit = "frame" if self.frames else "point"
        done = self.frames() if self.frames else self.points
        elapsed = max(time.time() - self.started, 0.0)
        return tqdm.format_meter(done, self.total, elapsed, prefix=self.name, unit=unit)


def show_progress(
    RE: RunEngine, inference: PtychoNNDetector | None = None, file: IO[str] | None = None
) -> ScanProgress:
    """Subscribe a :class:`ScanProgress` to ``RE``, following ``inference`` if given."""
    progress = ScanProgress(file)
    if inference is not None:
        progress.follow(inference)
    RE.subscribe(progress)
    return progress
