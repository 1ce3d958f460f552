"""The one-command demo: simulated beamline, consumer pool, scan, catalog, replay.

A scan over the held-out object (one the demo model never saw in training) runs through
the whole system as at a beamline; the reconstruction is then read back from the
catalog (the mosaic the live view stitched during the scan and stored with the run) and
judged against the simulation's ground truth.  The live view has the simulated
detector's probe, so each patch takes the tilt its frame's centre of mass says and the
offsets are solved over the scan
(:class:`~ptychonn_ophyd.analysis.solved_mosaic.SolvedMosaic`): the stored image is
the one replay stitches again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ptychonn_ophyd.errors import ArgsError
from ptychonn_ophyd.loopback import use_loopback

INTERRUPTED = "the demo was interrupted (Ctrl-C)"
"""The stop document's reason for a demo scan ended by Ctrl-C."""
SIZES = {"small": (0.5, 11), "default": (1.2, 25), "large": (1.2, 49)}
"""Scan half-width (µm) and points per axis: 121, 625 or 2401 frames, 100 or 50 nm apart."""


@dataclass(frozen=True)
class DemoConfig:
    """What the demo scans and where it writes.

    Attributes
    ----------
    output_dir
        Folder for the picture (and the catalog unless ``catalog`` is given).
    catalog
        Embedded catalog folder or Tiled URI; default ``output_dir/catalog``.
    size
        ``"small"`` (CI), ``"default"`` or ``"large"``; see :data:`SIZES`.
    backend
        Inference backend for the workers (``"auto"``: the GPU where there is one).
    workers
        Consumer processes.
    """

    output_dir: Path = Path("ptychonn-demo")
    catalog: str | None = None
    size: Literal["small", "default", "large"] = "default"
    backend: str = "auto"
    workers: int = 1


@dataclass(frozen=True)
class DemoSummary:
    """What the demo prints at the end."""

    uid: str
    picture: Path
    catalog: str
    sent: int
    inferred: int
    ssim: float
    phase_rms: float
    stitching: str

    @property
    def lost(self) -> int:
        return self.sent - self.inferred

    @property
    def replay_command(self) -> str:
        """The command that replays this run from this catalog, ready to paste."""
        return f"{command()} replay {self.uid} --catalog {shlex.quote(str(self.catalog))}"

    def lines(self) -> list[str]:
        return [
            f"run uid: {self.uid}",
            f"picture: {self.picture}",
            f"catalog: {self.catalog}",
            f"replay: {self.replay_command}",
            f"frames: {self.sent} sent, {self.inferred} inferred, {self.lost} lost",
            f"stitched with: {self.stitching}",
            f"ssim: {self.ssim:.3f}",
            f"phase rms error: {self.phase_rms:.3f} rad",
        ]


def command() -> str:
    """How to type ``ptychonn-ophyd`` here: its name where the shell finds it as this
    one, else its path in this environment (``.venv/bin/ptychonn-ophyd``), relative to
    the working folder where it lies below it."""
    script = Path(sys.executable).parent / "ptychonn-ophyd"
    found = shutil.which("ptychonn-ophyd")
    if found and Path(found).resolve() == script.resolve():
        return "ptychonn-ophyd"
    with contextlib.suppress(ValueError):
        return shlex.quote(str(script.absolute().relative_to(Path.cwd())))
    return shlex.quote(str(script))


def run_demo(config: DemoConfig) -> DemoSummary:
    """Scan the held-out object with live inference, store it, replay it, and judge it."""
    use_loopback()
    _prepare_output(config.output_dir)
    catalog_location = config.catalog or str(config.output_dir / "catalog")
    uid, sent, simulation = _scan(config, catalog_location)
    return _judge(config, catalog_location, uid, sent, simulation)


def _prepare_output(folder: Path) -> None:
    """Make the output folder, or say in one line why the demo cannot write there."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ArgsError(f"output folder {folder}: cannot create it ({err.strerror})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ArgsError(f"output folder {folder}: cannot write there")


def _scan(config: DemoConfig, catalog_location: str):
    from bluesky import RunEngine
    from bluesky.utils import RunEngineInterrupted
    from ophyd.sim import SynAxis

    from ptychonn_ophyd.models.bundled import demo_model_path
    from ptychonn_ophyd.physics.diffraction import DetectorConfig, PtychoSimulation
    from ptychonn_ophyd.physics.objects import held_out_object
    from ptychonn_ophyd.physics.probe import make_probe
    from ptychonn_ophyd.session.device import PtychoNNDetector
    from ptychonn_ophyd.session.live_view import LiveView
    from ptychonn_ophyd.session.plans import scan_with_inference
    from ptychonn_ophyd.session.progress import show_progress
    from ptychonn_ophyd.session.wiring import connect
    from ptychonn_ophyd.sim.detector import SimPtychoDetector

    channel = f"demo{uuid.uuid4().hex[:8]}"
    simulation = PtychoSimulation(held_out_object(), make_probe(), detector=DetectorConfig())
    sx, sy = SynAxis(name="sx"), SynAxis(name="sy")
    det = SimPtychoDetector(simulation, sx, sy, f"{channel}:image", name="det")
    inference = PtychoNNDetector(
        name="inference",
        model=str(demo_model_path()),
        backend=config.backend,
        n_workers=config.workers,
        input_channel=f"{channel}:image",
        output_prefix=f"{channel}:inference",
        source=det,
        log_dir=config.output_dir / "logs",
    )
    RE = RunEngine()
    live_view = LiveView(probe=det.probe, figure=False)
    catalog = connect(RE, inference, catalog_location, live_view=live_view)
    show_progress(RE, inference)
    half, n = SIZES[config.size]
    plan = scan_with_inference(
        det, inference, sy, -half, half, n, sx, -half, half, n, md={"purpose": "demo"}
    )
    try:
        (uid,) = RE(plan)
    except RunEngineInterrupted:  # Ctrl-C paused it: nobody is there to resume
        aborted = _abort(RE)
        runs = f"run {aborted[0]} " if aborted else ""
        raise KeyboardInterrupt(f"{runs}stored as aborted in {catalog_location}") from None
    finally:
        det.close()
        live_view.close()
        catalog.context.close()
    return uid, int(det.frames_sent.get()), simulation


def _abort(RE) -> tuple[str, ...]:
    """Abort the paused run (stored as aborted, workers stopped) without bluesky's
    "Run aborted" traceback: the command's one line says it."""
    from ptychonn_ophyd.session.wiring import abort

    bluesky_log = logging.getLogger("bluesky")
    level = bluesky_log.level
    bluesky_log.setLevel(logging.CRITICAL)
    try:
        return abort(RE, INTERRUPTED)
    finally:
        bluesky_log.setLevel(level)


def _judge(config: DemoConfig, catalog_location: str, uid: str, sent: int, simulation):
    """Compare the mosaic the live view stored with the run against the ground truth."""
    from ptychonn_ophyd.analysis.figure import covered
    from ptychonn_ophyd.analysis.reconstruction import compare_phase
    from ptychonn_ophyd.analysis.replay import load_inference
    from ptychonn_ophyd.catalog import open_catalog

    catalog = open_catalog(catalog_location)
    data = load_inference(catalog[uid])
    catalog.context.close()
    truth = simulation.obj.phase
    image = data.mosaic.phase.on_grid(truth.shape)
    ssim, rms = compare_phase(image.image, truth, covered(image.weight))
    path = config.output_dir / f"demo-{uid[:8]}.png"
    picture = _save_picture(path, data, truth, image, (ssim, rms))
    return DemoSummary(
        uid,
        picture,
        catalog_location,
        sent,
        len(data.phase),
        ssim,
        rms,
        data.mosaic.stitching,
    )


def _save_picture(
    path: Path, data, truth: np.ndarray, image, accuracy: tuple[float, float]
) -> Path:
    """Ground truth, reconstruction and error on one phase scale.

    The reconstruction gets the phase offset that best matches the truth; both are then
    shown from the truth's median, as replay shows a phase image from its own.
    """
    from ptychonn_ophyd.analysis.figure import Panel, covered, phase_median, run_title, save_figure

    region = covered(image.weight)
    offset = phase_median(truth, region)
    aligned = image.image - np.mean((image.image - truth)[region])
    panels = [
        Panel("ground truth", truth - offset, "phase"),
        Panel("reconstruction from the catalog", aligned - offset, "phase"),
        Panel("error", aligned - truth, "error"),
    ]
    ssim, rms = accuracy
    text = (
        f"against the ground truth: SSIM {ssim:.3f}, phase rms error {rms:.3f} rad"
        f"  ·  {data.mosaic.stitching}"
    )
    return save_figure(path, panels, image, run_title(data.start, len(data.phase), text))
