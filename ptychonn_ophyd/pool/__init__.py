"""The parent side of the workers: starting or finding them, watching, commanding and
stopping them.

:class:`ConsumerPool` runs one ``pvapy-hpc-consumer`` process per worker
(:mod:`.process`); :class:`RemotePool` attaches to workers that run as services on other
hosts (:mod:`.remote`).  Both read their workers through the channels of
:mod:`.member` and offer what :class:`~.base.WorkerPool` declares; commands go from a
child process (:mod:`.control`).  The package imports only
:mod:`ptychonn_ophyd.settings`, :mod:`ptychonn_ophyd.wire` and what describes a
worker's model.
"""

from collections.abc import Sequence

from ptychonn_ophyd.pool.base import START_TIMEOUT_S, PoolStats, WorkerPool
from ptychonn_ophyd.pool.consumer_pool import ConsumerPool
from ptychonn_ophyd.pool.remote import RemotePool
from ptychonn_ophyd.settings import PoolConfig


def open_pool(config: PoolConfig, consumer_ids: Sequence[int] | None = None) -> WorkerPool:
    """The pool ``config`` describes, not yet started: a :class:`RemotePool` when its
    workers run already elsewhere (``attach``), else a :class:`ConsumerPool`."""
    kind = RemotePool if config.attach else ConsumerPool
    return kind(config, consumer_ids)


__all__ = [
    "START_TIMEOUT_S",
    "ConsumerPool",
    "PoolStats",
    "RemotePool",
    "WorkerPool",
    "open_pool",
]
