"""Measuring engine throughput and latency across batch sizes."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ptychonn_ophyd.engines.base import InferenceEngine

DEFAULT_BATCHES = (1, 8, 64, 256, 1024)


@dataclass(frozen=True)
class BenchResult:
    """Timing of ``calls`` whole :meth:`InferenceEngine.infer` calls at one batch size.

    Latencies include the host-to-device and device-to-host copies of each call.
    """

    engine: str
    batch: int
    calls: int
    frames_per_s: float
    latency_p50_ms: float
    latency_p99_ms: float


def bench_engine(
    engine: InferenceEngine, batch: int, seconds: float = 2.0, warmup: int = 3, seed: int = 0
) -> BenchResult:
    """Time ``engine.infer`` on Poisson-count frames for about ``seconds``."""
    rng = np.random.default_rng(seed)
    frames = rng.poisson(20.0, (batch, *engine.input_shape)).astype(np.float32)
    for _ in range(warmup):
        engine.infer(frames)
    latencies = []
    start = time.perf_counter()
    while not latencies or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        engine.infer(frames)
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    p50, p99 = np.percentile(latencies, [50, 99]) * 1e3
    return BenchResult(
        engine.description, batch, len(latencies), batch * len(latencies) / elapsed, p50, p99
    )


def format_table(results: list[BenchResult]) -> str:
    """A fixed-width table, one row per engine and batch size."""
    header = f"{'engine':<58} {'batch':>6} {'frames/s':>10} {'p50 ms':>9} {'p99 ms':>9}"
    rows = [
        f"{r.engine:<58} {r.batch:>6} {r.frames_per_s:>10.0f} "
        f"{r.latency_p50_ms:>9.2f} {r.latency_p99_ms:>9.2f}"
        for r in results
    ]
    return "\n".join([header, "-" * len(header), *rows])
