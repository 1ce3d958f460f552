"""Training PtychoNN on simulated ptychography, and checking it on the held-out object.

The training set comes from :mod:`ptychonn_ophyd.physics`: random views of the training
images become objects, random positions on them become Poisson-noisy diffraction frames,
and the object patches are the targets.  The network is the package's own
:class:`~ptychonn_ophyd.models.network.PtychoNN` and takes raw counts cast to float32, as
the published checkpoints do; the first convolution is initialised and stepped at
``1/scale`` of the usual size, which with Adam trains exactly as if the input were divided
by ``scale``, while the saved weights still take raw counts.  The loss is weighted by the
probe intensity: where the beam is dark no frame says anything about the object.

No frame reveals its patch's constant phase offset either, so the loss counts it little,
and :class:`~ptychonn_ophyd.analysis.mosaic.Mosaic` makes overlapping predictions
agree before they are compared with the truth: without it, per-patch offset guesses
dominate the stitched error.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ptychonn_ophyd.analysis.reconstruction import compare_phase
from ptychonn_ophyd.physics.diffraction import DetectorConfig, PtychoSimulation
from ptychonn_ophyd.physics.held_out import DemoScan
from ptychonn_ophyd.physics.objects import (
    TRAINING_MAGNIFICATION_RANGE,
    ComplexObject,
    ObjectStyle,
    random_training_object,
)
from ptychonn_ophyd.physics.probe import ProbeConfig, make_probe, probe_weight
from ptychonn_ophyd.physics.scan import to_micrometres

log = logging.getLogger(__name__)

PRESETS_TRAINED = ("small_phase", "small_amp_phase")
"""Architectures (from :data:`ptychonn_ophyd.models.PRESETS`) this module trains."""

LIT_THRESHOLD = 0.1
"""Pixels whose probe weight is at least this count in the phase error."""

LOSS_FLOOR = 0.01
"""Loss weight where the beam is dark, so that the output stays tame there."""

OFFSET_WEIGHT = 0.1
"""Relative loss weight of a phase patch's constant offset (see ``_loss``)."""


@dataclass(frozen=True)
class TrainingConfig:
    """A training recipe: everything needed to reproduce a model.

    The defaults are a CPU-sized recipe (about 20 minutes on two cores).  This network
    has no normalisation layers and sits on a plateau (constant output) for its first few
    hundred optimiser steps; recipes much shorter than about 1000 steps, or with a peak
    learning rate of 1e-3 at batch 32, may never leave it.  The shipped demo model used
    50000 frames, 30 epochs, batch 64 and learning rate 1e-3 on a GPU.

    Attributes
    ----------
    preset
        ``"small_phase"`` or ``"small_amp_phase"``.
    n_frames
        Training frames.
    n_validation_frames
        Validation frames, from other random objects of the same image pool.
    frames_per_object
        Frames taken at random positions on each random object: few, so that the
        network meets many objects rather than memorising some.
    epochs, batch_size, learning_rate
        Adam with a one-cycle schedule peaking at ``learning_rate``.
    seed
        Seeds objects, positions, noise, weight init and batch order.
    object_size
        Side of each simulated object in pixels.
    magnification_range
        Object pixels per image pixel of the training views (feature scale).
    photons_range
        Each object's photon budget is drawn log-uniformly from this range.
    device
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    probe, style
        Probe shape and object phase/amplitude spans.
    demo
        The held-out scan that :func:`held_out_check` reconstructs after training.
    """

    preset: str = "small_phase"
    n_frames: int = 6000
    n_validation_frames: int = 400
    frames_per_object: int = 5
    epochs: int = 6
    batch_size: int = 32
    learning_rate: float = 3e-4
    seed: int = 0
    object_size: int = 160
    photons_range: tuple[float, float] = (8e5, 1.25e6)
    magnification_range: tuple[float, float] = TRAINING_MAGNIFICATION_RANGE
    device: str = "auto"
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    style: ObjectStyle = field(default_factory=ObjectStyle)
    demo: DemoScan = field(default_factory=DemoScan)

    def __post_init__(self) -> None:
        if self.preset not in PRESETS_TRAINED:
            raise ValueError(f"preset must be one of {PRESETS_TRAINED}, got {self.preset!r}")
        if min(self.n_frames, self.n_validation_frames, self.frames_per_object, self.epochs) < 1:
            raise ValueError("frame and epoch counts must be at least 1")
        if self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError("need batch size >= 1 and learning rate > 0")
        if not 0 < self.photons_range[0] <= self.photons_range[1]:
            raise ValueError(f"photons range must be positive and increasing: {self.photons_range}")
        if self.object_size < self.probe.size + 2:
            raise ValueError(f"object size {self.object_size} leaves no room to scan")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")


@dataclass
class SimulatedSet:
    """Frames and their targets: ``frames`` (n, p, p) counts, ``phase`` and ``amplitude``."""

    frames: np.ndarray
    phase: np.ndarray
    amplitude: np.ndarray

    def __len__(self) -> int:
        return len(self.frames)


@dataclass
class TrainingResult:
    """What :func:`train` made and measured; ``to_dict`` is the recipe file's content."""

    config: TrainingConfig
    metrics: dict[str, float]
    history: list[dict[str, float]]
    files: dict[str, str]
    seconds: float
    device: str

    def to_dict(self) -> dict:
        return {
            "config": dataclasses.asdict(self.config),
            "metrics": self.metrics,
            "history": self.history,
            "files": self.files,
            "training_seconds": round(self.seconds, 1),
            "device": self.device,
        }


def simulate_set(
    n_frames: int,
    config: TrainingConfig,
    seed: np.random.SeedSequence,
    workers: int | None = None,
) -> SimulatedSet:
    """``n_frames`` frames at random positions, ``config.frames_per_object`` per object.

    Each object draws from its own child of ``seed``, so the set is the same whatever
    the number of worker processes (``None``: one per CPU).
    """
    n_objects = -(-n_frames // config.frames_per_object)
    counts = np.diff(np.linspace(0, n_frames, n_objects + 1).round().astype(int))
    tasks = [
        (config, child, int(n)) for child, n in zip(seed.spawn(n_objects), counts, strict=True)
    ]
    p = config.probe.size
    data = SimulatedSet(
        np.empty((n_frames, p, p), np.int16),
        np.empty((n_frames, p, p), np.float32),
        np.empty((n_frames, p, p), np.float32),
    )
    workers = min(workers or os.cpu_count() or 1, n_objects)
    with _pool(workers) as pool:
        results = pool.map(_simulate_object, tasks, chunksize=max(1, n_objects // (4 * workers)))
        offset = 0
        for frames, phase, amplitude in results:
            part = slice(offset, offset + len(frames))
            data.frames[part], data.phase[part], data.amplitude[part] = frames, phase, amplitude
            offset += len(frames)
    return data


def _pool(workers: int) -> Executor:
    """Worker processes, or the caller's thread for one.

    Spawned, not forked: a fork taken after PyTorch or OpenBLAS started their thread
    pools can deadlock in the child (seen in the test suite), and CUDA must not be
    inherited. Scripts calling :func:`train` with workers need a ``__main__`` guard.
    """
    if workers <= 1:
        return _InlineExecutor()
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


class _InlineExecutor(Executor):
    """Runs ``map`` in the calling thread: no process start-up for small sets."""

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        return map(fn, *iterables)


def _simulate_object(
    task: tuple[TrainingConfig, np.random.SeedSequence, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frames, phase and amplitude of ``n`` random positions on one random object."""
    config, seed, n = task
    rng = np.random.default_rng(seed)
    obj = random_training_object(rng, config.object_size, config.style, config.magnification_range)
    photons = float(np.exp(rng.uniform(*np.log(config.photons_range))))
    sim = PtychoSimulation(
        obj,
        make_probe(config.probe),
        _random_positions(rng, n, obj, config.probe.size),
        DetectorConfig(photons=photons),
        seed=int(rng.integers(2**31)),
    )
    return (sim.frames(), *sim.ground_truth())


def _random_positions(
    rng: np.random.Generator, n: int, obj: ComplexObject, patch: int
) -> np.ndarray:
    """``n`` positions in micrometres whose patches lie inside ``obj``."""
    low = patch // 2
    high = np.array(obj.shape[::-1]) - patch + low
    pixels = rng.integers(low, high + 1, size=(n, 2))
    return to_micrometres(pixels, obj.pixel_size_um, obj.shape)


def phase_rms_error(predicted: np.ndarray, truth: np.ndarray, lit: np.ndarray) -> float:
    """RMS phase error over lit pixels after removing each patch's constant offset.

    A far-field pattern does not change when the phase shifts by a constant, so only
    the offset-free error measures the reconstruction.
    """
    diff = (predicted - truth)[..., lit]
    diff = diff - diff.mean(axis=-1, keepdims=True)
    return float(np.sqrt(np.mean(diff**2)))


def train(
    config: TrainingConfig, out_dir: str | Path | None = None, workers: int | None = None
) -> TrainingResult:
    """Simulate data, train ``config.preset``, validate, and save ``.pth`` and ONNX files.

    Files written to ``out_dir`` (when given): ``<preset>.pth`` (a PtychoNN state_dict),
    ``<preset>.onnx`` (dynamic batch) and ``<preset>_recipe.json``.  ``workers`` is the
    number of simulation processes (default one per CPU); it does not change the data.
    """
    import torch

    start = time.perf_counter()
    train_seed, val_seed = np.random.SeedSequence(config.seed).spawn(2)
    train_set = simulate_set(config.n_frames, config, train_seed, workers)
    val_set = simulate_set(config.n_validation_frames, config, val_seed, workers)
    torch.manual_seed(config.seed)
    device = _pick_device(config.device)
    log.info(
        "simulated %d + %d frames in %.1f s",
        len(train_set),
        len(val_set),
        time.perf_counter() - start,
    )
    weight = probe_weight(make_probe(config.probe))
    model, history = _fit(config, train_set, val_set, weight, device)
    metrics = history[-1] | held_out_check(model, config, device)
    files = _save(model, config, Path(out_dir)) if out_dir is not None else {}
    result = TrainingResult(
        config, metrics, history, files, time.perf_counter() - start, str(device)
    )
    if out_dir is not None:
        recipe = Path(out_dir) / f"{config.preset}_recipe.json"
        recipe.write_text(json.dumps(result.to_dict(), indent=2))
        result.files["recipe"] = recipe.name
    return result


def _pick_device(name: str):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _fit(config, train_set, val_set, weight, device):
    """Adam + one-cycle training; returns the model and per-epoch validation metrics."""
    import torch

    from ptychonn_ophyd.models import PRESETS
    from ptychonn_ophyd.models.network import PtychoNN

    torch.backends.cudnn.benchmark = device.type == "cuda"
    spec = PRESETS[config.preset]
    model = PtychoNN(spec).to(device)
    scale = float(train_set.frames.std())
    first = model.encoder[0].weight
    with torch.no_grad():
        first /= scale
    others = [p for p in model.parameters() if p is not first]
    optimizer = torch.optim.Adam(
        [{"params": others}, {"params": [first], "lr": config.learning_rate / scale}],
        lr=config.learning_rate,
    )
    steps_per_epoch = max(1, len(train_set) // config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[config.learning_rate, config.learning_rate / scale],
        total_steps=config.epochs * steps_per_epoch,
    )
    tensors = _to_tensors(train_set, device)
    loss_weight = torch.as_tensor(np.maximum(weight, LOSS_FLOOR), device=device)
    target_var = {
        "phase": float(train_set.phase.var()),
        "amplitude": float(train_set.amplitude.var()),
    }
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    history = []
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(len(train_set), generator=generator)
        total = 0.0
        for step in range(steps_per_epoch):
            batch = order[step * config.batch_size : (step + 1) * config.batch_size].to(device)
            outputs = model(tensors["frames"][batch].float().unsqueeze(1))
            loss = _loss(outputs, spec.heads, tensors, batch, loss_weight, target_var)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss.detach())
        metrics = {"epoch": epoch + 1, "train_loss": total / steps_per_epoch}
        metrics.update(evaluate(model, val_set, weight, device))
        log.info("epoch %s", metrics)
        history.append(metrics)
    return model.eval(), history


def _to_tensors(data: SimulatedSet, device) -> dict:
    import torch

    return {
        "frames": torch.as_tensor(data.frames, device=device),
        "phase": torch.as_tensor(data.phase, device=device),
        "amplitude": torch.as_tensor(data.amplitude, device=device),
    }


def _loss(outputs, heads, tensors, batch, loss_weight, target_var):
    """Probe-weighted MSE of each head, divided by its target variance so heads weigh alike.

    The phase error's per-patch mean (a constant offset, which no frame can reveal) counts
    only :data:`OFFSET_WEIGHT` as much as the rest, so capacity goes to the shape.
    """
    loss = 0.0
    weights = loss_weight / loss_weight.mean()
    for head, output in zip(heads, outputs, strict=True):
        error = output[:, 0] - tensors[head][batch]
        if head == "phase":
            offset = (error * weights).mean(dim=(-2, -1), keepdim=True)
            term = ((error - offset) ** 2 * weights).mean() + OFFSET_WEIGHT * (offset**2).mean()
        else:
            term = (error**2 * weights).mean()
        loss = loss + term / target_var[head]
    return loss


def predict(model, frames: np.ndarray, device, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Run ``model`` on raw-count frames ``(n, p, p)``; returns ``{head: (n, p, p)}``."""
    import torch

    heads = model.spec.heads
    out: dict[str, list[np.ndarray]] = {head: [] for head in heads}
    with torch.no_grad():
        for i in range(0, len(frames), batch_size):
            x = torch.as_tensor(frames[i : i + batch_size].astype(np.float32), device=device)
            for head, y in zip(heads, model(x.unsqueeze(1)), strict=True):
                out[head].append(y[:, 0].cpu().numpy())
    return {head: np.concatenate(parts) for head, parts in out.items()}


def evaluate(model, data: SimulatedSet, weight: np.ndarray, device) -> dict[str, float]:
    """Offset-free phase RMS (and amplitude RMS for two heads) over lit pixels, in radians."""
    model.eval()
    predicted = predict(model, data.frames, device)
    lit = weight >= LIT_THRESHOLD
    metrics = {"val_phase_rms": phase_rms_error(predicted["phase"], data.phase, lit)}
    if "amplitude" in predicted:
        diff = (predicted["amplitude"] - data.amplitude)[..., lit]
        metrics["val_amplitude_rms"] = float(np.sqrt(np.mean(diff**2)))
    return metrics


def _save(model, config: TrainingConfig, out_dir: Path) -> dict[str, str]:
    import torch

    from ptychonn_ophyd.models import export_onnx_bytes

    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    pth = out_dir / f"{config.preset}.pth"
    torch.save(state, pth)
    onnx = out_dir / f"{config.preset}.onnx"
    onnx.write_bytes(export_onnx_bytes(model.spec, {k: v.numpy() for k, v in state.items()}))
    return {"pth": pth.name, "onnx": onnx.name}


def held_out_check(model, config: TrainingConfig, device) -> dict[str, float]:
    """Reconstruct the held-out object from the demo scan and compare with the truth.

    Predicted phase patches are stitched with probe-intensity weights, both as they are
    (:func:`ptychonn_ophyd.analysis.stitch.stitch`, ``plain``) and offset by offset in scan
    order (:class:`~ptychonn_ophyd.analysis.mosaic.Mosaic`, ``aligned``).  The comparison
    covers pixels whose summed weight reaches 20% of its maximum, after removing one
    constant phase offset.
    """
    from ptychonn_ophyd.analysis.mosaic import stitch_in_order
    from ptychonn_ophyd.analysis.stitch import stitch

    sim = config.demo.simulation(config.probe, config.style)
    predicted = predict(model, sim.frames(), device)["phase"]
    weight = probe_weight(sim.probe)
    pixel, shape = sim.obj.pixel_size_um, sim.obj.shape
    images = {
        "plain": stitch(predicted, sim.positions_um, pixel, shape, weight),
        "aligned": stitch_in_order(predicted, sim.positions_um, pixel, weight)[0].on_grid(shape),
    }
    metrics: dict[str, float] = {"held_out_points": len(sim)}
    for name, image in images.items():
        region = image.weight >= 0.2 * image.weight.max()
        ssim, rms = compare_phase(image.image, sim.obj.phase, region)
        metrics[f"held_out_ssim_{name}"] = ssim
        metrics[f"held_out_phase_rms_{name}"] = rms
    return metrics
