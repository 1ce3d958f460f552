"""Where ptychonn-ophyd keeps files of its own: session state and worker logs.

One definition for the IPython profile, the examples and the pool, so scan ids and
logs are found in the same place whichever of them made them.
"""

from __future__ import annotations

import os
from pathlib import Path


def state_dir() -> Path:
    """Session state (the RunEngine's persistent metadata): ``$PTYCHONN_STATE`` or
    ``~/.local/share/ptychonn-ophyd``."""
    return Path(os.environ.get("PTYCHONN_STATE", "~/.local/share/ptychonn-ophyd")).expanduser()


def run_engine_metadata() -> Path:
    """The ``PersistentDict`` folder holding ``RE.md``, scan ids included."""
    return state_dir() / "runengine-metadata"


def logs_dir() -> Path:
    """Where pools put their worker logs: ``$PTYCHONN_LOGS``, else
    ``$XDG_STATE_HOME/ptychonn-ophyd/logs`` (``~/.local/state/ptychonn-ophyd/logs``)."""
    if os.environ.get("PTYCHONN_LOGS"):
        return Path(os.environ["PTYCHONN_LOGS"]).expanduser()
    state_home = os.environ.get("XDG_STATE_HOME") or "~/.local/state"
    return Path(state_home).expanduser() / "ptychonn-ophyd" / "logs"
