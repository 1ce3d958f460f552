"""PV Access on loopback unless the beamline set EPICS addresses; where state is kept."""

import logging
import os
from pathlib import Path

from ptychonn_ophyd.loopback import use_loopback

use_loopback(force=False)

STATE_DIR = Path(os.environ.get("PTYCHONN_STATE", "~/.local/share/ptychonn-ophyd")).expanduser()
STATE_DIR.mkdir(parents=True, exist_ok=True)
logging.getLogger("ptychonn_ophyd").setLevel(logging.INFO)
