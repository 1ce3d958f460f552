"""Replay every run of a saved catalog folder (e.g. one brought home from the beamline).

    python examples/replay_saved_catalog.py FOLDER [--output-dir DIR] [--overwrite]

Opens the embedded catalog in FOLDER read-through (no server), lists its runs and writes
one PNG per run that has an ``inference`` stream, ``scan-<id>-<uid8>.png``. A picture
already there is kept (so a second pass draws only new runs, and a picture made with
other options survives) unless ``--overwrite``. The HDF5 files of the runs must still
be where they were written (the catalog refers to them by absolute path).
"""

import argparse
from pathlib import Path

from ptychonn_ophyd.analysis.replay import replay
from ptychonn_ophyd.catalog import open_existing_catalog
from ptychonn_ophyd.run_schema import frame_accounting

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("folder", type=Path, help="folder of an embedded catalog")
parser.add_argument("--output-dir", type=Path, default=Path("."))
parser.add_argument("--overwrite", action="store_true", help="replace pictures already there")
args = parser.parse_args()

catalog = open_existing_catalog(args.folder)
args.output_dir.mkdir(parents=True, exist_ok=True)
for uid, run in catalog.items():
    start, stop = run.metadata["start"], run.metadata["stop"] or {}
    summary = frame_accounting(run)
    print(
        f"scan {start.get('scan_id')} {uid[:8]} {start.get('plan_name')} "
        f"{stop.get('exit_status')}: {summary.get('stored', 0)} of "
        f"{summary.get('produced', 0)} frames inferred"
    )
    if "inference" in run:
        png = args.output_dir / f"scan-{start.get('scan_id')}-{uid[:8]}.png"
        if png.exists() and not args.overwrite:
            print(f"  -> {png} is there already: kept (--overwrite replaces it)")
        else:
            print("  ->", replay(uid, catalog, png))
