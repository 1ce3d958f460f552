"""A training recipe: every number that makes a model, validated when it is made."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ptychonn_ophyd.errors import ModelError
from ptychonn_ophyd.models.architecture import PRESETS, ArchitectureSpec
from ptychonn_ophyd.physics.held_out import DemoScan
from ptychonn_ophyd.physics.objects import ObjectStyle
from ptychonn_ophyd.physics.probe import ProbeConfig

PRESETS_TRAINED = ("small_phase", "small_amp_phase")
"""Architectures (from :data:`ptychonn_ophyd.models.PRESETS`) this package trains."""


@dataclass(frozen=True)
class Variation:
    """What the random training objects and frames range over.

    Every training frame is a fresh draw, so the network meets new objects at every
    step and cannot memorise a set; the ranges are wide so that it learns the physics of
    a probe-lit patch rather than a family of pictures.

    Attributes
    ----------
    magnification_range
        Object pixels per image pixel of the views (feature scale), log-uniform.
    phase_span_range
        Radians between the darkest and brightest grey level, uniform; below ``pi`` so
        that a patch's phase about its mean stays inside PtychoNN's ``pi * tanh``.
    amplitude_floor_range
        Transmission of the darkest grey level, uniform; the brightest is 1.
    photons_range
        Expected counts of a transparent object's pattern, log-uniform.
    texture_fraction
        Share of patches made of synthetic textures (power-law noise, flat regions with
        edges) instead of photographs.
    probe_jitter
        Relative spread of the probe's defocus and pupil radius around the nominal probe.
    n_probes
        Jittered probes drawn once per training (the nominal one among them).
    """

    magnification_range: tuple[float, float] = (1.5, 5.0)
    phase_span_range: tuple[float, float] = (0.3 * np.pi, 0.95 * np.pi)
    amplitude_floor_range: tuple[float, float] = (0.3, 0.95)
    photons_range: tuple[float, float] = (4e5, 2.5e6)
    texture_fraction: float = 0.4
    probe_jitter: float = 0.05
    n_probes: int = 32

    def __post_init__(self) -> None:
        _check_range("magnification_range", self.magnification_range, 1.0, np.inf)
        _check_range("phase_span_range", self.phase_span_range, 0.0, np.pi)
        _check_range("amplitude_floor_range", self.amplitude_floor_range, 0.0, 1.0)
        _check_range("photons_range", self.photons_range, 1.0, np.inf)
        if not 0.0 <= self.texture_fraction <= 1.0:
            raise ValueError(f"texture_fraction must lie in [0, 1], got {self.texture_fraction}")
        if not 0.0 <= self.probe_jitter < 0.5 or self.n_probes < 1:
            raise ValueError(f"need 0 <= probe_jitter < 0.5 and n_probes >= 1: {self}")


def _check_range(name: str, bounds: tuple[float, float], low: float, high: float) -> None:
    if not low <= bounds[0] <= bounds[1] <= high:
        raise ValueError(f"{name} must increase within [{low}, {high}], got {bounds}")


@dataclass(frozen=True)
class TrainingConfig:
    """A training recipe: everything needed to make a model again.

    The defaults are the first of the shipped demo model's two runs (from fresh
    weights; ``benchmarks/demo_model.sh`` runs both), sized for one large GPU
    (17 minutes on an H200); tests and CPU runs shrink ``epochs``, ``frames_per_epoch``
    and ``nconv``.

    Attributes
    ----------
    preset
        ``"small_phase"`` or ``"small_amp_phase"``.
    nconv
        Width of the first encoder block; the blocks are ``nconv * (1, 2, 4, 8)`` wide
        (16 is the published edge model's width).
    epochs, frames_per_epoch
        Training length; every frame is freshly drawn (see :class:`Variation`).
    n_validation_frames
        A fixed set drawn once from its own seed: objects no training step saw.
    batch_size, learning_rate
        Adam with a one-cycle schedule peaking at ``learning_rate``.
    seed
        Seeds the training draws, the validation set, the weights and the probes.
    device
        ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``.
    check_every
        Epochs between held-out checks during training (0: only at the end).
    initial_weights
        A checkpoint of the same architecture, or of its phase head alone, to start
        from (``""``: fresh weights).
    contrast_weight
        Weight of the loss term on each phase patch's spread (see
        :func:`~ptychonn_ophyd.training.fit.contrast_error`); 0 trains on the MSE alone.
    probe, style, variation, demo
        The nominal probe, the held-out object's style, the ranges of the training
        draws, and the held-out scan that judges the model.
    """

    preset: str = "small_phase"
    nconv: int = 32
    epochs: int = 40
    frames_per_epoch: int = 262_144
    n_validation_frames: int = 2048
    batch_size: int = 256
    learning_rate: float = 5e-4
    seed: int = 0
    device: str = "auto"
    check_every: int = 10
    initial_weights: str = ""
    contrast_weight: float = 0.0
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    style: ObjectStyle = field(default_factory=ObjectStyle)
    variation: Variation = field(default_factory=Variation)
    demo: DemoScan = field(default_factory=DemoScan)

    def __post_init__(self) -> None:
        if self.preset not in PRESETS_TRAINED:
            raise ValueError(f"preset must be one of {PRESETS_TRAINED}, got {self.preset!r}")
        if self.nconv < 1:
            raise ValueError(f"nconv must be at least 1, got {self.nconv}")
        counts = (self.epochs, self.frames_per_epoch, self.n_validation_frames, self.batch_size)
        if min(counts) < 1:
            raise ValueError("epochs, frame counts and batch size must be at least 1")
        if self.frames_per_epoch < self.batch_size:
            raise ValueError(
                f"frames_per_epoch {self.frames_per_epoch} is less than one batch "
                f"({self.batch_size})"
            )
        if self.learning_rate <= 0 or self.check_every < 0:
            raise ValueError("need learning rate > 0 and check_every >= 0")
        if self.contrast_weight < 0:
            raise ValueError(f"contrast_weight must be at least 0, got {self.contrast_weight}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.initial_weights:
            self._check_initial_weights()

    def _check_initial_weights(self) -> None:
        """The starting checkpoint opens and has this recipe's architecture, or this
        recipe's without the amplitude head (which then starts as a copy of the phase
        decoder, see :func:`~ptychonn_ophyd.training.fit.new_model`).

        Raises
        ------
        ModelError
            It does not (a ``ValueError``; the message names the file).
        """
        from ptychonn_ophyd.models import open_model

        start = open_model(self.initial_weights)
        if start.spec not in (self.spec, replace(self.spec, heads=("phase",))):
            raise ModelError(start.path, f"its network is {start.spec}, not {self.spec}")

    @property
    def spec(self) -> ArchitectureSpec:
        """The network this recipe trains: ``preset``'s layout at width ``nconv``."""
        preset = PRESETS[self.preset]
        widths = tuple(self.nconv * 2**k for k in range(preset.depth))
        return ArchitectureSpec(widths, widths[::-1], preset.heads, preset.input_size)

    @property
    def steps_per_epoch(self) -> int:
        return self.frames_per_epoch // self.batch_size


TRAIN_OPTIONS = {
    "--model": ("preset", "architecture"),
    "--nconv": ("nconv", "width of the first encoder block"),
    "--epochs": ("epochs", "training epochs"),
    "--frames-per-epoch": ("frames_per_epoch", "freshly drawn frames per epoch"),
    "--validation-frames": ("n_validation_frames", "frames of the fixed validation set"),
    "--batch-size": ("batch_size", "frames per optimiser step"),
    "--lr": ("learning_rate", "peak Adam learning rate"),
    "--seed": ("seed", "seeds every draw, the validation set and the weights"),
    "--device": ("device", "auto (CUDA when present), cpu or cuda"),
    "--check-every": ("check_every", "epochs between held-out checks (0: at the end only)"),
    "--initial-weights": ("initial_weights", "checkpoint to start from (default: fresh weights)"),
    "--contrast-weight": ("contrast_weight", "weight of the loss on each patch's phase spread"),
}
"""Each ``ptychonn-ophyd train`` option and the :class:`TrainingConfig` field it sets
(the field gives its type and default); the command line and every recipe's
``command`` are made from it."""
