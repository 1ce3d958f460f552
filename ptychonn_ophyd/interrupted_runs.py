"""Runs a session left open when it died, closed the next time the catalog is opened.

A Bluesky session killed mid-scan (SIGKILL, a crash, a machine that stopped) writes no
stop document, and the rows its writer put into the run's HDF5 file since the last
collect are in no ``stream_datum``.  The file tells what happened: no process holds it
open as its writer any more (:func:`writer_alive`), and it holds every row written up to
the writing thread's last append (a twentieth of a second before the death, not a
collect period).  :func:`close_interrupted_runs` gives each such run every row of its
file and a stop document that says the run failed and why.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import h5py
from tiled.client.container import Container

from ptychonn_ophyd.run_schema import STREAM, stream_file_name

log = logging.getLogger(__name__)

RECENT_RUNS = 20
"""How many of the newest runs :func:`close_interrupted_runs` looks at."""

INTERRUPTED = (
    "the session writing this run ended without closing it (killed, or its machine "
    "stopped); closed when its catalog was next opened, with the {kept} row(s) of its "
    "inference file ({rows} in the file, {announced} announced before the end); its "
    "frame accounting was never made"
)
"""The stop document's ``reason`` of a run closed by :func:`close_interrupted_runs`."""


def close_interrupted_runs(client: Container, assets: Path, recent: int = RECENT_RUNS) -> list[str]:
    """Close the newest runs whose writing session died; their uids.

    A run is closed when it has no stop document, its inference file is in ``assets``
    and no process holds that file open as its writer.  Its inference columns are given
    every row the file holds, and it gets a stop document with ``exit_status`` ``fail``
    and the reason :data:`INTERRUPTED`.  A run without an inference file is left as it
    is: nothing tells whether its session is alive.
    """
    closed = []
    for run in client.values()[-1 : -recent - 1 : -1]:
        if "stop" in run.metadata:
            continue
        uid = run.metadata["start"]["uid"]
        path = assets / stream_file_name(uid)
        if not path.is_file() or writer_alive(path):
            continue
        rows = file_rows(path)
        announced, kept = _give_rows(run, rows)
        reason = INTERRUPTED.format(kept=kept, rows=rows, announced=announced)
        stop = {
            "run_start": uid,
            "time": time.time(),
            "uid": str(uuid.uuid4()),
            "exit_status": "fail",
            "reason": reason,
        }
        run.update_metadata(metadata={"stop": stop}, drop_revision=True)
        log.warning("run %s closed as failed: %s", uid, reason)
        closed.append(uid)
    return closed


def writer_alive(path: Path) -> bool:
    """Whether a process still holds the HDF5 file at ``path`` open as its writer (it
    holds a shared ``flock`` on it: :class:`~ptychonn_ophyd.store.file.InferenceFile`)."""
    try:
        with open(path, "rb") as probe:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # gone or unreadable: nobody writes it
        return False
    return False


def file_rows(path: Path) -> int:
    """Rows every column of the inference file at ``path`` holds."""
    with h5py.File(path, "r", swmr=True, libver="latest") as file:
        lengths = [len(d) for d in file.values() if isinstance(d, h5py.Dataset)]
    return min(lengths, default=0)


def _give_rows(run: Any, rows: int) -> tuple[int, int]:
    """Make every inference column of ``run`` hold ``rows`` rows; the rows all columns
    had announced, and the rows the stream now holds (0 when no column was announced:
    the catalog then has no node to give the rows to)."""
    if STREAM not in run:
        return 0, 0
    stream = run[STREAM]
    columns = {key: stream[key] for key in stream}
    lengths = {key: _rows_of(node) for key, node in columns.items()}
    lengths = {key: n for key, n in lengths.items() if n is not None}
    if not lengths:
        return 0, 0
    for key, length in lengths.items():
        if length != rows:
            _set_rows(columns[key], rows)
    return min(lengths.values()), rows


def _rows_of(node: Any) -> int | None:
    """The leading length of an array node; ``None`` for anything else."""
    from tiled.structures.array import ArrayStructure

    structure = node.structure()
    if isinstance(structure, ArrayStructure) and structure.shape:
        return structure.shape[0]
    return None


def _set_rows(node: Any, rows: int) -> None:
    """Make the catalog say array ``node`` has ``rows`` rows of its file."""
    from tiled.client.utils import handle_error
    from tiled.utils import safe_json_dump

    source = node.data_sources()[0]
    structure = dict(source.structure)  # the client gives it as a dict
    structure["shape"] = [rows, *structure["shape"][1:]]
    chunks = structure["chunks"]
    structure["chunks"] = [list(_leading_chunks(chunks[0], rows)), *chunks[1:]]
    source = dataclasses.replace(source, structure=structure)
    handle_error(
        node.context.http_client.put(
            node.uri.replace("/metadata/", "/data_source/", 1),
            content=safe_json_dump({"data_source": source}),
        )
    )


def _leading_chunks(chunks: list[int], rows: int) -> tuple[int, ...]:
    """Chunks along the leading axis for ``rows`` rows: ``chunks`` cut at ``rows``, or
    grown by one chunk of the rows past them."""
    kept, total = [], 0
    for size in chunks:
        if total >= rows:
            break
        kept.append(min(size, rows - total))
        total += kept[-1]
    if total < rows:
        kept.append(rows - total)
    return tuple(kept) or (0,)
