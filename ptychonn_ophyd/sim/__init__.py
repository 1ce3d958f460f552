"""A simulated ptychography beamline: the physics of :mod:`ptychonn_ophyd.physics` served
like an areaDetector.

``server`` (PV Access) and ``detector`` (ophyd) are imported from their modules so that
those dependencies load only where they are used.
"""
