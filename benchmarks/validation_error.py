"""A model's phase error on unseen random objects, over several independent draws.

Each seed draws ``--frames`` validation samples on the CPU
(:class:`~ptychonn_ophyd.training.sampler.FrameSampler`, the training's distribution; the
training draws from seed 0) and prints the offset-free phase RMS over lit pixels
(:func:`~ptychonn_ophyd.training.evaluation.validate`), then the same with each
predicted patch given its true tilt (its probe-weighted mean phase gradient): how much
of the error is the tilt a single frame tells the network only roughly.

    python benchmarks/validation_error.py MODEL.pth [--frames 1024] [--seeds 1 2 3 4]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from ptychonn_ophyd.analysis.tilt import gradient_field, mean_gradient, with_mean_gradient
from ptychonn_ophyd.models import build_torch_model, open_model
from ptychonn_ophyd.training import TrainingConfig
from ptychonn_ophyd.training.evaluation import LIT_THRESHOLD, phase_rms_error, predict
from ptychonn_ophyd.training.sampler import FrameSampler


def errors(model: torch.nn.Module, n: int, seed: int) -> tuple[float, float]:
    """Phase RMS of ``n`` samples drawn with ``seed``: as predicted, and with true tilts."""
    data = FrameSampler(TrainingConfig(), "cpu", seed).draw(n)
    predicted = predict(model, data.frames)["phase"]
    lit = data.weight >= LIT_THRESHOLD
    truth, weight = data.phase.double().numpy(), data.weight.double().numpy()
    tilts = mean_gradient(gradient_field(truth), weight)
    tilted = with_mean_gradient(predicted.double().numpy(), tilts, weight)
    return (
        phase_rms_error(predicted, data.phase, lit),
        phase_rms_error(torch.as_tensor(tilted), data.phase.double(), lit),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a phase model checkpoint (.pth)")
    parser.add_argument("--frames", type=int, default=1024, help="samples per seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    args = parser.parse_args()
    opened = open_model(args.model)
    model = build_torch_model(opened.spec, opened.state_dict())
    rows = []
    print(f"{'seed':>4}  {'frames':>6}  {'phase rms':>9}  {'true tilts':>10}")
    for seed in args.seeds:
        rows.append(errors(model, args.frames, seed))
        print(f"{seed:>4}  {args.frames:>6}  {rows[-1][0]:>9.4f}  {rows[-1][1]:>10.4f}", flush=True)
    plain, tilted = np.sqrt(np.mean(np.square(rows), 0))
    print(f"{'all':>4}  {args.frames * len(rows):>6}  {plain:>9.4f}  {tilted:>10.4f}")


if __name__ == "__main__":
    main()
