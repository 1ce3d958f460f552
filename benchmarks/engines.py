"""Engine throughput and where the time of one ``infer`` call goes, per backend and precision.

    python benchmarks/engines.py --model M.onnx --precisions fp32 bf16 --batches 1 8 256 1024

Prints the table of ``ptychonn-ophyd bench engines`` for every precision asked, then,
for the torch CUDA engine, the time of each stage of one graph launch (host copy into
pinned memory, host-to-device, graph replay, device-to-host, a host copy of the result)
at each batch size that has its own graph.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from ptychonn_ophyd.engines import EngineConfig, create_engine, unavailable_reason
from ptychonn_ophyd.engines.benchmark import DEFAULT_BATCHES, bench_engine, format_table


def stage_times(engine, batch: int, repeats: int = 20) -> dict[str, float]:
    """Milliseconds per stage of the torch CUDA engine's call, each timed alone."""
    import torch

    runner = engine._runner
    graph, static_in, static_out = runner._graphs[batch]
    frames = np.random.default_rng(0).poisson(20.0, (batch, *engine.input_shape)).astype(np.float32)
    pinned_in = runner._pinned_in[:batch]
    pinned_out = torch.empty(static_out[0].shape, pin_memory=True)

    def timed(step) -> float:
        step()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            step()
        torch.cuda.synchronize()
        return (time.perf_counter() - start) / repeats * 1e3

    return {
        "host_to_pinned": timed(lambda: pinned_in[:, 0].numpy().__setitem__(..., frames)),
        "h2d": timed(lambda: static_in.copy_(pinned_in, non_blocking=True)),
        "compute": timed(graph.replay),
        "d2h": timed(lambda: pinned_out.copy_(static_out[0], non_blocking=True)),
        "pinned_to_result": timed(lambda: pinned_out.numpy().copy()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--backends", nargs="+", default=["torch", "onnxruntime"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "tf32", "fp16", "bf16"])
    parser.add_argument("--batches", type=int, nargs="+", default=list(DEFAULT_BATCHES))
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    results, stages = [], {}
    for backend in args.backends:
        if unavailable_reason(backend):
            print(f"skipped {backend}: {unavailable_reason(backend)}")
            continue
        precisions = args.precisions if backend != "onnxruntime" else ["fp32"]
        for precision in precisions:
            config = EngineConfig(backend=backend, precision=precision, max_batch=max(args.batches))
            start = time.perf_counter()
            with create_engine(args.model, config) as engine:
                print(f"{engine.description}: ready in {time.perf_counter() - start:.1f} s")
                results += [bench_engine(engine, b, args.seconds) for b in args.batches]
                if backend == "torch" and "cuda" in engine.description:
                    graphs = engine._runner._graphs
                    stages[precision] = {
                        b: stage_times(engine, b) for b in args.batches if b in graphs
                    }
    print(format_table(results))
    for precision, by_batch in stages.items():
        print(f"\nstages of one torch call, {precision}, ms:")
        for batch, times in by_batch.items():
            print(f"  batch {batch:>5}: " + "  ".join(f"{k} {v:.3f}" for k, v in times.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": [r.__dict__ for r in results], "stages": stages}, f, indent=1)


if __name__ == "__main__":
    main()
