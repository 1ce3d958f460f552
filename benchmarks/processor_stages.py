"""Where a worker's CPU time per frame goes, stage by stage, outside the GPU.

Times the processor's own per-frame steps on the simulated detector's NTNDArray (int16
128x128 counts with ``ColorMode``, ``x``, ``y`` and ``point`` attributes and
timestamps), each in a loop of its own.  Every frame goes through, on pvAccess's
receive thread:

- ``decode``: :func:`~ptychonn_ophyd.worker.frames.decode_frame`;
- ``copy``: the PV copy kept at receipt (the frame's tags are read from it, and it
  becomes the frame's own result if it gets one);
- ``preprocess``: :meth:`~ptychonn_ophyd.preprocess.Preprocessor.into` the batch buffer;

then on the inference thread:

- ``tags``: :func:`~ptychonn_ophyd.wire.read_frame_tags` (uniqueId, time, position);
- ``moments``: :func:`~ptychonn_ophyd.moments.frame_moments` of a batch, per frame;
- ``batch``: :meth:`~ptychonn_ophyd.worker.output.BatchRecord.publish` of a batch
  (filling the batch value, posting it on a record nobody monitors), per frame.

A frame that also gets a result NTNDArray of its own (``frame_outputs`` ``every``, or
a preview) costs more:

- ``result``: :meth:`~ptychonn_ophyd.worker.output.ResultBuilder.result` (the image,
  the descriptor with the input's moments, the timestamp), and beside it what a result
  would cost more if it rewrote the frame's attribute list through pvapy
  (``getStructureArray`` then ``setStructureArray``), which it does not;
- ``publish``: ``PvaServer.updateUnchecked`` of the result on a record nobody monitors.

    python benchmarks/processor_stages.py --frames 2000 --repeats 5 --batch-size 32
"""

from __future__ import annotations

import argparse
import functools
import time
import uuid

import numpy as np


def received_frame(unique_id: int):
    """An NTNDArray as a consumer receives it from the simulated detector."""
    from ptychonn_ophyd.sim.server import make_frame

    counts = np.random.default_rng(0).poisson(20, (128, 128)).astype(np.int16)
    frame = make_frame(counts, x_um=1.5, y_um=-0.5, point=unique_id)
    frame["uniqueId"] = unique_id
    return frame


def round_trip(frame) -> None:
    """Read a frame's attribute list out of pvapy and write it back, as a result does."""
    frame.setStructureArray("attribute", frame.getStructureArray("attribute"))


def per_frame_us(step, n: int, repeats: int) -> float:
    """Microseconds per call of ``step(k)``: the best of ``repeats`` runs of ``n`` calls.

    ``k`` counts on across runs, so a step may use a fresh object per call.
    """
    best = float("inf")
    for run in range(repeats):
        begin = time.perf_counter()
        for k in range(run * n, (run + 1) * n):
            step(k)
        best = min(best, (time.perf_counter() - begin) / n)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000, help="calls per run")
    parser.add_argument("--repeats", type=int, default=5, help="runs; the best counts")
    parser.add_argument("--batch-size", type=int, default=32, help="frames a batch")
    args = parser.parse_args()

    from ptychonn_ophyd.loopback import use_loopback

    use_loopback()
    import pvaccess as pva

    from ptychonn_ophyd.moments import frame_moments
    from ptychonn_ophyd.preprocess import PreprocessConfig, Preprocessor
    from ptychonn_ophyd.wire import BATCH_FRAME_FIELDS, ResultBatch, read_frame_tags
    from ptychonn_ophyd.worker.frames import decode_frame
    from ptychonn_ophyd.worker.output import BatchRecord, ResultBuilder

    n = args.frames
    timed = functools.partial(per_frame_us, n=n, repeats=args.repeats)
    frame = received_frame(1)
    image, _ = decode_frame(frame)
    size = args.batch_size
    batch = np.zeros((size, 128, 128), np.float32)
    columns = {name: np.zeros(size) for name in BATCH_FRAME_FIELDS}
    results_batch = ResultBatch(1, "0123456789ab", 0, 0, 1e9, columns, batch)
    fill = Preprocessor(PreprocessConfig(), (128, 128)).into
    builder = ResultBuilder(1, (128, 128), resized=False)
    builder.set_model_hash("0123456789ab")
    phase = np.zeros((128, 128), np.float32)
    copies = [frame.copy() for _ in range(n * args.repeats)]
    results = [builder.result(frame.copy(), phase, 1e-3) for _ in range(n)]
    channel = f"stages{uuid.uuid4().hex[:8]}:output"
    server = pva.PvaServer()
    server.addRecord(channel, results[0].copy(), None)
    record = BatchRecord(server, channel.replace(":output", ":batch"))
    server.start()
    batches = max(n // size, 1)
    try:
        every_frame = {
            "decode": timed(lambda i: decode_frame(frame)),
            "copy": timed(lambda i: frame.copy()),
            "preprocess": timed(lambda i: fill(image, batch[i % size])),
            "tags": timed(lambda i: read_frame_tags(frame)),
            "moments": timed(lambda i: frame_moments(batch)) / size,
            "batch": per_frame_us(lambda i: record.publish(results_batch), batches, args.repeats)
            / size,
        }
        own_result = {
            "result": timed(lambda i: builder.result(copies[i], phase, 1e-3, 1e6, (63.5, 64.5))),
            "publish": timed(lambda i: server.updateUnchecked(channel, results[i % n])),
        }
        attributes = timed(lambda i: round_trip(frame))
    finally:
        server.stop()
    print(f"every frame (batch of {size}):")
    report(every_frame)
    print("a frame with a result NTNDArray of its own, besides:")
    report(own_result)
    print(f"{'':>10}  (rewriting the attribute list would add {attributes:.1f} µs)")
    both = sum(every_frame.values()) + sum(own_result.values())
    print(f"{'every':>10}: {both:7.1f} µs per frame with frame_outputs every")


def report(stages: dict[str, float]) -> None:
    """Print each stage's µs per frame and their total."""
    for name, us in stages.items():
        print(f"{name:>10}: {us:7.1f} µs per frame")
    total = sum(stages.values())
    print(f"{'total':>10}: {total:7.1f} µs per frame -> {1e6 / total:,.0f} frames/s on one core")


if __name__ == "__main__":
    main()
