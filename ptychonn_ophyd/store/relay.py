"""The store process: it monitors the workers' batch channels, relays every batch to the
session without its images, and writes the rows the session's runs keep.

Over one pipe, in order.  To the session: ``("ready",)`` or ``("failed", text)`` once;
then ``("batch", packed, overruns)`` for every batch received (:func:`pack`);
``("opened", uid, error)``, ``("written", uid, rows, error)`` and ``("closed", uid,
rows, error)`` for the runs (an error is ``(storage_full, text)`` or ``None``).  From
the session: for every batch relayed, in the same order, exactly one ``("keep", uid,
key, mask)`` (the run ``uid`` stores the rows ``mask`` marks) or ``("drop", key)``; and
``("open", uid, path, layout, reserve_bytes)``, ``("close", uid)``, ``("release",
uid)``, ``("stop",)``.  Either side may send several messages as one, ``("many",
[message, ...])`` (:func:`each`): the store gathers what it has to send for
:data:`GATHER_S`, and the session answers all the batches of one pipe message at once,
so at high rates a system call and a wake-up carry several batches.  A closed pipe (the
session gone) ends the process too: nothing is left running.
"""

from __future__ import annotations

import json
import logging
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from ptychonn_ophyd.errors import ResultStoreError, StorageFullError
from ptychonn_ophyd.store.file import RowLayout, RowWriter
from ptychonn_ophyd.store.monitor import ResultMonitor
from ptychonn_ophyd.wire import ResultBatch

log = logging.getLogger(__name__)

RELAYED_LIMIT = 1024
"""Most batches held for the session's answer (at most 2 GB of 128 x 128 float32 images
in batches of 32; a session that keeps up holds a few)."""
GATHER_S = 0.005
"""Seconds the store's sender gathers messages into one pipe message after the first:
5 ms more latency for the session, against a system call and a wake-up on each side for
every batch (most of the session's CPU a batch: BENCHMARKS.md)."""
SENDER_TIMEOUT = 10.0
"""Seconds the ending process gives its sender to pass on the last messages."""

BatchKey = tuple[int, int]
"""A batch's ``(consumer id, batch number)``: unique while the pool runs."""
ErrorText = tuple[bool, str] | None
"""An error as the pipe carries it: whether the disk is full, and its one line."""
Packed = tuple[int, str, int, int, float, np.ndarray, np.ndarray | None, np.ndarray | None]
"""A batch as the pipe carries it: its scalars, the per-frame arrays as one structured
array (one pickled object instead of nine: half the session's cost to read it), and
the images or ``None``."""


def each(message: tuple) -> list[tuple]:
    """The messages one pipe message carries: itself, or those of ``("many", [...])``."""
    return message[1] if message[0] == "many" else [message]


def joined(messages: list[tuple]) -> tuple:
    """``messages`` as one pipe message (:func:`each` takes them apart)."""
    return messages[0] if len(messages) == 1 else ("many", messages)


def key_of(batch: ResultBatch) -> BatchKey:
    """Which batch ``batch`` is, as the session's answers name it."""
    return batch.consumer_id, batch.batch


def pack(batch: ResultBatch, images: bool) -> Packed:
    """``batch`` for the pipe (its images only if ``images``)."""
    frames = np.empty(len(batch), [(name, values.dtype) for name, values in batch.frames.items()])
    for name, values in batch.frames.items():
        frames[name] = values
    pictures = (batch.phase, batch.amplitude) if images else (None, None)
    head = batch.consumer_id, batch.model_hash, batch.batch, batch.frames_before, batch.published
    return (*head, frames, *pictures)


def unpack(packed: Packed) -> ResultBatch:
    """The :class:`ResultBatch` :func:`pack` made (the per-frame arrays are views)."""
    *head, frames, phase, amplitude = packed
    columns = {name: frames[name] for name in frames.dtype.names}
    return ResultBatch(*head, columns, phase, amplitude)


def error_text(error: BaseException | None) -> ErrorText:
    """``error`` as the pipe carries it (exceptions of h5py need not pickle)."""
    if error is None:
        return None
    if isinstance(error, StorageFullError):
        return True, str(error)
    return False, f"{type(error).__name__}: {error}"


def error_from(text: ErrorText) -> BaseException | None:
    """The error :func:`error_text` carried: a full disk is a :class:`StorageFullError`
    again, anything else a :class:`ResultStoreError` naming it."""
    if text is None:
        return None
    full, line = text
    return StorageFullError(line) if full else ResultStoreError(line)


def serve(conn: Connection, batch_channels: Iterable[str], images: bool) -> None:
    """The store process's main: relay and write until told to stop or the pipe closes.

    ``images``: relay the batches with their images (a live view in the session
    stitches them).
    """
    relay = Relay(conn, images, lambda: monitor.overruns)
    monitor = ResultMonitor(batch_channels, relay.relay)
    try:
        monitor.start()
    except Exception as error:
        conn.send(("failed", f"{type(error).__name__}: {error}"))
        return
    conn.send(("ready",))
    try:
        relay.serve()
    finally:
        monitor.stop()
        relay.close_all()


class Relay:
    """The store process's state: the batches relayed and not yet answered, the runs'
    writers, and the messages to the session.

    No thread of it waits on the pipe but its sender's: pvapy's threads, the writers'
    and the main thread put their messages in an outbox.  (Were the writers to send
    themselves, a session busy sending answers to a main thread that waits for a writer
    to finish would wait on it for good.)  At most :data:`RELAYED_LIMIT` batches are
    held for an answer; beyond that pvapy's thread waits, the monitors' server-side
    queues fill, and what they lose is counted (``overruns``, which says how many
    results the monitors have lost so far).
    """

    def __init__(self, conn: Connection, images: bool, overruns: Callable[[], int]) -> None:
        self._conn = conn
        self._images = images
        self._overruns = overruns
        self._outbox: queue.SimpleQueue[tuple | None] = queue.SimpleQueue()
        self._order = threading.Lock()
        self._room = threading.Semaphore(RELAYED_LIMIT)
        self._relayed: deque[ResultBatch] = deque()
        self._runs: dict[str, RowWriter] = {}
        self._sender = threading.Thread(target=self._send_all, name="store-sender", daemon=True)
        self._sender.start()

    def relay(self, batch: ResultBatch) -> None:
        """Keep ``batch`` until the session answers, and send it on (a pvapy thread)."""
        self._room.acquire()
        packed = pack(batch, self._images)
        with self._order:  # the session answers in the order it was sent
            self._relayed.append(batch)
            self._outbox.put(("batch", packed, self._overruns()))

    def serve(self) -> None:
        """Carry out the session's messages until ``stop`` or the pipe closes."""
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                return  # the session is gone
            for kind, *args in each(message):
                if kind == "stop":
                    return
                getattr(self, f"_{kind}")(*args)

    def close_all(self) -> None:
        """Write and close every run still open, and send what is in the outbox (the
        process is ending)."""
        for writer in self._runs.values():
            writer.close()
        self._runs.clear()
        self._outbox.put(None)
        self._sender.join(SENDER_TIMEOUT)

    def _send(self, *message: Any) -> None:
        self._outbox.put(message)

    def _send_all(self) -> None:
        """Send the outbox's messages, those of :data:`GATHER_S` after the first as one,
        until the ``None`` that ends it."""
        while (first := self._outbox.get()) is not None:
            messages = self._gather(first)
            ending = messages[-1] is None
            try:
                self._conn.send(joined(messages[:-1] if ending else messages))
            except OSError:
                return  # the session is gone
            if ending:
                return

    def _gather(self, first: tuple) -> list[tuple | None]:
        """``first`` and what the outbox takes in the next :data:`GATHER_S`, up to and
        including a ``None``."""
        messages = [first]
        deadline = time.monotonic() + GATHER_S
        while messages[-1] is not None and (left := deadline - time.monotonic()) > 0:
            try:
                messages.append(self._outbox.get(timeout=left))
            except queue.Empty:
                break
        return messages

    def _answered(self, key: BatchKey) -> ResultBatch:
        batch = self._relayed.popleft()
        self._room.release()
        if key_of(batch) != key:
            raise RuntimeError(f"the session answered batch {key} for batch {key_of(batch)}")
        return batch

    def _keep(self, uid: str, key: BatchKey, mask: np.ndarray) -> None:
        batch = self._answered(key)
        writer = self._runs.get(uid)
        if writer is None:
            log.error("rows kept for run %s, which is not open here", uid)
            return
        writer.take(batch, mask)

    def _drop(self, key: BatchKey) -> None:
        self._answered(key)

    def _open(self, uid: str, path: Path, layout: RowLayout, reserve_bytes: int) -> None:
        try:
            self._runs[uid] = RowWriter(
                uid,
                path,
                layout,
                reserve_bytes,
                reports=lambda rows, error: self._send("written", uid, rows, error_text(error)),
            )
        except Exception as error:
            self._send("opened", uid, error_text(error))
            return
        self._send("opened", uid, None)

    def _close(self, uid: str) -> None:
        writer = self._runs[uid]
        writer.close()
        self._send("closed", uid, writer.rows, error_text(writer.error))

    def _release(self, uid: str) -> None:
        self._runs.pop(uid).release()


def main(argv: list[str]) -> None:
    """``python -m ptychonn_ophyd.store.relay FD CHANNELS_JSON IMAGES_JSON``: serve on
    the socket ``FD`` that the session passed (its ``session.store_link.StoreLink``)."""
    logging.basicConfig(format="ptychonn store: %(levelname)s %(message)s")
    fd, channels, images = argv
    serve(Connection(int(fd)), json.loads(channels), json.loads(images))


if __name__ == "__main__":
    main(sys.argv[1:])
