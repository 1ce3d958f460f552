"""Scans of unseen random objects: the reconstruction's accuracy beyond the demo's object.

Each seed draws one object of the held-out scan's size from the training's distribution
of objects (:class:`~ptychonn_ophyd.training.sampler.FrameSampler`: views of its
photographs and textures, phase spans, amplitude floors; training draws from seed 0),
scans it along the held-out scan's Fermat spiral with the demo's probe and photon
budget, and judges a model's phase patches two ways:

- per patch, after removing each patch's offset, over lit pixels (as the training's
  validation does): the network's patches, and the same given their frames' tilts
  (:func:`~ptychonn_ophyd.analysis.tilt.corrected_tilts`);
- stitched, after one global offset, over the covered region (as the demo does): the
  live view without a probe (each patch matched to the ones before it,
  :class:`~ptychonn_ophyd.analysis.mosaic.Mosaic`), the live view with the probe
  (:class:`~ptychonn_ophyd.analysis.solved_mosaic.SolvedMosaic`, its final image, which
  replay gives again), and the whole-patch computation it stands for
  (:func:`~ptychonn_ophyd.analysis.tilt.corrected_tilts`, then
  :func:`~ptychonn_ophyd.analysis.offsets.stitch_with_solved_offsets`).

The last row pools the objects: the RMS of their errors, the mean of their SSIMs.

    python benchmarks/unseen_scans.py MODEL.pth [--seeds 1 2 ... 16]
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np
import torch

from ptychonn_ophyd.analysis.figure import covered
from ptychonn_ophyd.analysis.mosaic import stitch_in_order
from ptychonn_ophyd.analysis.offsets import stitch_with_solved_offsets
from ptychonn_ophyd.analysis.reconstruction import compare_phase
from ptychonn_ophyd.analysis.solved_mosaic import SolvedMosaic
from ptychonn_ophyd.analysis.stitch import StitchedImage
from ptychonn_ophyd.analysis.tilt import corrected_tilts
from ptychonn_ophyd.models import build_torch_model, open_model
from ptychonn_ophyd.moments import frame_moments
from ptychonn_ophyd.physics.diffraction import DetectorConfig, PtychoSimulation
from ptychonn_ophyd.physics.objects import ComplexObject
from ptychonn_ophyd.physics.probe import make_probe, probe_weight
from ptychonn_ophyd.physics.scan import fermat_spiral
from ptychonn_ophyd.training import TrainingConfig
from ptychonn_ophyd.training.evaluation import LIT_THRESHOLD, phase_rms_error, predict
from ptychonn_ophyd.training.sampler import FrameSampler


def random_object(config: TrainingConfig, seed: int) -> ComplexObject:
    """One object of the held-out scan's side, drawn as training draws its samples'."""
    size = config.demo.object_size
    sampler = FrameSampler(replace(config, probe=replace(config.probe, size=size)), "cpu", seed)
    phase, amplitude = (part[0].numpy() for part in sampler.objects(1))
    return ComplexObject(phase, amplitude, config.style.pixel_size_m, f"random seed {seed}")


def judge(model: torch.nn.Module, config: TrainingConfig, seed: int) -> dict[str, float]:
    """Per-patch and stitched phase errors of one unseen object's scan."""
    demo = config.demo
    obj = random_object(config, seed)
    positions = fermat_spiral(demo.radius_um, demo.step_um)
    sim = PtychoSimulation(
        obj, make_probe(config.probe), positions, DetectorConfig(photons=demo.photons), seed
    )
    frames = sim.frames()
    phase = predict(model, frames)["phase"].numpy().astype(np.float64)
    moments = frame_moments(frames)
    tilted = corrected_tilts(phase, positions, obj.pixel_size_um, sim.probe, *moments)
    truth = sim.ground_truth()[0].astype(np.float64)
    weight = probe_weight(sim.probe)
    lit = torch.as_tensor(weight >= LIT_THRESHOLD)
    ordered, _ = stitch_in_order(phase, positions, obj.pixel_size_um, weight)
    live = SolvedMosaic(obj.pixel_size_um, sim.probe)
    live.add(phase, positions, moments=moments)
    whole = stitch_with_solved_offsets(tilted, positions, obj.pixel_size_um, weight)

    def stitched(image: StitchedImage) -> tuple[float, float]:
        image = image.on_grid(obj.shape)
        return compare_phase(image.image, obj.phase, covered(image.weight))

    return {
        "patch rms": phase_rms_error(torch.as_tensor(phase), torch.as_tensor(truth), lit),
        "patch rms, frame tilts": phase_rms_error(
            torch.as_tensor(tilted), torch.as_tensor(truth), lit
        ),
        **dict(zip(("ordered ssim", "ordered rms"), stitched(ordered), strict=True)),
        **dict(zip(("live ssim", "live rms"), stitched(live.phase()), strict=True)),
        **dict(zip(("whole-patch ssim", "whole-patch rms"), stitched(whole), strict=True)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a phase model checkpoint (.pth)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(1, 17)))
    args = parser.parse_args()
    opened = open_model(args.model)
    model = build_torch_model(opened.spec, opened.state_dict())
    config = TrainingConfig()
    rows = []
    for seed in args.seeds:
        rows.append(judge(model, config, seed))
        if seed == args.seeds[0]:
            print("seed  " + "  ".join(f"{name:>22}" for name in rows[0]))
        print(f"{seed:>4}  " + "  ".join(f"{v:>22.3f}" for v in rows[-1].values()), flush=True)
    print("all   " + "  ".join(f"{v:>22.3f}" for v in pooled(rows).values()))


def pooled(rows: list[dict[str, float]]) -> dict[str, float]:
    """Over all objects (each scan has as many patches): RMS of the errors, mean SSIM."""
    values = {name: np.array([row[name] for row in rows]) for name in rows[0]}
    return {
        name: float(np.mean(v) if "ssim" in name else np.sqrt(np.mean(v**2)))
        for name, v in values.items()
    }


if __name__ == "__main__":
    main()
