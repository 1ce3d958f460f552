"""The training loop: Adam with a one-cycle schedule on freshly drawn batches."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import torch

from ptychonn_ophyd.models import open_model
from ptychonn_ophyd.models.architecture import HEAD_DECODERS
from ptychonn_ophyd.models.network import PtychoNN
from ptychonn_ophyd.training.config import TrainingConfig
from ptychonn_ophyd.training.sampler import Batch, FrameSampler, weighted_mean

log = logging.getLogger(__name__)

LOSS_FLOOR = 0.01
"""Loss weight where the beam is dark, so that the output stays tame there."""

OFFSET_WEIGHT = 0.1
"""Loss weight of a predicted phase patch's weighted mean, which the target has at zero."""

EpochHook = Callable[[PtychoNN, dict[str, float]], None]
"""Called after every epoch with the model and that epoch's metrics (it may add some)."""


def new_model(config: TrainingConfig, sampler: FrameSampler) -> tuple[PtychoNN, float]:
    """The network to train on the sampler's device, and the count scale of its input.

    A fresh network (PyTorch's default initialisation) has its first convolution start
    and step at ``1/scale`` of the usual size, which with Adam trains exactly as if the
    input were divided by ``scale`` (the counts' spread), while the saved weights still
    take raw counts as the published checkpoints do.  With ``config.initial_weights``
    the network starts from that checkpoint (already in raw counts) and only the
    first convolution's step is scaled; a phase-only checkpoint starts a two-head
    network's amplitude decoder as a copy of its phase decoder, whose features (edges,
    the probe's footprint) the amplitude needs too.
    """
    model = PtychoNN(config.spec).to(sampler.device)
    scale = float(sampler.draw(config.batch_size).frames.std())
    if config.initial_weights:  # its architecture was checked with the recipe
        start = open_model(config.initial_weights).state_dict()
        start = {k: torch.as_tensor(v) for k, v in start.items()}
        model.load_state_dict(_with_amplitude_head(start, config.spec.heads))
    else:
        with torch.no_grad():
            model.encoder[0].weight /= scale
    return model, scale


def _with_amplitude_head(
    state: dict[str, torch.Tensor], heads: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    """``state``, given a copy of its phase decoder as the amplitude decoder when
    ``heads`` need one and it has none."""
    amplitude, phase = (HEAD_DECODERS[head] + "." for head in ("amplitude", "phase"))
    if "amplitude" not in heads or any(key.startswith(amplitude) for key in state):
        return state
    copies = {
        amplitude + k[len(phase) :]: v.clone() for k, v in state.items() if k.startswith(phase)
    }
    return {**state, **copies}


def fit(
    config: TrainingConfig,
    sampler: FrameSampler,
    validation: Batch,
    on_epoch: EpochHook,
    progress: bool = True,
) -> tuple[PtychoNN, list[dict[str, float]]]:
    """Train ``config.spec`` on ``sampler``'s draws; returns the model and per-epoch metrics.

    The history starts with epoch 0: the network before its first step.  Its
    ``val_loss`` is :func:`batch_loss` alone, also when ``config.contrast_weight`` adds
    :func:`contrast_error` to the training loss, so that recipes compare.
    """
    from tqdm.auto import tqdm

    cuda = sampler.device.type == "cuda"
    torch.backends.cudnn.benchmark = cuda
    model, scale = new_model(config, sampler)
    memory = torch.channels_last if cuda else torch.contiguous_format
    model = model.to(memory_format=memory)
    first = model.encoder[0].weight
    others = [p for p in model.parameters() if p is not first]
    lr = config.learning_rate
    groups = [{"params": others}, {"params": [first], "lr": lr / scale}]
    optimizer = torch.optim.Adam(groups, lr=lr, fused=cuda)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[lr, lr / scale],
        total_steps=config.epochs * config.steps_per_epoch,
        pct_start=0.15,
    )
    autocast = torch.autocast("cuda", torch.bfloat16) if cuda else nullcontext()
    start = {"epoch": 0, "val_loss": _validation_loss(model, validation)}
    on_epoch(model, start)
    history: list[dict[str, float]] = [start]
    for epoch in range(1, config.epochs + 1):
        model.train()
        started = time.perf_counter()
        total = torch.zeros((), device=sampler.device)
        steps = tqdm(
            range(config.steps_per_epoch),
            desc=f"epoch {epoch}/{config.epochs}",
            unit="batch",
            disable=not progress,
            leave=False,
        )
        for _ in steps:
            batch = sampler.draw(config.batch_size)
            total += step(model, optimizer, batch, autocast, memory, config.contrast_weight)
            schedule.step()
        seconds = time.perf_counter() - started
        metrics = {
            "epoch": epoch,
            "train_loss": float(total) / config.steps_per_epoch,
            "val_loss": _validation_loss(model, validation),
            "seconds": round(seconds, 1),
            "frames_per_s": round(config.steps_per_epoch * config.batch_size / seconds),
        }
        on_epoch(model, metrics)
        history.append(metrics)
    return model.eval(), history


def step(
    model: PtychoNN,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    autocast: AbstractContextManager,
    memory: torch.memory_format,
    contrast_weight: float = 0.0,
) -> torch.Tensor:
    """One optimiser step on ``batch``; returns its loss, left on the device."""
    with autocast:
        outputs = model(batch.frames.unsqueeze(1).to(memory_format=memory))
    loss = batch_loss(model.spec.heads, outputs, batch, contrast_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def batch_loss(
    heads: tuple[str, ...],
    outputs: tuple[torch.Tensor, ...],
    batch: Batch,
    contrast_weight: float = 0.0,
) -> torch.Tensor:
    """Probe-weighted MSE of each head against the batch's targets.

    The phase output is compared about its own probe-weighted mean (the target's is
    zero, see :class:`~ptychonn_ophyd.training.sampler.Batch`), and its mean counts
    only :data:`OFFSET_WEIGHT` as much, which keeps the output near zero mean without
    spending capacity on what no frame can tell; ``contrast_weight`` adds
    :func:`contrast_error` of the phase.
    """
    weight = batch.weight
    loss_weight = weight.clamp(min=LOSS_FLOOR)
    loss_weight = loss_weight / loss_weight.mean()
    loss = torch.zeros((), device=weight.device)
    for head, output in zip(heads, outputs, strict=True):
        output = output[:, 0].float()
        if head == "phase":
            mean = weighted_mean(output, weight)
            error = output - mean - batch.phase
            loss = loss + (error**2 * loss_weight).mean() + OFFSET_WEIGHT * (mean**2).mean()
            if contrast_weight:
                loss = loss + contrast_weight * contrast_error(output, batch)
        else:
            loss = loss + ((output - batch.amplitude) ** 2 * loss_weight).mean()
    return loss


def contrast_error(phase: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Mean squared difference between each predicted phase patch's spread and the
    target's: their probe-weighted RMS about the patch's weighted mean.

    Trained on the MSE alone, the network shrinks contrast (its phase regressed on the
    truth has a slope near 0.85), and the offsets that stitching matches from overlaps
    inherit the shrinkage; this term asks for the truth's contrast.
    """
    weight = batch.weight
    centred = phase - weighted_mean(phase, weight)
    spread = weighted_mean(centred**2, weight).sqrt()
    target = weighted_mean(batch.phase**2, weight).sqrt()
    return ((spread - target) ** 2).mean()


def _validation_loss(model: PtychoNN, validation: Batch, batch_size: int = 512) -> float:
    model.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(validation), batch_size):
            part = validation[start : start + batch_size]
            outputs = model(part.frames.unsqueeze(1))
            total += float(batch_loss(model.spec.heads, outputs, part)) * len(part)
    model.train()
    return total / len(validation)
