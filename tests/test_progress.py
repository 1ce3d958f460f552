"""The scan's progress at the terminal: the pool's start, then a bar over points or frames."""

import io
import os
import re
import threading
import time

import pytest
from bluesky_world import beamline

from ptychonn_ophyd.session.plans import scan_with_inference
from ptychonn_ophyd.session.progress import ScanProgress, show_progress


def grid(w, n: int, **kw):
    return scan_with_inference(w.det, w.inference, w.sy, -0.3, 0.3, n, w.sx, -0.3, 0.3, n, **kw)


@pytest.mark.processes
def test_the_pool_start_then_a_bar_over_points_or_frames(
    tmp_path, channel_prefix, small_phase_onnx
):
    written = io.StringIO()  # not a terminal: each bar's final line only
    with beamline(tmp_path, channel_prefix, small_phase_onnx) as w:
        show_progress(w.RE, w.inference, written)
        w.RE(grid(w, 2))
        w.det.fly_rate_hz = 200
        w.RE(grid(w, 3, mode="fly"))

    said = written.getvalue().splitlines()
    lines = [line for line in said if not line.startswith("inference: waiting for worker 1")]
    starting = f"inference: starting 1 worker on {channel_prefix}:image at "
    assert [line.startswith(starting) for line in lines] == [1, 0, 0, 1, 0, 0]
    assert re.fullmatch(r".* at \d\d:\d\d:\d\d \(model small_phase\.onnx, onnxruntime\)", lines[0])
    assert re.fullmatch(r"inference: 1 worker ready in \d+\.\d s \(.*onnxruntime.*\)", lines[1])
    assert re.fullmatch(r"scan 1: 100%\|.*\| 4/4 \[.*point.*\]", lines[2])
    assert re.fullmatch(r"scan 2: 100%\|.*\| 9/9 \[.*frame.*\]", lines[5])


@pytest.mark.processes
def test_on_a_terminal_the_bar_is_redrawn_while_a_fly_scan_runs(
    tmp_path, channel_prefix, small_phase_onnx
):
    primary, secondary = os.openpty()
    chunks: list[bytes] = []
    reader = threading.Thread(target=drain, args=(primary, chunks), daemon=True)
    reader.start()
    with (
        open(secondary, "w", encoding="utf-8") as terminal,
        beamline(tmp_path, channel_prefix, small_phase_onnx) as w,
    ):
        show_progress(w.RE, w.inference, terminal)
        w.det.fly_rate_hz = 10  # about a second of frames: several redraws
        w.RE(grid(w, 3, mode="fly"))
    reader.join(timeout=30)
    shown = b"".join(chunks).decode()

    redraws = re.findall(r"\rscan 1: +\d+%\|[^\r\n]*\| \d/9 \[", shown)
    assert redraws, shown
    assert re.search(r"\r\s*\rscan 1: 100%\|[^\r\n]*\| 9/9 \[[^\r\n]*frame[^\r\n]*\]\r?\n", shown)


class Terminal(io.StringIO):
    """What a terminal shows: carriage returns overwrite the line from its start."""

    def isatty(self) -> bool:
        return True

    def screen(self) -> list[str]:
        shown = []
        for line in self.getvalue().split("\n"):
            cells: list[str] = []
            for part_number, part in enumerate(line.split("\r")):
                column = 0 if part_number else len(cells)
                cells[column : column + len(part)] = part
            shown.append("".join(cells).rstrip())
        return shown


def test_a_step_scan_bar_stays_on_screen_between_points_and_off_the_table_lines():
    terminal = Terminal()
    progress = ScanProgress(terminal, period=0.25)
    points, samples = 30, []

    def sample(stop: threading.Event) -> None:
        while not stop.wait(0.02):
            samples.append(progress._shown > 0)

    progress("start", {"time": time.time(), "scan_id": 4, "num_points": points})
    progress("descriptor", {"name": "primary", "uid": "d"})
    stop = threading.Event()
    sampler = threading.Thread(target=sample, args=(stop,))
    sampler.start()
    for k in range(points):  # a point every 0.1 s, its table line printed after the bar's wipe
        time.sleep(0.1)
        progress("event", {"descriptor": "d"})
        terminal.write(f"| row {k} |\n")
    stop.set()
    sampler.join()
    progress("stop", {})
    visible = sum(samples) / len(samples)

    rows = [line for line in terminal.screen() if "row" in line]
    assert rows == [f"| row {k} |" for k in range(points)]
    assert visible > 0.5, f"the bar was on screen in {visible:.0%} of the samples"
    assert terminal.screen()[-2].startswith("scan 4: 100%|")


def drain(fd: int, chunks: list[bytes]) -> None:
    """Read a pseudo-terminal until its other end is closed."""
    try:
        while data := os.read(fd, 4096):
            chunks.append(data)
    except OSError:  # EIO: the terminal side closed
        pass
    finally:
        os.close(fd)
