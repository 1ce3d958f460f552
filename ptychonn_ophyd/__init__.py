"""Live PtychoNN ptychography inference for Bluesky beamlines over EPICS PV Access."""

__version__ = "0.1.0"
