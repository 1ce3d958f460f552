"""Our ONNX Runtime engine against a bare ONNX Runtime session on the same model.

    python benchmarks/onnxruntime_overhead.py --model M.onnx --batch 8 --rounds 5

Alternates the two in rounds so that load from other processes hits both alike.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort

from ptychonn_ophyd.engines import create_engine
from ptychonn_ophyd.models import open_model


def rate(run, frames: np.ndarray, seconds: float) -> float:
    run(frames)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run(frames)
        calls += 1
    return calls * len(frames) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    model = open_model(args.model)
    session = ort.InferenceSession(model.onnx_bytes(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    engine = create_engine(model, backend="onnxruntime", max_batch=args.batch)
    frames = np.random.default_rng(0).poisson(20.0, (args.batch, *model.input_shape))
    frames = frames.astype(np.float32)
    bare, ours = [], []
    for _ in range(args.rounds):
        bare.append(rate(lambda f: session.run(None, {name: f[:, None]}), frames, args.seconds))
        ours.append(rate(engine.infer, frames, args.seconds))
    print(f"bare session : {np.median(bare):.0f} frames/s (median of {args.rounds})")
    print(
        f"engine.infer : {np.median(ours):.0f} frames/s ({np.median(ours) / np.median(bare):.1%})"
    )


if __name__ == "__main__":
    main()
