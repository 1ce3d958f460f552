"""Draw the latest run (or a given one) of the default catalog into a PNG.

    python examples/replay.py [UID] [--stitch-again] [--pixel-size UM] [--positions]

What ``ptychonn-ophyd replay UID`` does, step by step: read the run's ``inference``
stream and take the mosaic the live view stored with it (each patch given its frame's
tilt, offsets solved over the scan); with ``--stitch-again``, or for a run without one,
place its phase patches at their scan positions instead (each offset matched to the
patches before it, weighted by the window stored with the run) with the object pixel
size of the start document, and draw the result.
"""

import argparse

from ptychonn_ophyd.analysis.replay import find_run, load_inference, save_png, stitch_run
from ptychonn_ophyd.catalog import open_existing_catalog, resolve_location

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("uid", nargs="?", default="-1", help="run uid or -1 (latest)")
parser.add_argument("--stitch-again", action="store_true", help="ignore the stored mosaic")
parser.add_argument("--pixel-size", type=float, help="object pixel size in micrometres")
parser.add_argument("--positions", action="store_true", help="mark the scan positions")
args = parser.parse_args()

catalog = open_existing_catalog()
run = find_run(catalog, args.uid, str(resolve_location()))
data = load_inference(run)
stored = data.mosaic is not None and not args.stitch_again and args.pixel_size is None
if stored:
    phase, amplitude = data.mosaic.phase, data.mosaic.amplitude
    how = {"stitching": data.mosaic.stitching}
else:
    (phase, amplitude), how = stitch_run(data, args.pixel_size), {}
print(f"{len(data.phase)} frames -> {phase.image.shape[1]}x{phase.image.shape[0]} pixels")

start = run.metadata["start"]
path = f"replay-{start['uid'][:8]}.png"
print(f"wrote {save_png(path, data, phase, amplitude, args.positions, **how)}")
