"""A Bluesky session on its own host whose inference device attaches to pool services on
others: one fly scan, then one JSON line with its outcome.

Run as a process of its own (pvAccess reads ``EPICS_PVA_ADDR_LIST`` once a process):

    python tests/remote_session.py MODEL PREFIX N_WORKERS SIDE RATE FOLDER [--drop COMMAND AT]

``--drop`` runs ``COMMAND`` (a host dropping off) once ``AT`` results came in.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bluesky_world import beamline, until

from ptychonn_ophyd.run_schema import frame_accounting
from ptychonn_ophyd.session.plans import scan_with_inference


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("prefix")
    parser.add_argument("n_workers", type=int)
    parser.add_argument("side", type=int)
    parser.add_argument("rate", type=float)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--drop", nargs=2, metavar=("COMMAND", "AT"))
    args = parser.parse_args()
    outcome: dict = {}
    with beamline(args.folder, args.prefix, args.model, n_workers=args.n_workers, attach=True) as w:
        w.det.fly_rate_hz = args.rate
        plan = scan_with_inference(
            w.det, w.inference, w.sy, -0.3, 0.3, args.side, w.sx, -0.3, 0.3, args.side, mode="fly"
        )
        if args.drop:
            command, at = args.drop

            def drop() -> None:
                until(lambda: w.inference.inferred_count >= int(at), "results", 120)
                subprocess.run(shlex.split(command), check=True)

            threading.Thread(target=drop, daemon=True).start()
        began = time.monotonic()
        try:
            w.RE(plan)
            outcome["error"] = ""
        except Exception as err:
            outcome["error"] = f"{type(err).__name__}: {err}"
        outcome["wall_s"] = time.monotonic() - began
        run = w.catalog[-1]
        outcome["accounting"] = frame_accounting(run)
        outcome["hosts"] = run.metadata["start"]["ptychonn"]["hosts"]
        outcome["exit_status"] = run.metadata["stop"]["exit_status"]
    print(json.dumps(outcome), flush=True)


if __name__ == "__main__":
    main()
