"""The simulated beamline: two sample motors and a ptychography detector serving PVA."""

import os

from ophyd.sim import SynAxis

from ptychonn_ophyd.physics.diffraction import PtychoSimulation
from ptychonn_ophyd.physics.objects import held_out_object
from ptychonn_ophyd.physics.probe import make_probe
from ptychonn_ophyd.sim.detector import SimPtychoDetector

sx = SynAxis(name="sx")  # micrometres
sy = SynAxis(name="sy")
det = SimPtychoDetector(
    PtychoSimulation(held_out_object(), make_probe()),
    sx,
    sy,
    channel=os.environ.get("PTYCHONN_SIM_CHANNEL", "sim:det:image"),
    name="det",
)
