"""The held-out scan that judges a model: a Fermat spiral over the camera/moon object.

Neither image is among the training images, so a model's accuracy here is its accuracy
on an object it never saw.
"""

from __future__ import annotations

from dataclasses import dataclass

from ptychonn_ophyd.physics.diffraction import DetectorConfig, PtychoSimulation
from ptychonn_ophyd.physics.objects import (
    HELD_OUT_MAGNIFICATION,
    HELD_OUT_SIZE,
    ObjectStyle,
    held_out_object,
)
from ptychonn_ophyd.physics.probe import ProbeConfig, make_probe
from ptychonn_ophyd.physics.scan import fermat_spiral


@dataclass(frozen=True)
class DemoScan:
    """The held-out demo scan: a Fermat spiral over the camera/moon object.

    With the defaults, 452 points 100 nm apart over a 384x384-pixel (3.84 um) object.
    """

    object_size: int = HELD_OUT_SIZE
    magnification: float = HELD_OUT_MAGNIFICATION
    radius_um: float = 1.2
    step_um: float = 0.1
    photons: float = 1e6
    seed: int = 1

    def simulation(self, probe: ProbeConfig, style: ObjectStyle) -> PtychoSimulation:
        """The scan's simulation with this probe and object style."""
        return PtychoSimulation(
            held_out_object(self.object_size, self.magnification, style),
            make_probe(probe),
            fermat_spiral(self.radius_um, self.step_um),
            DetectorConfig(photons=self.photons),
            self.seed,
        )
