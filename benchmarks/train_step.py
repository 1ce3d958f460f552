"""Frames per second of one training step, by numeric type, memory layout and batch size.

    python benchmarks/train_step.py --device cuda --batch 256 --seconds 8 --profile

Each variant trains the demo recipe's network (:mod:`ptychonn_ophyd.training.fit`'s
``step`` on the sampler's fresh batches) for ``--seconds`` after a warm-up and prints
frames/s; the sampler alone is timed too, so the step's own cost is the difference.
``--profile`` adds the operations that take most GPU time in the fastest variant
(``torch.profiler``).
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from training_data import sampler_rate, sync  # this folder's data-generation benchmark

from ptychonn_ophyd.training import TrainingConfig
from ptychonn_ophyd.training.fit import new_model, step
from ptychonn_ophyd.training.sampler import FrameSampler


@dataclass(frozen=True)
class Variant:
    """How one step is run."""

    dtype: str  # "bf16" (autocast) or "fp32"
    channels_last: bool
    batch: int

    def __str__(self) -> str:
        layout = "channels_last" if self.channels_last else "contiguous"
        return f"{self.dtype:4} {layout:13} batch {self.batch:4}"


def prepare(variant: Variant, sampler: FrameSampler):
    """The model, optimiser, autocast and layout of ``variant``."""
    model, _ = new_model(TrainingConfig(batch_size=variant.batch), sampler)
    memory = torch.channels_last if variant.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory).train()
    cuda = sampler.device.type == "cuda"
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4, fused=cuda)
    bf16 = variant.dtype == "bf16" and cuda
    autocast = torch.autocast("cuda", torch.bfloat16) if bf16 else nullcontext()
    return model, optimizer, autocast, memory


def rate(variant: Variant, sampler: FrameSampler, seconds: float, warmup: int = 10) -> float:
    """Training frames a second of ``variant``, synchronised with the device."""
    model, optimizer, autocast, memory = prepare(variant, sampler)
    for _ in range(warmup):
        step(model, optimizer, sampler.draw(variant.batch), autocast, memory)
    sync(sampler.device)
    frames, begin = 0, time.perf_counter()
    while time.perf_counter() - begin < seconds:
        for _ in range(10):
            step(model, optimizer, sampler.draw(variant.batch), autocast, memory)
        sync(sampler.device)
        frames += 10 * variant.batch
    return frames / (time.perf_counter() - begin)


def profile(variant: Variant, sampler: FrameSampler, steps: int = 20, rows: int = 12) -> None:
    """Print the operations that take the most device time over ``steps`` steps."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    model, optimizer, autocast, memory = prepare(variant, sampler)
    for _ in range(5):
        step(model, optimizer, sampler.draw(variant.batch), autocast, memory)
    sync(sampler.device)
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
    with profiler(activities=activities) as recorded:
        for _ in range(steps):
            step(model, optimizer, sampler.draw(variant.batch), autocast, memory)
        sync(sampler.device)
    print(f"--- {variant}: {steps} steps")
    print(recorded.key_averages().table(sort_by="cuda_time_total", row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    sampler = FrameSampler(TrainingConfig(), args.device, seed=0)
    alone = sampler_rate(sampler, args.batch, args.seconds)
    print(f"sampler alone, batch {args.batch}: {alone:,.0f} frames/s")
    variants = [
        Variant(dtype, channels_last, args.batch)
        for dtype in ("bf16", "fp32")
        for channels_last in (True, False)
    ]
    rates = {}
    for variant in variants:
        rates[variant] = rate(variant, sampler, args.seconds)
        print(f"{variant}: {rates[variant]:,.0f} frames/s", flush=True)
    best = max(rates, key=rates.get)
    for batch in (64, 1024):
        resized = Variant(best.dtype, best.channels_last, batch)
        print(f"{resized}: {rate(resized, sampler, args.seconds):,.0f} frames/s", flush=True)
    if args.profile and sampler.device.type == "cuda":
        profile(best, sampler)


if __name__ == "__main__":
    main()
