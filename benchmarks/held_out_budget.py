"""Where a model's held-out SSIM goes: the scan stitched with parts of each patch made true.

Each row stitches the held-out scan (:class:`~ptychonn_ophyd.training.evaluation.HeldOutCheck`)
from the model's phase patches with one thing replaced, and prints its SSIM and RMS phase
error (as the training's held-out check reports them):

- ``as predicted``: the patches in the :class:`~ptychonn_ophyd.analysis.mosaic.Mosaic`;
- ``true offsets``: each patch shifted by its true offset, no matching needed;
- ``true tilts``: each patch's probe-weighted mean phase gradient set to the truth's,
  then the mosaic;
- ``tilts from the centre of mass``: the gradient read off the frame instead.  The
  centre of mass of a far-field pattern is the exit wave's mean phase gradient,
  ``<grad(phase_object + phase_probe)>`` weighted by ``|probe * object|**2``; the
  probe's share needs the object's amplitude, taken from the truth, from the model's
  amplitude head, or from the frames' totals
  (:func:`~ptychonn_ophyd.analysis.tilt.corrected_tilts`), then also with every
  offset solved at once over all overlaps
  (:func:`~ptychonn_ophyd.analysis.offsets.solved_offsets`): what the demo does;
- ``refined against its frame`` (with ``--refine N``): each patch's phase (and, from a
  flat start, its amplitude) fitted to its own frame by ``N`` L-BFGS steps from the
  model's output, the probe known: how much the frame alone says beyond the network.

    python benchmarks/held_out_budget.py MODEL.pth [--refine 30]
"""

from __future__ import annotations

import argparse

import numpy as np

from ptychonn_ophyd.analysis.figure import covered
from ptychonn_ophyd.analysis.mosaic import stitch_in_order
from ptychonn_ophyd.analysis.offsets import stitch_with_solved_offsets
from ptychonn_ophyd.analysis.reconstruction import compare_phase
from ptychonn_ophyd.analysis.stitch import StitchedImage, stitch
from ptychonn_ophyd.analysis.tilt import (
    centroid_gradient,
    corrected_tilts,
    gradient_field,
    mean_gradient,
    probe_gradient_share,
    with_mean_gradient,
)
from ptychonn_ophyd.models import build_torch_model, open_model
from ptychonn_ophyd.moments import frame_moments
from ptychonn_ophyd.physics.diffraction import PtychoSimulation
from ptychonn_ophyd.training import TrainingConfig
from ptychonn_ophyd.training.evaluation import LIT_THRESHOLD, HeldOutCheck, predict


def refined_against_frames(
    phase: np.ndarray,
    amplitude: np.ndarray,
    frames: np.ndarray,
    simulation: PtychoSimulation,
    iterations: int,
    fit_amplitude: bool,
) -> np.ndarray:
    """Phase patches fitted by L-BFGS to the frames' square-root counts (probe known)."""
    import torch

    measured = torch.as_tensor(frames.astype(np.float32)).sqrt()
    probe = torch.as_tensor(simulation.probe)
    scale = float(np.sqrt(simulation.detector.photons))
    phase_t = torch.as_tensor(phase.astype(np.float32)).requires_grad_()
    log_amplitude = torch.as_tensor(np.log(amplitude).astype(np.float32))
    fitted = [phase_t, log_amplitude.requires_grad_()] if fit_amplitude else [phase_t]
    optimizer = torch.optim.LBFGS(fitted, max_iter=iterations, line_search_fn="strong_wolfe")

    def misfit() -> torch.Tensor:
        optimizer.zero_grad()
        wave = probe * torch.exp(log_amplitude + 1j * phase_t)
        far = torch.fft.fftshift(torch.fft.fft2(wave, norm="ortho"), dim=(-2, -1))
        loss = ((far.abs() * scale - measured) ** 2).sum()
        loss.backward()
        return loss

    optimizer.step(misfit)
    return phase_t.detach().numpy()


def slope_line(name: str, predicted: np.ndarray, truth: np.ndarray) -> str:
    """How ``predicted`` regresses on ``truth`` (both flat): slope and correlation."""
    centred = truth - truth.mean()
    slope = predicted @ centred / (centred @ centred)
    correlation = np.corrcoef(predicted, truth)[0, 1]
    return f"{name}: slope {slope:.3f} on the truth's, correlation {correlation:.3f}"


class Budget:
    """The held-out scan, a model's patches, and the stitched score of variations."""

    def __init__(self, model_path: str) -> None:
        self.check = HeldOutCheck(TrainingConfig())
        self.sim, self.weight = self.check.simulation, self.check.weight
        opened = open_model(model_path)
        predicted = predict(build_torch_model(opened.spec, opened.state_dict()), self.check.frames)
        self.phase = predicted["phase"].cpu().numpy()
        self.amplitude = predicted["amplitude"].cpu().numpy() if "amplitude" in predicted else None
        self.true_phase, self.true_amplitude = self.sim.ground_truth()

    def score(self, image: StitchedImage) -> str:
        ssim, rms = compare_phase(image.image, self.sim.obj.phase, covered(image.weight))
        return f"SSIM {ssim:.3f}  rms {rms:.3f} rad"

    def mosaic(self, patches: np.ndarray) -> str:
        sim = self.sim
        stitched, _ = stitch_in_order(patches, sim.positions_um, sim.obj.pixel_size_um, self.weight)
        return self.score(stitched.on_grid(sim.obj.shape))

    def calibration(self) -> list[str]:
        """How the model's tilts (and amplitude) regress on the truth's."""
        truth = mean_gradient(gradient_field(self.true_phase), self.weight)
        own = mean_gradient(gradient_field(self.phase), self.weight)
        lines = [slope_line(f"tilt {name}", own[:, i], truth[:, i]) for i, name in enumerate("xy")]
        if self.amplitude is not None:
            lit = np.broadcast_to(self.weight >= LIT_THRESHOLD, self.amplitude.shape)
            lines.append(slope_line("amplitude", self.amplitude[lit], self.true_amplitude[lit]))
        return lines

    def made_true(self) -> dict[str, str]:
        """The patches as predicted, with true offsets, and with true tilts."""
        sim, weight, phase = self.sim, self.weight, self.phase
        offsets = ((self.true_phase - phase) * weight).sum((-2, -1)) / weight.sum()
        shifted = phase + offsets[:, None, None]
        truth_gradient = mean_gradient(gradient_field(self.true_phase), weight)
        return {
            "as predicted": self.mosaic(phase),
            "true offsets": self.score(
                stitch(shifted, sim.positions_um, sim.obj.pixel_size_um, sim.obj.shape, weight)
            ),
            "true tilts": self.mosaic(with_mean_gradient(phase, truth_gradient, weight)),
        }

    def from_centre_of_mass(self) -> dict[str, str]:
        """Tilts read off the frames, the probe's share from each amplitude at hand."""
        sim = self.sim
        totals, centroids = frame_moments(self.check.frames)
        centre = centroid_gradient(centroids, sim.patch_size)
        amplitudes = {"true amplitude": self.true_amplitude}
        if self.amplitude is not None:
            amplitudes["the model's amplitude"] = self.amplitude
        rows = {}
        for name, amplitude in amplitudes.items():
            gradient = centre - probe_gradient_share(sim.probe, amplitude)
            patches = with_mean_gradient(self.phase, gradient, self.weight * amplitude**2)
            rows[f"tilts from the centre of mass, {name}"] = self.mosaic(patches)
        patches = corrected_tilts(
            self.phase, sim.positions_um, sim.obj.pixel_size_um, sim.probe, totals, centroids
        )
        rows["tilts from the centre of mass, amplitude from the totals"] = self.mosaic(patches)
        rows["  and offsets solved over all overlaps"] = self.score(
            stitch_with_solved_offsets(
                patches, sim.positions_um, sim.obj.pixel_size_um, self.weight, sim.obj.shape
            )
        )
        return rows

    def refit(self, iterations: int) -> dict[str, str]:
        """Patches refit to their frames, amplitude known or fitted from a flat start."""
        frames, sim = self.check.frames, self.sim
        transmitted = np.sqrt(frames.sum((-2, -1)) / sim.detector.photons)
        starts = {
            "true amplitude": (self.true_amplitude, False),
            "amplitude fitted from flat": (
                np.ones_like(self.phase) * transmitted[:, None, None],
                True,
            ),
        }
        rows = {}
        for name, (amplitude, fit) in starts.items():
            refit = refined_against_frames(self.phase, amplitude, frames, sim, iterations, fit)
            rows[f"refined against its frame, {name}"] = self.mosaic(refit)
        return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a checkpoint (.pth) trained on the package's physics")
    parser.add_argument("--refine", type=int, default=0, help="L-BFGS steps of the refit rows")
    args = parser.parse_args()
    budget = Budget(args.model)
    print("\n".join(budget.calibration()))
    rows = {**budget.made_true(), **budget.from_centre_of_mass()}
    if args.refine:
        rows.update(budget.refit(args.refine))
    for name, result in rows.items():
        print(f"{name:<57} {result}")


if __name__ == "__main__":
    main()
