"""The RunEngine with metadata that persists between sessions, live table and progress bar.

Figures are drawn by Qt's main thread where there is a screen, and not at all without
one (see ``ptychonn_ophyd.session.display``).  The scan's progress bar is subscribed
before the live table, so that the table's lines print on a clean line (see
``ptychonn_ophyd.session.progress``).
"""

from bluesky import RunEngine
from bluesky.callbacks.best_effort import BestEffortCallback
from bluesky.utils import PersistentDict, ProgressBarManager
from IPython import get_ipython

from ptychonn_ophyd.paths import run_engine_metadata
from ptychonn_ophyd.session.display import NO_FIGURES, choose_backend
from ptychonn_ophyd.session.progress import show_progress

backend = choose_backend(get_ipython())

RE = RunEngine()
RE.md = PersistentDict(run_engine_metadata())  # examples/scan.py keeps the same
RE.md.setdefault("beamline_id", "ptychonn-sim")
RE.waiting_hook = ProgressBarManager()  # waits on moves
progress = show_progress(RE)  # the scan's points or frames; 40-inference follows the device

bec = BestEffortCallback()
if backend == NO_FIGURES:  # tables only
    bec.disable_plots()
RE.subscribe(bec)
