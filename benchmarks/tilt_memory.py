"""Peak memory and time of replay's tilt path on a large raster scan.

Makes ``--side`` x ``--side`` phase patches (random, float32, as an inference stream
holds them) on a raster, with frame totals and centroids, then runs
:func:`~ptychonn_ophyd.analysis.tilt.corrected_tilts` and
:func:`~ptychonn_ophyd.analysis.offsets.stitch_with_solved_offsets` as
``ptychonn-ophyd replay --probe`` does, and prints each step's peak of traced numpy
memory beyond its inputs (``tracemalloc``) and its time.

    python benchmarks/tilt_memory.py [--side 49]
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from ptychonn_ophyd.analysis.offsets import stitch_with_solved_offsets
from ptychonn_ophyd.analysis.tilt import corrected_tilts
from ptychonn_ophyd.physics.probe import make_probe, probe_weight

PIXEL_UM = 0.01
STEP_PIXELS = 12


def scan(side: int, p: int) -> tuple[np.ndarray, ...]:
    """Patches ``(side**2, p, p)``, positions, totals and centroids of a raster scan."""
    rng = np.random.default_rng(0)
    n = side * side
    grid = np.arange(side) * STEP_PIXELS * PIXEL_UM
    positions = np.stack(np.meshgrid(grid, grid), -1).reshape(n, 2)
    phase = rng.normal(0, 0.3, (n, p, p)).astype(np.float32)
    totals = rng.uniform(0.8e6, 1.2e6, n)
    centroids = p // 2 + rng.normal(0, 0.5, (n, 2))
    return phase, positions, totals, centroids


def measured(step, *args):
    """``step(*args)``, its traced peak beyond what was held before (MB) and seconds."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    result = step(*args)
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] - before
    tracemalloc.stop()
    return result, peak / 1e6, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=49, help="raster points per side")
    args = parser.parse_args()
    probe = make_probe()
    phase, positions, totals, centroids = scan(args.side, probe.shape[0])
    print(f"{len(phase)} patches of {phase.shape[1:]}, {phase.nbytes / 1e6:.0f} MB as float32")
    tilted, peak, seconds = measured(
        corrected_tilts, phase, positions, PIXEL_UM, probe, totals, centroids
    )
    print(f"corrected_tilts: peak {peak:.0f} MB, {seconds:.1f} s")
    _, peak, seconds = measured(
        stitch_with_solved_offsets, tilted, positions, PIXEL_UM, probe_weight(probe)
    )
    print(f"stitch_with_solved_offsets: peak {peak:.0f} MB, {seconds:.1f} s")


if __name__ == "__main__":
    main()
