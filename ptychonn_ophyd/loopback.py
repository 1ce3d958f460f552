"""Keeping EPICS PV Access on this host, for the demo, tests, benchmarks and examples."""

from __future__ import annotations

import os

LOOPBACK_ENV = {
    "EPICS_PVA_ADDR_LIST": "127.0.0.1",
    "EPICS_PVA_AUTO_ADDR_LIST": "NO",
    "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
}
"""Search and serve on 127.0.0.1 only: nothing is sent to, or heard from, the network."""


def use_loopback(force: bool = True) -> None:
    """Set :data:`LOOPBACK_ENV` for this process and the processes it starts.

    Call it before pvaccess is imported. ``force=False`` keeps settings the user made,
    for code (the profile, the examples) that may later be pointed at a real beamline.
    """
    for key, value in LOOPBACK_ENV.items():
        if force:
            os.environ[key] = value
        else:
            os.environ.setdefault(key, value)
