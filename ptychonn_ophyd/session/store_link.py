"""The results store in a process of its own, seen from the session.

:class:`StoreLink` starts :func:`ptychonn_ophyd.store.relay.serve` at staging in place of
the session's own batch monitor.  The session then takes every batch without its images
(about a hundred bytes a frame instead of 64 KB), and its runs answer which rows they keep:
the images are received, held and written on the store process's GIL, not the session's.
:class:`LinkedRows` is one run's file in that process, behind the same surface as the
session's own :class:`~ptychonn_ophyd.store.file.RowWriter`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from ptychonn_ophyd.errors import ResultStoreError
from ptychonn_ophyd.run_schema import Rows
from ptychonn_ophyd.store.file import RESERVE_BYTES, RowLayout
from ptychonn_ophyd.store.relay import (
    ErrorText,
    Packed,
    each,
    error_from,
    joined,
    key_of,
    serve,
    unpack,
)
from ptychonn_ophyd.wire import ResultBatch

log = logging.getLogger(__name__)

START_TIMEOUT = 60.0
"""Seconds the store process may take to import and connect its monitors."""
REPLY_TIMEOUT = 30.0
"""Seconds a run's file may take to be created in the store process."""
CLOSE_REPORT = 10.0
"""Seconds between two lines saying that closing a run still waits for its rows."""


class StoreLink:
    """The store process: it monitors ``batch_channels`` and relays every batch to
    ``on_batch`` (in this link's reading thread), without its images unless ``images``.

    It has the surface of :class:`~ptychonn_ophyd.store.monitor.ResultMonitor`
    (``batch_channels``, ``overruns``, ``start``, ``stop``), and opens runs' files
    (:meth:`open_rows`).
    """

    def __init__(
        self,
        batch_channels: Iterable[str],
        on_batch: Callable[[ResultBatch], None],
        images: bool = False,
    ) -> None:
        self.batch_channels = list(batch_channels)
        self._on_batch = on_batch
        self.images = images
        """Whether the batches come with their images."""
        self._conn: Connection | None = None
        self._process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._sending = threading.Lock()
        self._answers: list[tuple] = []
        self._overruns = 0
        self._answered: str | None = None
        self._runs: dict[str, LinkedRows] = {}
        self.failure: str | None = None
        """Why the store process ended while it should run (``None`` while it runs)."""

    @property
    def pid(self) -> int | None:
        """The store process's pid (``None`` before it starts and after it stops)."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """Whether the store process runs (started, not stopped, not dead)."""
        return self._process is not None and self.failure is None

    @property
    def overruns(self) -> int:
        """Results the store's monitors lost so far, over all channels."""
        return self._overruns

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the store process and wait until its monitors are connected.

        It runs as ``python -m ptychonn_ophyd.store.relay`` in a session of its own, as
        the workers do: Ctrl-C at the prompt does not reach it, and multiprocessing's
        ``spawn`` (which would import the user's script again in the child) is not used.
        Its pipe is a socket pair; when this process dies, the store sees the pipe close
        and ends.
        """
        ours, theirs = socket.socketpair()
        command = [sys.executable, "-m", serve.__module__, str(theirs.fileno())]
        command += [json.dumps(self.batch_channels), json.dumps(self.images)]
        with theirs:
            self._process = subprocess.Popen(
                command,
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._conn = Connection(ours.detach())
        if not self._conn.poll(timeout):
            self.stop()
            raise ResultStoreError(
                f"the results store process did not connect to {self.batch_channels} in "
                f"{timeout:.0f} s"
            )
        try:
            reply = self._conn.recv()
        except EOFError:  # it ended before it could say why (its stderr is the session's)
            reply = ("failed", f"it ended (exit code {self._process.wait(REPLY_TIMEOUT)})")
        if reply[0] != "ready":
            self.stop()
            raise ResultStoreError(f"the results store process did not start: {reply[1]}")
        self._reader = threading.Thread(target=self._read, name="store-link", daemon=True)
        self._reader.start()

    def stop(self) -> None:
        """Stop the store process (it closes any run still open) and wait for it."""
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(OSError):  # it has ended already
            self.send("stop")
        try:
            process.wait(REPLY_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.warning("the results store process did not stop in %.0f s: killed", REPLY_TIMEOUT)
            process.kill()
            process.wait()
        if self._reader is not None:
            self._reader.join(REPLY_TIMEOUT)
        self._conn.close()

    def check_health(self) -> None:
        """Raise :class:`ResultStoreError` if the store process ended while it should run."""
        if self.failure is not None:
            raise ResultStoreError(self.failure)

    def open_rows(
        self, uid: str, path: Path, layout: RowLayout, reserve_bytes: int = RESERVE_BYTES
    ) -> LinkedRows:
        """Create run ``uid``'s file at ``path`` in the store process."""
        self.check_health()
        rows = LinkedRows(self, uid, path)
        self._runs[uid] = rows
        self.send("open", uid, path, layout, reserve_bytes)
        if not rows.opened.wait(REPLY_TIMEOUT):
            raise ResultStoreError(
                f"the results store process did not create {path} in {REPLY_TIMEOUT:.0f} s"
            )
        if rows.error is not None:
            del self._runs[uid]
            raise rows.error
        return rows

    def keep(self, uid: str, batch: ResultBatch, mask: np.ndarray) -> None:
        """Run ``uid`` stores ``batch``'s rows that ``mask`` marks (called while this link
        hands ``batch`` on).  The answer goes with the others to the batches of the same
        pipe message, or before any message another thread sends: so it reaches the store
        process before the run's ``close``, as a run takes rows under its lock, and seals
        under it."""
        key = key_of(batch)
        if self._answered is not None:
            raise ResultStoreError(f"batch {key} kept twice (runs {self._answered} and {uid})")
        self._answered = uid
        self._answer("keep", uid, key, mask)

    def send(self, *message: Any) -> None:
        """Send ``message`` to the store process (from any thread), after the answers
        not yet sent."""
        with self._sending:
            self._send_answers()
            self._conn.send(message)

    def _answer(self, *message: Any) -> None:
        with self._sending:
            self._answers.append(message)

    def _flush(self) -> None:
        with self._sending:
            self._send_answers()

    def _send_answers(self) -> None:
        if self._answers:
            answers, self._answers = self._answers, []
            self._conn.send(joined(answers))

    # -- the reading thread --------------------------------------------------------

    def _read(self) -> None:
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                break
            for kind, *args in each(message):
                try:
                    getattr(self, f"_{kind}")(*args)
                except Exception:  # one message gone wrong; the next is read all the same
                    log.exception("the results store's %r message failed", kind)
            with contextlib.suppress(OSError):  # the store ended: seen at the next recv
                self._flush()
        process = self._process
        if process is not None:  # not stopped: it died
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(REPLY_TIMEOUT)
            code = process.returncode
            self.failure = f"the results store process ended (exit code {code}) during the scan"
            log.error(self.failure)
            for rows in self._runs.values():
                rows.ended(ResultStoreError(self.failure))

    def _batch(self, packed: Packed, overruns: int) -> None:
        """Hand the batch on; if no run kept rows of it, tell the store to drop it."""
        batch = unpack(packed)
        self._overruns = overruns
        self._answered = None
        try:
            self._on_batch(batch)
        finally:
            if self._answered is None:
                self._answer("drop", key_of(batch))

    def _opened(self, uid: str, error: ErrorText) -> None:
        rows = self._runs[uid]
        rows.error = error_from(error)
        rows.opened.set()

    def _written(self, uid: str, count: int, error: ErrorText) -> None:
        rows = self._runs.get(uid)
        if rows is not None:
            rows.rows, rows.error = count, rows.error or error_from(error)

    def _closed(self, uid: str, count: int, error: ErrorText) -> None:
        rows = self._runs.get(uid)
        if rows is not None:
            rows.rows, rows.error = count, rows.error or error_from(error)
            rows.closed.set()

    def forget(self, uid: str) -> None:
        self._runs.pop(uid, None)


class LinkedRows:
    """One run's file in the store process: its rows as last reported, what stopped its
    writing, and the run's answers (``take``) sent through the link."""

    def __init__(self, link: StoreLink, uid: str, path: Path) -> None:
        self.uid = uid
        self.path = path
        self.rows = 0
        """Rows in the file, as the store process last reported."""
        self.error: BaseException | None = None
        self.opened = threading.Event()
        self.closed = threading.Event()
        self._link = link

    def take(self, batch: ResultBatch, keep: np.ndarray, rows: Rows | None = None) -> None:
        """The run stores ``batch``'s rows that ``keep`` marks (the store process makes
        them: ``rows`` is not needed)."""
        self._link.keep(self.uid, batch, keep)

    def close(self) -> None:
        """Wait until the store process has written every row kept and closed the file
        (saying every :data:`CLOSE_REPORT` s what it waits for)."""
        if self.closed.is_set() or not self._link.running:
            return  # a store process that stopped closed its runs' files first
        self._link.send("close", self.uid)
        began = time.monotonic()
        while not self.closed.wait(CLOSE_REPORT):
            log.warning(
                "run %s: waiting %.0f s for the results store to write its rows (%d so far)",
                self.uid,
                time.monotonic() - began,
                self.rows,
            )

    def release(self) -> None:
        """Give up the file's ``flock`` once the run's stop document is out."""
        if self._link.running:
            self._link.send("release", self.uid)
        self._link.forget(self.uid)

    def ended(self, error: ResultStoreError) -> None:
        """The store process ended: nothing more will be written."""
        self.error = self.error or error
        self.opened.set()
        self.closed.set()
