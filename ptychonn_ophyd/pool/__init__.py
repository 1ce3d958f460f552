"""The parent side of the workers: starting, watching, commanding and stopping them.

:class:`ConsumerPool` runs one ``pvapy-hpc-consumer`` process per worker
(:mod:`.process`) and sends them commands from a child process (:mod:`.control`).  It
imports only :mod:`ptychonn_ophyd.settings`, :mod:`ptychonn_ophyd.wire` and what
describes a worker's model.
"""

from ptychonn_ophyd.pool.consumer_pool import START_TIMEOUT_S, ConsumerPool, PoolStats

__all__ = ["START_TIMEOUT_S", "ConsumerPool", "PoolStats"]
