"""Frames per second of training-data generation: the torch sampler and the numpy path.

    python benchmarks/training_data.py --device cuda --batch 1024 --seconds 10

The torch sampler (:class:`ptychonn_ophyd.training.sampler.FrameSampler`) draws random
objects, probes and Poisson frames on ``--device``; the numpy path is
:class:`~ptychonn_ophyd.physics.diffraction.PtychoSimulation` on one CPU core, as the
simulated detector and the held-out check use it.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ptychonn_ophyd.physics.held_out import DemoScan
from ptychonn_ophyd.training import TrainingConfig
from ptychonn_ophyd.training.sampler import FrameSampler


def sampler_rate(sampler: FrameSampler, batch: int, seconds: float) -> float:
    """Frames a second drawn by the torch sampler (synchronised with its device)."""
    sampler.draw(batch)  # warm-up: kernels, plans
    sync(sampler.device)
    frames, begin = 0, time.perf_counter()
    while time.perf_counter() - begin < seconds:
        frames += len(sampler.draw(batch))
        sync(sampler.device)
    return frames / (time.perf_counter() - begin)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (timings must include it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def numpy_rate(seconds: float) -> float:
    """Frames a second of the numpy simulation of the held-out scan, one process."""
    config = TrainingConfig()
    simulation = DemoScan().simulation(config.probe, config.style)
    frames, begin = 0, time.perf_counter()
    while time.perf_counter() - begin < seconds:
        frames += len(simulation.frames(np.arange(64)))
    return frames / (time.perf_counter() - begin)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    sampler = FrameSampler(TrainingConfig(), args.device, seed=0)
    rate = sampler_rate(sampler, args.batch, args.seconds)
    print(f"torch sampler on {args.device}, batch {args.batch}: {rate:,.0f} frames/s")
    print(f"numpy simulation, one process: {numpy_rate(args.seconds):,.0f} frames/s")


if __name__ == "__main__":
    main()
