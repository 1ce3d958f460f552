"""The writer of a run's inference stream: the documents that announce its rows.

Like an ophyd-async detector's writer, :class:`StreamWriter` knows nothing of the device:
it is given what its descriptor says (:class:`StreamSpec`) and where the rows go (a
:class:`RowSink`: the session's own :class:`~ptychonn_ophyd.store.file.RowWriter`, or a
run's file in the store process).  The rows are written into an HDF5 file under the
catalog's readable storage as they come, off the RunEngine's thread, which only
announces them: ``collect_asset_docs`` yields ``stream_resource`` once and then a
``stream_datum`` per column for the rows written since the last collect.  Every
subscriber of the RunEngine (a ``TiledWriter`` first of all) sees the inference stream
with the run.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from bluesky.protocols import Hints
from event_model import ComposeStreamResource

from ptychonn_ophyd.errors import StorageFullError
from ptychonn_ophyd.run_schema import COLUMNS, IMAGES, NOT_PLOTTED, Rows
from ptychonn_ophyd.store.file import RowLayout
from ptychonn_ophyd.wire import ResultBatch

IMAGE_CHUNK = 256
"""Rows per Tiled chunk of an image column."""
SCALAR_CHUNK = 65536
"""Rows per Tiled chunk of a scalar column."""


@dataclass(frozen=True)
class StreamSpec:
    """What the inference stream's descriptor says: explicit values, read at the run's start.

    ``name`` is the device's, whose ``configuration`` (``read_configuration()``) and
    ``configuration_keys`` (``describe_configuration()``) the descriptor carries;
    ``source`` names where the rows came from (``PVA:<output prefix>``).
    """

    name: str
    source: str
    image_shape: tuple[int, int]
    amplitude: bool
    configuration: Mapping[str, Any]
    configuration_keys: Mapping[str, Any]

    @property
    def images(self) -> tuple[str, ...]:
        return self.layout.images

    @property
    def columns(self) -> list[str]:
        """The stream's columns, images first."""
        return [*self.images, *COLUMNS]

    def data_keys(self) -> dict[str, dict[str, Any]]:
        """Event-model data keys of the columns, each marked external (``STREAM:``)."""
        keys = {
            key: {
                "source": self.source,
                "dtype": "array",
                "dtype_numpy": "<f4",
                "shape": list(self.image_shape),
                "units": IMAGES[key],
                "external": "STREAM:",
            }
            for key in self.images
        }
        for key, column in COLUMNS.items():
            keys[key] = {
                "source": self.source,
                "dtype": column.dtype,
                "dtype_numpy": column.dtype_numpy,
                "shape": [],
                "units": column.units,
                "external": "STREAM:",
            }
        return keys

    def chunk_shape(self, key: str) -> list[int]:
        """Rows per Tiled chunk of column ``key`` (with the image axes for images)."""
        return [IMAGE_CHUNK, *self.image_shape] if key in self.images else [SCALAR_CHUNK]

    @property
    def layout(self) -> RowLayout:
        """What a row of the stream's file holds."""
        return RowLayout(tuple(self.image_shape), self.amplitude)


class RowSink(Protocol):
    """Where a run's rows are written: its file, the rows in it, what stopped the writing."""

    path: Path

    @property
    def rows(self) -> int:
        """Rows in the file so far (written and flushed)."""

    @property
    def error(self) -> BaseException | None:
        """What stopped the writing (later rows are only counted), or ``None``."""

    def take(self, batch: ResultBatch, keep: np.ndarray, rows: Rows | None = None) -> None:
        """Write the rows of ``batch`` that ``keep`` marks, after those taken before
        (``rows``: those rows, when the caller has made them already)."""

    def close(self) -> None:
        """Write every row taken, then close the file."""

    def release(self) -> None:
        """Give up the file's ``flock`` once the run's stop document is out."""


class StreamWriter:
    """The writer of one run's inference stream (``Collectable``, ``WritesStreamAssets``).

    Parameters
    ----------
    uid
        The run's uid.
    spec
        What the descriptor says.
    rows
        Where the rows are written.  A full disk that stops its writing fails the run
        at the next collect, with :class:`~ptychonn_ophyd.errors.StorageFullError`, so
        the catalog can still store the accounting and the stop document.
    """

    hints: Hints = NOT_PLOTTED
    """Nothing for BestEffortCallback to plot (:data:`.run_schema.NOT_PLOTTED`)."""

    def __init__(self, uid: str, spec: StreamSpec, rows: RowSink) -> None:
        self.uid = uid
        self.spec = spec
        self.name = spec.name
        self.parent = None
        self.sink = rows
        self._reported = False
        self._announced = 0
        self._datum: dict[str, Any] = {}

    @property
    def path(self) -> Path:
        """The run's HDF5 file."""
        return self.sink.path

    @property
    def rows(self) -> int:
        """Rows in the file so far."""
        return self.sink.rows

    @property
    def error(self) -> BaseException | None:
        """What stopped the writing, or ``None``."""
        return self.sink.error

    def take(self, batch: ResultBatch, keep: np.ndarray, rows: Rows | None = None) -> None:
        """Store the rows of ``batch`` that ``keep`` marks (from any thread, in order;
        ``rows``: those rows, when the caller has made them already)."""
        self.sink.take(batch, keep, rows)

    def close(self) -> None:
        """Write every row taken, then close the file."""
        self.sink.close()

    def release(self) -> None:
        """Give up the file's ``flock`` once the run's stop document is out."""
        self.sink.release()

    # -- the Collectable -------------------------------------------------------------

    def read_configuration(self) -> dict[str, Any]:
        return dict(self.spec.configuration)

    def describe_configuration(self) -> dict[str, Any]:
        return dict(self.spec.configuration_keys)

    def describe_collect(self) -> dict[str, dict[str, Any]]:
        """The data keys of the stream, every one external (``STREAM:``)."""
        return self.spec.data_keys()

    def get_index(self) -> int:
        """Rows written so far."""
        return self.sink.rows

    def collect_asset_docs(self, index: int | None = None) -> Iterator[tuple[str, dict]]:
        """Yield the resources (first time) and the datums of the rows written since.

        It never raises: the RunEngine lists these documents before emitting any, so an
        error raised here would lose the announcement of rows already in the file.
        :meth:`take_failure` says afterwards whether the disk filled.
        """
        if not self._datum:
            yield from self._resources()
        stop = self.sink.rows
        if stop > self._announced:
            for compose in self._datum.values():
                yield "stream_datum", compose(indices={"start": self._announced, "stop": stop})
            self._announced = stop

    def take_failure(self) -> StorageFullError | None:
        """The :class:`StorageFullError` that stopped the writing, once (then ``None``):
        the run fails there, after its rows stored so far are announced."""
        if isinstance(self.error, StorageFullError) and not self._reported:
            self._reported = True
            return self.error
        return None

    def _resources(self) -> Iterator[tuple[str, dict]]:
        compose = ComposeStreamResource()
        for key in self.spec.columns:
            bundle = compose(
                mimetype="application/x-hdf5",
                uri=self.path.resolve().as_uri(),
                data_key=key,
                parameters={
                    "dataset": f"/{key}",
                    "swmr": True,
                    "chunk_shape": self.spec.chunk_shape(key),
                },
            )
            self._datum[key] = bundle.compose_stream_datum
            yield "stream_resource", bundle.stream_resource_doc
