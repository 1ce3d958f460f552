"""The IPython profile and the examples, run as a new user runs them (fresh HOME)."""

import io
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pexpect
import pytest
from peers import user_environment
from screen import virtual_screen, windows_named

from ptychonn_ophyd.analysis.figure import covered
from ptychonn_ophyd.analysis.replay import load_inference
from ptychonn_ophyd.analysis.stitch import StitchedImage
from ptychonn_ophyd.catalog import open_existing_catalog

pytestmark = pytest.mark.processes

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "profile_ptychonn"
EXAMPLES = REPO / "examples"


@pytest.fixture
def user_env(tmp_path, small_phase_onnx):
    """Environment of a user with an empty home and the test model."""
    env = user_environment()
    env.update(HOME=str(tmp_path / "home"), PTYCHONN_MODEL=str(small_phase_onnx))
    (tmp_path / "home").mkdir()
    return env


def run(command: list[str], env: dict, cwd: Path, timeout: float = 240) -> str:
    """``command``'s output, stdout then stderr (where progress goes)."""
    done = subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{command} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def test_profile_starts_scans_and_replays(tmp_path, user_env, channel_prefix):
    profile = tmp_path / "profile_ptychonn"  # a copy: IPython writes its history there
    shutil.copytree(PROFILE, profile)
    user_env["PTYCHONN_SIM_CHANNEL"] = f"{channel_prefix}:image"
    code = (
        "print(type(RE).__name__, type(catalog).__name__, type(bec).__name__, "
        "type(RE.waiting_hook).__name__, det.name, inference.name, sep=',');"
        "uid, = RE(scan_with_inference(det, inference, sy, -0.2, 0.2, 2, sx, -0.2, 0.2, 2));"
        "from ptychonn_ophyd.run_schema import frame_accounting;"
        "print('stored', frame_accounting(catalog[uid])['stored']);"
        "print('png', replay(-1, catalog))"
    )
    ipython = [sys.executable, "-m", "IPython", "--no-banner", f"--profile-dir={profile}"]

    out = run([*ipython, "-c", code], user_env, tmp_path)

    assert (
        "RunEngine,CatalogOfBlueskyRuns,BestEffortCallback,ProgressBarManager,det,inference" in out
    )
    assert "stored 4" in out
    said = out.splitlines()
    assert any(line.startswith("inference: starting 1 worker on ") for line in said)
    assert any(re.match(r"inference: 1 worker ready in \d+\.\d s ", line) for line in said)
    assert any(re.match(r"scan 1: 100%\|.*\| 4/4 \[", line) for line in said)
    assert len(list(tmp_path.glob("scan-1-*.png"))) == 1
    state = tmp_path / "home" / ".local" / "share" / "ptychonn-ophyd"
    assert (state / "catalog" / "catalog.db").exists()
    logs = tmp_path / "home" / ".local" / "state" / "ptychonn-ophyd" / "logs"
    assert logs.is_dir() and list(logs.iterdir()) == []  # the warm pool ended cleanly at exit

    again = run([*ipython, "-c", "print('scan_id', RE.md['scan_id'])"], user_env, tmp_path)
    assert "scan_id 1" in again  # the RunEngine metadata persisted
    banner = again.splitlines()[:5]
    assert banner[0].startswith("ptychonn-ophyd: RE (scan ids in ") and "inference" in banner[0]
    assert banner[1].startswith(f"model {user_env['PTYCHONN_MODEL']}, backend auto, 1 worker")
    assert banner[2] == f"catalog {state / 'catalog'}"
    assert banner[3].startswith("try: RE(scan_with_inference(det, inference, sy")
    assert banner[4].startswith("live view on: auto figure, PVA ")


def test_profile_banner_warns_of_a_model_file_that_is_not_there(tmp_path, user_env):
    user_env["PTYCHONN_MODEL"] = str(tmp_path / "typo.onnx")
    profile = tmp_path / "profile_ptychonn"  # a copy: IPython writes its history there
    shutil.copytree(PROFILE, profile)
    ipython = [sys.executable, "-m", "IPython", "--no-banner", f"--profile-dir={profile}"]

    out = run([*ipython, "-c", "pass"], user_env, tmp_path)

    banner = out.splitlines()
    assert banner[1].startswith(
        f"model {tmp_path / 'typo.onnx'} (WARNING: no such file; set PTYCHONN_MODEL or "
    ), out


LIVE_WINDOW = "PtychoNN live mosaic"


def ask(shell: pexpect.spawn, line: str, answer: str, timeout: float = 240) -> re.Match:
    """Type ``line`` at the IPython prompt and wait for output matching ``answer``."""
    shell.sendline(line)
    shell.expect(answer, timeout=timeout)
    return shell.match


@pytest.mark.parametrize("asked", ["", "TkAgg"], ids=["default", "MPLBACKEND=TkAgg"])
def test_profile_on_a_screen_survives_three_scans_and_shows_the_live_mosaic(
    tmp_path, user_env, channel_prefix, asked
):
    if shutil.which("xdotool") is None:
        pytest.skip("xdotool is not installed (Debian: apt-get install xdotool)")
    profile = tmp_path / "profile_ptychonn"
    shutil.copytree(PROFILE, profile)
    scan = "uid, = RE(scan_with_inference(det, inference, sy, -0.2, 0.2, 3, sx, -0.2, 0.2, 3))"
    title = f"import matplotlib.pyplot as plt; print('title', plt.figure({LIVE_WINDOW!r}).axes"
    title += "[0].get_title(), 'of', uid[:8], 'on', matplotlib.get_backend())"
    with virtual_screen() as display:
        env = {**user_env, "DISPLAY": display, "PTYCHONN_SIM_CHANNEL": f"{channel_prefix}:image"}
        if asked:  # what matplotlib picks where Tk is installed and Qt is not
            env["MPLBACKEND"] = asked
        shell = pexpect.spawn(
            sys.executable,
            ["-m", "IPython", "--no-banner", f"--profile-dir={profile}", "--colors=NoColor"],
            env=env,
            cwd=tmp_path,
            encoding="utf-8",
            dimensions=(50, 250),
        )
        shell.logfile_read = transcript = io.StringIO()
        try:
            ask(shell, "print('ready', 6 * 7)", "ready 42")
            for _ in range(3):
                shell.sendline(scan)
                drawn = ask(
                    shell,
                    f"import matplotlib; {title}",
                    r"title (\w{8}): 9 patches of (\w{8}) on (\w+)",
                )
                assert drawn[1] == drawn[2] and drawn[3].lower() == "qtagg", transcript.getvalue()
                assert windows_named(display, LIVE_WINDOW), "the live window is not on the screen"
            shell.sendline("exit")
            shell.expect(pexpect.EOF, timeout=120)
        finally:
            shell.close(force=True)
    said = transcript.getvalue()
    assert shell.exitstatus == 0, said
    if asked:
        assert f"MPLBACKEND={asked} replaced by QtAgg: bluesky draws from its RunEngine" in said
    assert not re.search(r"Traceback|RuntimeError|main thread|apartment|did not get", said), said


def test_examples_step_and_fly_scan_with_going_on_scan_ids_then_replay_without_gaps(
    tmp_path, user_env, channel_prefix, small_phase_onnx
):
    python = [sys.executable]
    channel = ["--channel", f"{channel_prefix}:image"]
    scan = [*python, str(EXAMPLES / "scan.py"), "--model", str(small_phase_onnx), *channel]

    # RE.md persists where the IPython profile keeps it: scan ids go on
    for scan_id, mode, frames in ((1, [], 121), (2, ["--fly"], 225)):
        done = subprocess.run(
            [*scan, *mode], env=user_env, cwd=tmp_path, capture_output=True, text=True, timeout=240
        )
        assert done.returncode == 0, done.stderr
        assert f"scan {scan_id} run " in done.stdout, done.stdout
        assert f": {frames} sent, {frames} inferred, {frames} stored" in done.stdout
        assert "Attempting to set identical" not in done.stderr  # no live plots unless asked
    state = tmp_path / "home" / ".local" / "share" / "ptychonn-ophyd"
    assert (state / "runengine-metadata").is_dir()
    out = run([*python, str(EXAMPLES / "replay.py")], user_env, tmp_path)
    assert "225 frames" in out and "wrote replay-" in out

    saved = state / "catalog"
    pngs = tmp_path / "pngs"
    replay_all = [*python, str(EXAMPLES / "replay_saved_catalog.py"), str(saved)]
    out = run([*replay_all, "--output-dir", str(pngs)], user_env, tmp_path)
    assert "121 of 121 frames inferred" in out and "225 of 225 frames inferred" in out
    drawn = {png: png.stat().st_mtime_ns for png in pngs.glob("*.png")}
    assert len(drawn) == 2
    again = run([*replay_all, "--output-dir", str(pngs)], user_env, tmp_path)
    assert again.count("is there already: kept (--overwrite replaces it)") == 2
    assert {png: png.stat().st_mtime_ns for png in pngs.glob("*.png")} == drawn

    catalog = open_existing_catalog(saved)
    for uid in catalog:
        data = load_inference(catalog[uid])
        assert_covers_its_scan(data.mosaic.phase, data.positions_um)


def assert_covers_its_scan(image: StitchedImage, positions_um: np.ndarray) -> None:
    """Every pixel between a scan's outermost positions is in the figure's covered region
    (no gap between patches, no bar at the edges)."""
    (cy, cx), pixel = image.center, image.pixel_size_um
    cols = np.rint(cx + positions_um[:, 0] / pixel).astype(int)
    rows = np.rint(cy + positions_um[:, 1] / pixel).astype(int)
    region = covered(image.weight)[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    assert region.all(), f"{np.count_nonzero(~region)} pixels inside the scan are not covered"
