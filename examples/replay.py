"""Stitch the latest run (or a given one) of the default catalog into a PNG.

    python examples/replay.py [UID] [--pixel-size UM] [--positions]

What ``ptychonn-ophyd replay UID`` does, step by step: read the run's ``inference``
stream, place its phase patches at their scan positions (averaged where they overlap)
with the object pixel size of the start document, and draw the result.
"""

import argparse

from ptychonn_ophyd.analysis.replay import find_run, load_inference, save_png, stitch_run
from ptychonn_ophyd.catalog import open_existing_catalog, resolve_location

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("uid", nargs="?", default="-1", help="run uid or -1 (latest)")
parser.add_argument("--pixel-size", type=float, help="object pixel size in micrometres")
parser.add_argument("--positions", action="store_true", help="mark the scan positions")
args = parser.parse_args()

catalog = open_existing_catalog()
run = find_run(catalog, args.uid, str(resolve_location()))
data = load_inference(run)
phase, amplitude = stitch_run(data, args.pixel_size)
print(f"{len(data.phase)} frames -> {phase.image.shape[1]}x{phase.image.shape[0]} pixels")

start = run.metadata["start"]
path = save_png(f"replay-{start['uid'][:8]}.png", data, phase, amplitude, args.positions)
print(f"wrote {path}")
