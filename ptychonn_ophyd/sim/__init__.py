"""A simulated ptychography beamline: real far-field physics, served like an areaDetector.

``objects``, ``probe``, ``scan`` and ``diffraction`` need only NumPy and scikit-image
(training uses them); ``server`` (PV Access) and ``detector`` (ophyd) are imported from
their modules so that those dependencies load only where they are used.
"""

from .diffraction import DetectorConfig, PtychoSimulation
from .objects import ComplexObject, ObjectStyle, held_out_object, named_object
from .probe import ProbeConfig, make_probe, probe_weight
from .scan import fermat_spiral, raster_scan, to_micrometres, to_pixels

__all__ = [
    "ComplexObject",
    "DetectorConfig",
    "ObjectStyle",
    "ProbeConfig",
    "PtychoSimulation",
    "fermat_spiral",
    "held_out_object",
    "make_probe",
    "named_object",
    "probe_weight",
    "raster_scan",
    "to_micrometres",
    "to_pixels",
]
