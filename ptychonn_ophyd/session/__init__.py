"""The Bluesky side: the ophyd device, the runs' inference stream and its accounting, plans.

Only this package imports :mod:`ptychonn_ophyd.pool`: staging the device starts the
workers.  It imports without Tiled; only :mod:`~ptychonn_ophyd.session.wiring` (and
:mod:`ptychonn_ophyd.catalog`) need it.
"""
