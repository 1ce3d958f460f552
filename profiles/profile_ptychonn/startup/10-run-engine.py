"""The RunEngine with metadata that persists between sessions, live table and progress bar."""

import matplotlib
from bluesky import RunEngine
from bluesky.callbacks.best_effort import BestEffortCallback
from bluesky.utils import PersistentDict, ProgressBarManager

from ptychonn_ophyd.paths import run_engine_metadata

RE = RunEngine()
RE.md = PersistentDict(run_engine_metadata())  # examples/scan.py keeps the same
RE.md.setdefault("beamline_id", "ptychonn-sim")
RE.waiting_hook = ProgressBarManager()

bec = BestEffortCallback()
if matplotlib.get_backend().lower() == "agg":  # no display: tables only
    bec.disable_plots()
RE.subscribe(bec)
