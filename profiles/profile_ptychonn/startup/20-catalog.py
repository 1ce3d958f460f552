"""The catalog: embedded (no server) unless TILED_URI names a Tiled server."""

from ptychonn_ophyd.catalog import open_catalog

catalog = open_catalog()
"""``catalog[-1]`` is the latest run; ``catalog[uid]["inference"].read()`` its results."""
