"""The Bluesky side: the ophyd device, its inference stream, plans and the catalog.

Only this package imports :mod:`ptychonn_ophyd.pool`: staging the device starts the
workers.
"""
