"""A simulated beamline for the Bluesky tests: RunEngine, motors, detector, pool, catalog.

Everything is real: the simulated detector serves PVA on loopback, the inference device
starts ``pvapy-hpc-consumer`` workers (ONNX Runtime on the CPU), and the RunEngine's
documents, the inference stream's among them, go into an embedded Tiled catalog, wired
by :func:`~ptychonn_ophyd.session.wiring.connect` as the profile and the demo wire it.
:func:`beamline` cleans up even when the test fails: the pool is stopped, the
detector unstaged and its server stopped, and every worker process checked to be gone.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from bluesky import RunEngine
from event_model import DocumentNames, schema_validators
from ophyd.sim import SynAxis

from ptychonn_ophyd.physics.diffraction import DetectorConfig, PtychoSimulation
from ptychonn_ophyd.physics.objects import held_out_object
from ptychonn_ophyd.physics.probe import make_probe
from ptychonn_ophyd.run_schema import OUTCOMES
from ptychonn_ophyd.session.device import PtychoNNDetector
from ptychonn_ophyd.session.live_view import LiveView
from ptychonn_ophyd.session.supplement import InferenceSupplement
from ptychonn_ophyd.session.wiring import connect
from ptychonn_ophyd.sim.detector import SimPtychoDetector

OBJECT_SIZE = 256
"""Object side in pixels: positions within +-0.6 um keep a 128-pixel patch inside."""


@dataclass
class Beamline:
    RE: RunEngine
    sx: SynAxis
    sy: SynAxis
    det: SimPtychoDetector
    inference: PtychoNNDetector
    supplement: InferenceSupplement
    catalog: Any
    catalog_folder: Path
    documents: list[tuple[str, dict]] = field(default_factory=list)
    pids: set[int] = field(default_factory=set)

    def remember_workers(self) -> None:
        """Note the current worker PIDs, to check later that none survived (workers the
        device attached to are not its to stop)."""
        pool = self.inference.pool
        if pool is not None and not pool.config.attach:
            self.pids.update(pool.pids)
        if self.inference.store_pid is not None:
            self.pids.add(self.inference.store_pid)


UNBINNED = DetectorConfig()
"""The simulated detector of most tests: 128x128 frames, the model's input."""


def make_simulation(detector: DetectorConfig = UNBINNED) -> PtychoSimulation:
    return PtychoSimulation(held_out_object(OBJECT_SIZE), make_probe(), detector=detector)


def make_devices(
    tmp_path: Path,
    prefix: str,
    model: Path,
    frames_per_point: int = 1,
    detector: DetectorConfig = UNBINNED,
    channels: int = 1,
    **kw: Any,
) -> tuple[SynAxis, SynAxis, SimPtychoDetector, PtychoNNDetector]:
    """Motors, the simulated detector on ``<prefix>:image`` (scattering its frames over
    ``<prefix>:image1,<prefix>:image2,...`` with several ``channels``) and a CPU inference
    device."""
    sx, sy = SynAxis(name="sx"), SynAxis(name="sy")
    channel = f"{prefix}:image"
    if channels > 1:
        channel = ",".join(f"{prefix}:image{k}" for k in range(1, channels + 1))
    det = SimPtychoDetector(
        make_simulation(detector), sx, sy, channel, frames_per_point, name="det"
    )
    inference = PtychoNNDetector(
        name="inference",
        model=str(model),
        backend="onnxruntime",
        input_channel=channel,
        output_prefix=f"{prefix}:inference",
        source=det,
        threads=1,
        log_dir=tmp_path / "logs",
        **kw,
    )
    det.scatter_run = inference.pool_config().scatter_run
    return sx, sy, det, inference


@contextlib.contextmanager
def beamline(
    tmp_path: Path,
    prefix: str,
    model: Path,
    *,
    n_workers: int = 1,
    grace: float = 5.0,
    frames_per_point: int = 1,
    live_view: LiveView | None = None,
    catalog_dir: Path | None = None,
    **kw: Any,
):
    """Yield a :class:`Beamline` (its catalog in ``catalog_dir``, else ``tmp_path/catalog``);
    afterwards no worker process of it is left running.

    With ``live_view``, runs are stitched live (and its channel is stopped afterwards).
    """
    sx, sy, det, inference = make_devices(
        tmp_path, prefix, model, frames_per_point, n_workers=n_workers, **kw
    )
    RE = RunEngine()
    catalog_dir = catalog_dir or tmp_path / "catalog"
    catalog = connect(RE, inference, catalog_dir, grace=grace, live_view=live_view)
    (supplement,) = [p for p in RE.preprocessors if isinstance(p, InferenceSupplement)]
    world = Beamline(RE, sx, sy, det, inference, supplement, catalog, catalog_dir)
    RE.subscribe(lambda name, doc: world.documents.append((name, doc)))
    RE.subscribe(lambda name, doc: world.remember_workers())
    try:
        yield world
    finally:
        world.remember_workers()
        for device in (inference, det):
            with contextlib.suppress(Exception):
                device.unstage()
        det.close()
        inference.shutdown()
        if live_view is not None:
            live_view.close()
        catalog.context.close()
        assert_gone(world.pids)


def until(condition, what: str, deadline: float = 60.0) -> None:
    """Wait until ``condition()`` (generous ``deadline``: the machine may be busy)."""
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, f"no {what} in {deadline} s"
        time.sleep(0.02)


def assert_gone(pids: set[int], timeout: float = 15.0) -> None:
    """Fail unless every process in ``pids`` has ended (zombies count as ended)."""
    deadline = time.monotonic() + timeout
    alive = set(pids)
    while alive and time.monotonic() < deadline:
        alive = {pid for pid in alive if _running(pid)}
        time.sleep(0.1)
    assert not alive, f"worker processes still running: {sorted(alive)}"


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def validate_all(documents: list[tuple[str, dict]]) -> None:
    """Check every document against event-model's schema for its kind."""
    for name, doc in documents:
        schema_validators[DocumentNames[name]].validate(doc)


def assert_every_frame_counted(summary: dict[str, Any]) -> None:
    """The frame accounting balances: every produced frame has exactly one outcome."""
    outcomes = {name: summary[name] for name in OUTCOMES}
    assert summary["produced"] == sum(outcomes.values()), (summary["produced"], outcomes)
