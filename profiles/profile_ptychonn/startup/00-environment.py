"""PV Access on loopback unless the beamline set EPICS addresses; where state is kept."""

import logging
import os
from pathlib import Path

for _key, _value in {
    "EPICS_PVA_ADDR_LIST": "127.0.0.1",
    "EPICS_PVA_AUTO_ADDR_LIST": "NO",
    "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
}.items():
    os.environ.setdefault(_key, _value)

STATE_DIR = Path(os.environ.get("PTYCHONN_STATE", "~/.local/share/ptychonn-ophyd")).expanduser()
STATE_DIR.mkdir(parents=True, exist_ok=True)
logging.getLogger("ptychonn_ophyd").setLevel(logging.INFO)
