"""PV Access on loopback unless the beamline set EPICS addresses; where state is kept."""

import logging

from ptychonn_ophyd.loopback import use_loopback
from ptychonn_ophyd.paths import state_dir

use_loopback(force=False)

STATE_DIR = state_dir()
STATE_DIR.mkdir(parents=True, exist_ok=True)
logging.getLogger("ptychonn_ophyd").setLevel(logging.INFO)
