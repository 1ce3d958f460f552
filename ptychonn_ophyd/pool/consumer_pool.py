"""Starting, watching and stopping the consumer processes that run PtychoNN on a stream.

Each worker is its own stock ``pvapy-hpc-consumer`` process (``--consumer-id k``)
running :class:`~ptychonn_ophyd.processor.InferPtychoNNImageProcessor`; pvapy's data
distributor hands each one runs of ``distributor_updates`` frames, and
``--oid-offset (n - 1) * updates + 1`` keeps pvapy's missed-frame count right.

Examples
--------
>>> config = PoolConfig(model="ptychonn.onnx", input_channel="ad:image", n_workers=2)
>>> with ConsumerPool(config) as pool:
...     pool.start(timeout=60.0)
...     pool.output_channels
['inference:1:output', 'inference:2:output']
"""

from __future__ import annotations

import logging
import multiprocessing.util
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

from ptychonn_ophyd.errors import PoolStartError, WorkerDiedError
from ptychonn_ophyd.paths import logs_dir
from ptychonn_ophyd.pool.base import START_TIMEOUT_S, WorkerPool, last_counts
from ptychonn_ophyd.pool.process import Worker, consumer_command, terminate
from ptychonn_ophyd.settings import PoolConfig
from ptychonn_ophyd.wire import FinalCounts

log = logging.getLogger(__name__)

STOP_MARGIN_S = 10.0
"""Seconds :meth:`ConsumerPool.stop` gives a worker beyond its ``stop_drain`` (to free its
engine and make pvapy's last report) before it kills it."""


class ConsumerPool(WorkerPool[Worker]):
    """``n_workers`` PtychoNN consumer processes on the input channel, or the share
    ``consumer_ids`` of them that runs on this host (pvapy's distributor shares the
    frames among the workers of every host that connect).  Several input channels
    (:attr:`~ptychonn_ophyd.settings.PoolConfig.input_channels`) each get an equal group
    of the workers.

    Workers stop on :meth:`stop`, on leaving a ``with`` block (Ctrl-C included), when
    the pool is garbage-collected or the interpreter exits, and, should the parent be
    killed outright, by themselves: each watches its parent's PID and exits when it
    is gone.
    """

    def __init__(self, config: PoolConfig, consumer_ids: Sequence[int] | None = None) -> None:
        super().__init__(config, consumer_ids)
        self._finalizer: weakref.finalize | None = None
        self._log_dir: Path | None = None
        self._own_log_dir = False
        self._failed = False
        self.final_counts: list[FinalCounts] = []
        """What each worker wrote as it stopped (:meth:`stop` fills it)."""

    @property
    def log_paths(self) -> list[Path]:
        """The workers' log files (pvapy's output and the processor's log lines)."""
        return [w.log_path for w in self._workers]

    def start(
        self, timeout: float = START_TIMEOUT_S, progress: Callable[[str], None] | None = None
    ) -> None:
        """Start the workers and wait until every one reports its engine ready.

        While it waits, ``progress`` (default: this module's logger at INFO) is told
        every few seconds which worker it waits for and why, so a start that cannot
        finish (no server on the input channel) is not silent.

        Raises
        ------
        PoolStartError
            A worker exited or was not ready within ``timeout`` s; every worker is
            stopped before this is raised.
        """
        if self._workers:
            raise RuntimeError("this pool was started already; make a new one")
        log_dir = self._make_log_dir()
        self._workers = [self._worker(k, log_dir) for k in self.consumer_ids]
        self._finalizer = weakref.finalize(
            self,
            _stop_unattended,
            list(self._workers),
            self._stop_timeout(None),
            log_dir if self._own_log_dir else None,
        )
        # A multiprocessing child (bluesky-queueserver's RE worker, whose environment
        # closes by ending the process) leaves through os._exit, past atexit and so past
        # weakref.finalize; multiprocessing runs its own finalizers first.
        multiprocessing.util.Finalize(self, self._finalizer, exitpriority=0)
        try:
            for worker in self._workers:
                worker.launch()
            self._wait_ready(timeout, progress or log.info)
        except BaseException:
            self._failed = True
            self.stop()
            raise

    @property
    def log_dir(self) -> Path | None:
        """The folder of the workers' logs: ``config.log_dir``, or a new one under
        :func:`~ptychonn_ophyd.paths.logs_dir` that a clean :meth:`stop` removes."""
        return self._log_dir

    def _make_log_dir(self) -> Path:
        if self.config.log_dir is not None:
            self._log_dir = self.config.log_dir
            self._log_dir.mkdir(parents=True, exist_ok=True)
        else:
            root = logs_dir()
            root.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y%m%d-%H%M%S")
            name = f"{stamp}-{self.config.output_prefix}-"
            self._log_dir = Path(tempfile.mkdtemp(prefix=name, dir=root))
            self._own_log_dir = True
        return self._log_dir

    def check_health(self) -> None:
        """Raise :class:`WorkerDiedError` if a worker process ended before :meth:`stop`."""
        if self._finalizer is None or not self._finalizer.alive:
            return
        for worker in self._workers:
            code = worker.exit_code()
            if code is not None:
                self._failed = True
                raise WorkerDiedError(
                    f"{worker.name} died with exit status {code} "
                    f"({last_counts(self._status(worker))}); its last log lines "
                    f"({worker.log_path}):\n{worker.log_tail()}"
                )

    def stop(self, timeout: float | None = None) -> None:
        """Stop every worker: SIGINT, then SIGKILL after ``timeout`` s.  Idempotent.

        A worker infers its queued frames for up to ``stop_drain`` s and counts the rest
        as dropped (``stopped``), so the default ``timeout`` is ``stop_drain`` +
        :data:`STOP_MARGIN_S`.  The counts each worker wrote last are then in
        :attr:`final_counts`; a worker that wrote none (killed, or dead before) is named
        in a warning, since the frames it still held are counted nowhere.
        """
        if self._finalizer is None or not self._finalizer.detach():
            return
        died = [w.name for w in self._workers if w.exit_code() is not None]
        terminate(self._workers, self._stop_timeout(timeout))
        for worker in self._workers:
            worker.close()
        self._read_final_counts(died)
        self._tidy_logs(died)

    def _stop_timeout(self, timeout: float | None) -> float:
        return self.config.stop_drain + STOP_MARGIN_S if timeout is None else timeout

    def _read_final_counts(self, died: list[str]) -> None:
        """Fill :attr:`final_counts`; warn of a worker killed before it wrote them (one
        that ended before the stop was reported as such already)."""
        for worker in self._workers:
            final = worker.final_counts()
            if final is not None:
                self.final_counts.append(final)
            elif worker.name not in died:
                self._failed = True
                log.warning(
                    "%s was killed before it wrote its final counts: frames it still held "
                    "are not counted; its log: %s",
                    worker.name,
                    worker.log_path,
                )

    def _tidy_logs(self, died: list[str]) -> None:
        """Remove the logs of a clean run; keep them, and say where, after a failure.

        A folder the user chose (``config.log_dir``) is always kept.
        """
        if not self._own_log_dir:
            return
        if died and not self._failed:
            log.warning(
                "%s ended before stop; worker logs kept in %s", ", ".join(died), self._log_dir
            )
        elif self._failed:
            log.info("worker logs kept in %s", self._log_dir)
        else:
            shutil.rmtree(self._log_dir, ignore_errors=True)

    def _worker(self, consumer_id: int, log_dir: Path) -> Worker:
        config = self.config
        command = consumer_command(
            consumer_id,
            config.channel_of(consumer_id),
            config.output_prefix,
            config.processor_args(consumer_id, os.getpid()),
            config.consumer_options(consumer_id),
        )
        log_path = log_dir / f"worker-{consumer_id}.log"
        channels = self._channels[self.consumer_ids.index(consumer_id)]
        return Worker(consumer_id, command, log_path, channels)

    def _alive(self, worker: Worker) -> bool:
        return worker.exit_code() is None

    def _check_starting(self, worker: Worker) -> None:
        code = worker.exit_code()
        if code is not None:
            raise PoolStartError(
                f"{worker.name} exited with status {code} while starting; its last "
                f"log lines ({worker.log_path}):\n{worker.log_tail()}"
            )

    def _updated_after(self, worker: Worker, moment: float) -> bool:
        return self._status(worker).published_at >= moment

    def _start_timed_out(self, worker: Worker, why: str, timeout: float) -> str:
        """Not hearing the input channel is the whole story (nobody serves it yet), so it
        is one line naming the log; anything else quotes the log, where the worker says
        more."""
        head = super()._start_timed_out(worker, why, timeout)
        if why.startswith("not connected to input channel"):
            return f"{head}; its log: {worker.log_path}"
        return f"{head}; its last log lines ({worker.log_path}):\n{worker.log_tail()}"


def _stop_unattended(workers: list[Worker], timeout: float, own_log_dir: Path | None) -> None:
    """What :meth:`ConsumerPool.stop` does when nobody called it (the pool collected, or
    the interpreter leaving with a warm pool): stop every worker, and remove the log
    folder made for them if each one wrote its final counts (a clean end)."""
    terminate(workers, timeout)
    if own_log_dir is None:
        return
    if all(worker.final_counts() is not None for worker in workers):
        shutil.rmtree(own_log_dir, ignore_errors=True)
    else:
        log.warning("worker logs kept in %s", own_log_dir)
