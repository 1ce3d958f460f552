"""Train a fresh network with or without Poisson noise: is it the photons or the width?

One ``training.recipe.train`` run at batch 256, one-cycle to lr 1e-3, with the recipe's
data otherwise.  ``--noise-free`` replaces the Poisson draw of
:func:`~ptychonn_ophyd.physics.forward_torch.count_photons` by the expected counts
(clipped at the detector's maximum alike), for training and validation frames both,
so the validation error it reaches is what the network can do without shot noise.
Runs side by side on one GPU (BENCHMARKS.md, "What holds the validation error")::

    python benchmarks/noise_floor.py OUT/ctl --nconv 16 &
    python benchmarks/noise_floor.py OUT/clean --nconv 16 --noise-free &
    python benchmarks/noise_floor.py OUT/clean32 --nconv 32 --noise-free &
    wait

Each prints its per-epoch log and the final metrics as JSON and writes the model and
recipe into its folder.
"""

from __future__ import annotations

import argparse
import json
import logging

import numpy as np
import torch

from ptychonn_ophyd.physics import forward_torch
from ptychonn_ophyd.training import TrainingConfig
from ptychonn_ophyd.training.recipe import train


def expected_counts(
    expected: torch.Tensor, dtype: str = "int16", generator: torch.Generator | None = None
) -> torch.Tensor:
    """:func:`~ptychonn_ophyd.physics.forward_torch.count_photons` without the noise."""
    return expected.float().clamp(max=float(np.iinfo(dtype).max))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="folder for the model and its recipe")
    parser.add_argument("--nconv", type=int, default=16)
    parser.add_argument("--noise-free", action="store_true", help="expected counts, no Poisson")
    parser.add_argument("--epochs", type=int, default=28)
    parser.add_argument("--frames-per-epoch", type=int, default=65536)
    parser.add_argument("--validation-frames", type=int, default=2048)
    args = parser.parse_args()
    if args.noise_free:
        forward_torch.count_photons = expected_counts
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = TrainingConfig(
        nconv=args.nconv,
        epochs=args.epochs,
        frames_per_epoch=args.frames_per_epoch,
        n_validation_frames=args.validation_frames,
        batch_size=256,
        learning_rate=1e-3,
        check_every=0,
    )
    result = train(config, args.out, "model", progress=False)
    print(json.dumps(result.metrics))


if __name__ == "__main__":
    main()
