"""The RunEngine with metadata that persists between sessions, live table and progress bar."""

# ruff: noqa: F821 (STATE_DIR comes from 00-environment.py)

import matplotlib
from bluesky import RunEngine
from bluesky.callbacks.best_effort import BestEffortCallback
from bluesky.utils import PersistentDict, ProgressBarManager

RE = RunEngine()
RE.md = PersistentDict(STATE_DIR / "runengine-metadata")
RE.md.setdefault("beamline_id", "ptychonn-sim")
RE.waiting_hook = ProgressBarManager()

bec = BestEffortCallback()
if matplotlib.get_backend().lower() == "agg":  # no display: tables only
    bec.disable_plots()
RE.subscribe(bec)
