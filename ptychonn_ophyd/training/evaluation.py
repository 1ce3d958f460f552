"""How good a model is: its phase error on drawn samples, and on the held-out scan."""

from __future__ import annotations

import numpy as np
import torch

from ptychonn_ophyd.analysis.figure import covered
from ptychonn_ophyd.analysis.mosaic import stitch_in_order
from ptychonn_ophyd.analysis.reconstruction import compare_phase
from ptychonn_ophyd.analysis.stitch import StitchedImage, stitch
from ptychonn_ophyd.analysis.tilt import stitch_tilt_corrected
from ptychonn_ophyd.models.bundled import Stitching, held_out_keys
from ptychonn_ophyd.moments import frame_moments
from ptychonn_ophyd.physics.diffraction import PtychoSimulation
from ptychonn_ophyd.physics.probe import probe_weight
from ptychonn_ophyd.training.config import TrainingConfig
from ptychonn_ophyd.training.sampler import Batch, weighted_mean

LIT_THRESHOLD = 0.1
"""Pixels whose probe weight is at least this count in the phase error."""


def predict(
    model: torch.nn.Module, frames: np.ndarray | torch.Tensor, batch_size: int = 256
) -> dict[str, torch.Tensor]:
    """Run ``model`` on raw-count frames ``(n, p, p)``; returns ``{head: (n, p, p)}``."""
    device = next(model.parameters()).device
    frames = torch.as_tensor(
        np.asarray(frames, np.float32) if isinstance(frames, np.ndarray) else frames
    )
    parts: dict[str, list[torch.Tensor]] = {head: [] for head in model.spec.heads}
    model.eval()
    with torch.no_grad():
        for start in range(0, len(frames), batch_size):
            x = frames[start : start + batch_size].to(device, torch.float32).unsqueeze(1)
            for head, y in zip(model.spec.heads, model(x), strict=True):
                parts[head].append(y[:, 0].float())
    return {head: torch.cat(chunks) for head, chunks in parts.items()}


def phase_rms_error(predicted: torch.Tensor, truth: torch.Tensor, lit: torch.Tensor) -> float:
    """RMS phase error over ``lit`` pixels after removing each patch's constant offset.

    A far-field pattern does not change when the phase shifts by a constant, so only
    the offset-free error measures the reconstruction.  ``lit`` is ``(p, p)`` or
    ``(n, p, p)`` booleans.
    """
    lit = lit.expand_as(predicted).float()
    diff = predicted - truth
    offset_free = diff - weighted_mean(diff, lit)
    return float(torch.sqrt((offset_free**2 * lit).sum() / lit.sum()))


def validate(model: torch.nn.Module, data: Batch) -> dict[str, float]:
    """Offset-free phase RMS (and amplitude RMS for two heads) over lit pixels, in radians."""
    predicted = predict(model, data.frames)
    lit = data.weight >= LIT_THRESHOLD
    metrics = {"val_phase_rms": phase_rms_error(predicted["phase"], data.phase, lit)}
    if "amplitude" in predicted:
        diff = (predicted["amplitude"] - data.amplitude)[lit]
        metrics["val_amplitude_rms"] = float(torch.sqrt(torch.mean(diff**2)))
    return metrics


class HeldOutCheck:
    """Reconstructs the held-out demo scan with a model and compares it with the truth.

    The frames are drawn once (numpy, as the simulated detector makes them), so every
    check of a training sees the same data.  Predicted phase patches are stitched with
    probe-intensity weights as they are (``plain``) and in scan order with each patch's
    offset made to agree with the patches before it (``aligned``: the
    :class:`~ptychonn_ophyd.analysis.mosaic.Mosaic` that the live view, replay and the
    demo use), and with each patch's tilt taken from its frame's centre of mass and all
    offsets solved at once (``tilt``: what the demo and ``replay --probe`` print as
    tilt-corrected, :func:`~ptychonn_ophyd.analysis.replay.stitch_with_frame_tilts`);
    the comparison covers the pixels
    :func:`~ptychonn_ophyd.analysis.figure.covered` names, after removing one constant
    phase offset.
    """

    def __init__(self, config: TrainingConfig) -> None:
        self.simulation: PtychoSimulation = config.demo.simulation(config.probe, config.style)
        self.frames = self.simulation.frames()
        self.weight = probe_weight(self.simulation.probe)
        self.moments = frame_moments(self.frames)

    def __call__(self, model: torch.nn.Module) -> dict[str, float]:
        sim = self.simulation
        patches = predict(model, self.frames)["phase"].cpu().numpy()
        pixel, shape = sim.obj.pixel_size_um, sim.obj.shape
        aligned, _ = stitch_in_order(patches, sim.positions_um, pixel, self.weight)
        images: dict[Stitching, StitchedImage] = {
            "plain": stitch(patches, sim.positions_um, pixel, shape, self.weight),
            "aligned": aligned.on_grid(shape),
            "tilt": stitch_tilt_corrected(
                patches, sim.positions_um, pixel, sim.probe, self.moments, self.weight, shape
            ),
        }
        metrics: dict[str, float] = {"held_out_points": len(sim)}
        for name, image in images.items():
            ssim, rms = compare_phase(image.image, sim.obj.phase, covered(image.weight))
            ssim_key, rms_key = held_out_keys(name)
            metrics[ssim_key], metrics[rms_key] = ssim, rms
        return metrics
