"""The device's workers: a pool and the monitor of its batch channels, started (or
attached to, when the workers run as services elsewhere), kept warm between stagings,
and stopped.

Starting a pool takes seconds (imports, CUDA, channels); :class:`Workers` keeps one
running after a staging when asked, and gives it to the next staging whose settings are
the same, so back-to-back scans start at once.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

from ptychonn_ophyd.errors import WorkerDiedError
from ptychonn_ophyd.pool import WorkerPool, open_pool
from ptychonn_ophyd.session.results import ResultFanout
from ptychonn_ophyd.session.store_link import StoreLink
from ptychonn_ophyd.settings import PoolConfig
from ptychonn_ophyd.store.monitor import ResultMonitor

Receiver = ResultMonitor | StoreLink
"""What receives the pool's batches: a monitor in the session, or the store process."""


class Workers:
    """The pool of a device and what receives its results, with at most one set kept warm.

    Parameters
    ----------
    name
        The device's, for messages.
    results
        Given every result batch (in a pvapy thread, or the store link's).
    announce
        Told when the pool starts, what its start waits for, and when it is ready.
    store_process
        Receive the batches in a store process (:class:`StoreLink`), not in this one.
    """

    def __init__(
        self,
        name: str,
        results: ResultFanout,
        announce: Callable[[str], None],
        store_process: bool = False,
    ) -> None:
        self.name = name
        self.pool: WorkerPool | None = None
        self.store_process = store_process
        self._results = results
        self._announce = announce
        self._monitor: Receiver | None = None
        self._config: PoolConfig | None = None
        self._warm: tuple[PoolConfig, WorkerPool, Receiver] | None = None

    @property
    def monitor(self) -> Receiver | None:
        """What receives the running pool's batches (``None`` when not started)."""
        return self._monitor

    def check_store(self) -> None:
        """Raise :class:`~ptychonn_ophyd.errors.ResultStoreError` if the store process
        ended while the pool runs."""
        if isinstance(self._monitor, StoreLink):
            self._monitor.check_health()

    def start(self, config: PoolConfig, timeout: float) -> WorkerPool:
        """The running pool for ``config``: the one kept warm when its settings are these,
        else a new one, ready (waits up to ``timeout`` s for every worker)."""
        warm, self._warm = self._warm, None
        if warm is not None and warm[0] == config and healthy(warm[1]) and self._fits(warm[2]):
            self._config, self.pool, self._monitor = warm
            self._announce(f"{self.name}: {_workers(config)} kept warm, ready at once")
            return self.pool
        if warm is not None:
            _close(*warm[1:])
        how = "attaching to" if config.attach else "starting"
        self._announce(
            f"{self.name}: {how} {_workers(config)} on {config.input_channel} at "
            f"{time.strftime('%H:%M:%S')} (model {Path(config.model).name}, {config.backend})"
        )
        began = time.monotonic()
        self._config, self.pool = config, open_pool(config)
        self.pool.start(
            timeout=timeout, progress=lambda line: self._announce(f"{self.name}: {line}")
        )
        self._monitor = self._receiver(self.pool.batch_channels)
        self._monitor.start()
        facts = self.pool.facts()
        where = f" on {_hosts(facts['hosts'])}" if config.attach else ""
        self._announce(
            f"{self.name}: {_workers(config)}{where} ready in {time.monotonic() - began:.1f} s "
            f"({facts.get('engine') or config.backend})"
        )
        return self.pool

    def _fits(self, receiver: Receiver) -> bool:
        """Whether a warm ``receiver`` still serves: a store process relays the images
        only if a subscriber (a live view) needed them when it started."""
        if not isinstance(receiver, StoreLink):
            return True
        return receiver.images or not self._results.needs_images

    def _receiver(self, channels: list[str]) -> Receiver:
        if not self.store_process:
            return ResultMonitor(channels, self._results.on_batch)
        self._announce(f"{self.name}: starting the results store process")
        return StoreLink(channels, self._results.on_batch, images=self._results.needs_images)

    def release(self, keep_warm: bool) -> None:
        """Let go of the running pool: kept warm when asked and healthy, else stopped."""
        pool, monitor, config = self.pool, self._monitor, self._config
        self.pool = self._monitor = None
        if keep_warm and pool is not None and monitor is not None and healthy(pool):
            self._warm = (config, pool, monitor)
            return
        _close(pool, monitor)

    def shutdown(self) -> None:
        """Stop the pool kept warm."""
        warm, self._warm = self._warm, None
        if warm is not None:
            _close(*warm[1:])


def _close(pool: WorkerPool | None, monitor: Receiver | None) -> None:
    """Stop ``pool``, then ``monitor``."""
    with contextlib.ExitStack() as stopping:
        # Last in, first out: the monitor stops after the pool, because pvapy's
        # stopMonitor holds the GIL and a result arriving meanwhile could wait for good.
        if monitor is not None:
            stopping.callback(monitor.stop)
        if pool is not None:
            stopping.callback(pool.stop)


def _workers(config: PoolConfig) -> str:
    """``"1 worker"`` or ``"4 workers"``."""
    return f"{config.n_workers} worker{'s' * (config.n_workers != 1)}"


def _hosts(hosts: dict[str, str]) -> str:
    """``gpu1 (1, 2), gpu2 (3, 4)``: which host runs which workers."""
    by_host: dict[str, list[str]] = {}
    for consumer_id, host in hosts.items():
        by_host.setdefault(host or "?", []).append(consumer_id)
    return ", ".join(f"{host} ({', '.join(ids)})" for host, ids in by_host.items())


def healthy(pool: WorkerPool) -> bool:
    """Whether every worker of ``pool`` still runs."""
    try:
        pool.check_health()
    except WorkerDiedError:
        return False
    return True
