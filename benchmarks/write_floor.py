"""What storing a run's rows costs on this host's disk, with nothing else running: the
floor under any writer of the inference stream.

Writes ``--rows`` rows of ``--shape`` float32 images to ``--folder``, two ways: plain
``f.write`` of the same bytes, and :class:`~ptychonn_ophyd.store.file.InferenceFile`
appends of ``--part`` rows (what the writing thread gathers in 50 ms at the detector's
rate) with every column, as a run's file holds, given as one batch and as batches of
``--batch`` rows (as the writing thread gets them: one a worker's result batch).
Prints the CPU and wall time a row and the rate each would hold on one core.

    python benchmarks/write_floor.py --rows 16384 --part 1000 --batch 8 --folder /tmp
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from ptychonn_ophyd.run_schema import COLUMNS
from ptychonn_ophyd.store.file import InferenceFile, RowLayout


def timed(label: str, rows: int, write) -> None:
    cpu, wall = time.process_time(), time.perf_counter()
    write()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(
        f"{label:<58} {1e6 * cpu / rows:7.1f} us CPU a row, {1e6 * wall / rows:7.1f} us wall "
        f"({rows / max(cpu, 1e-9):,.0f} rows/s on one core)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=16384)
    parser.add_argument("--part", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=8, help="rows a worker's batch")
    parser.add_argument("--shape", type=int, nargs=2, default=(128, 128))
    parser.add_argument("--folder", default=tempfile.gettempdir())
    parser.add_argument(
        "--repeats", type=int, default=2, help="rounds (the first pays the page cache's growth)"
    )
    args = parser.parse_args()
    shape = tuple(args.shape)
    images = np.random.default_rng(0).random((args.part, *shape), np.float32)
    rows = {key: np.zeros(args.part, column.dtype_numpy) for key, column in COLUMNS.items()}
    rows["phase"] = images
    parts = args.rows // args.part
    total = parts * args.part
    folder = Path(tempfile.mkdtemp(dir=args.folder, prefix="write_floor-"))
    print(
        f"{total} rows of {shape} float32 ({total * images[0].nbytes / 2**30:.2f} GiB) in {folder}"
    )

    def plain() -> None:
        with open(folder / "plain.bin", "wb") as f:
            for _ in range(parts):
                f.write(images)  # the buffer itself, no copy

    batches = [
        {key: column[i : i + args.batch] for key, column in rows.items()}
        for i in range(0, args.part, args.batch)
    ]

    def hdf5(*given: dict) -> None:
        file = InferenceFile(folder / "run.h5", RowLayout(shape, False))
        for _ in range(parts):
            file.append(*given)
        file.close()
        file.release()

    for round in range(args.repeats):
        timed(f"{round + 1}: plain f.write", total, plain)
        for label, given in (("one batch", [rows]), (f"batches of {args.batch}", batches)):
            timed(
                f"{round + 1}: InferenceFile.append, {args.part} rows in {label}",
                total,
                lambda given=given: hdf5(*given),
            )
            for path in folder.iterdir():
                path.unlink()
    folder.rmdir()


if __name__ == "__main__":
    main()
