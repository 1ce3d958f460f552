"""What a worker publishes: each batch whole, and result NTNDArrays that keep the
identity of the frame they came from."""

from __future__ import annotations

from dataclasses import replace
from time import perf_counter

import numpy as np
import pvaccess as pva

from ptychonn_ophyd.settings import FrameOutputs
from ptychonn_ophyd.wire import (
    INPUT_TAGS,
    ResultBatch,
    new_batch_value,
    result_descriptor,
    time_stamp,
    write_result_batch,
)


class BatchRecord:
    """A worker's batch channel (:data:`~ptychonn_ophyd.wire.BATCH_TYPE`): one update
    per inferred batch, there from the worker's start.

    Parameters
    ----------
    server
        The worker's ``pva.PvaServer``.
    channel
        The record's name, ``<prefix>:<k>:batch``.
    """

    def __init__(self, server, channel: str) -> None:
        self.channel = channel
        self.batches = 0
        self.frames = 0
        self._server = server
        self._value = new_batch_value()
        server.addRecord(channel, new_batch_value(), None)

    def publish(self, batch: ResultBatch) -> None:
        """Post ``batch``, numbered by this record: its ``batch`` counter and
        ``frames_before`` are the record's counts, whatever ``batch`` says."""
        numbered = replace(batch, batch=self.batches + 1, frames_before=self.frames)
        write_result_batch(self._value, numbered)
        self._server.updateUnchecked(self.channel, self._value)
        self.batches += 1
        self.frames += len(batch)


class FrameOutputGate:
    """Which frames also get a result NTNDArray of their own (``frame_outputs``).

    ``"every"`` frame, ``"none"``, or a ``"preview"``: the first frame after each
    ``period`` seconds, so viewers see the latest result at a few Hz.
    """

    def __init__(self, mode: FrameOutputs, period: float) -> None:
        self.mode = mode
        self._period = period
        self._due = 0.0

    def wants(self, now: float | None = None) -> bool:
        """Whether the frame received at ``now`` (``perf_counter()``) gets its own result."""
        if self.mode != "preview":
            return self.mode == "every"
        now = perf_counter() if now is None else now
        if now < self._due:
            return False
        self._due = now + self._period
        return True


class ResultBuilder:
    """Turns a received NTNDArray into the NTNDArray of its result.

    The result is the received PV itself (a copy taken at receipt) with the image
    replaced by a float32 prediction, so its ``uniqueId``, ``dataTimeStamp`` and
    attributes (scan positions among them) are those of the frame; its ``descriptor``
    names the worker and the model (:func:`~ptychonn_ophyd.wire.result_descriptor`,
    formatted once per model) and the model input's moments
    (:data:`~ptychonn_ophyd.wire.INPUT_TAGS`, per frame); its ``timeStamp`` is the
    publish time.  The attribute list is left as it came: pvapy can only rewrite it by
    converting every attribute to Python and back (about 70 µs a frame).

    Parameters
    ----------
    consumer_id
        Named in every result's descriptor.
    shape
        ``(H, W)`` of the predictions.
    resized
        Whether preprocessing changes the frame size, so each result needs new dimensions.
    """

    def __init__(self, consumer_id: int, shape: tuple[int, int], resized: bool) -> None:
        h, w = shape
        self._consumer_id = consumer_id
        self._fields: dict[str, object] = {
            "compressedSize": h * w * 4,
            "uncompressedSize": h * w * 4,
        }
        self._dimensions = (
            [pva.PvDimension(w, 0, w, 1, False), pva.PvDimension(h, 0, h, 1, False)]
            if resized
            else None
        )
        self.set_model_hash("")

    def set_model_hash(self, model_hash: str) -> None:
        """Tag the results built from now on with ``model_hash``."""
        self._descriptor = result_descriptor(self._consumer_id, model_hash)
        self.model_hash = model_hash

    def result(
        self,
        frame,
        image: np.ndarray,
        published: float,
        total: float = float("nan"),
        centroid: tuple[float, float] = (float("nan"), float("nan")),
    ):
        """Turn ``frame`` (a received NTNDArray, changed in place) into the result ``image``,
        published at ``published`` (seconds since the epoch), of a model input of
        ``total`` counts centred at ``centroid`` ``(x, y)`` (Python floats format fastest)."""
        frame["value"] = {"floatValue": image.ravel()}
        descriptor = self._descriptor + INPUT_TAGS.format(total, *centroid)
        frame.set({**self._fields, "descriptor": descriptor, "timeStamp": time_stamp(published)})
        if self._dimensions:
            frame.setStructureArray("dimension", self._dimensions)
        return frame

    @staticmethod
    def sibling(result, image: np.ndarray):
        """A copy of ``result`` holding ``image`` instead (the amplitude beside the phase)."""
        other = result.copy()
        other["value"] = {"floatValue": image.ravel()}
        return other

    @staticmethod
    def clear_codec(frame) -> None:
        """Mark a received frame that came compressed as uncompressed, like its result."""
        frame["codec.name"] = ""


class OutputRecord:
    """A result channel on the worker's PVA server, there from the worker's start.

    pvapy creates a processor's output record only when the first input arrives, from
    that input.  A downstream consumer (the seed's TIFF stage) started before then
    searches for a channel that does not exist yet, and PV Access's search backs off:
    it may find the record only after the whole stream was published, receive the
    record's last value as its initial update, skip it (``--skip-initial-updates 1``)
    and save nothing.  This record is created when the worker starts, with the type of
    every result (the standard NTNDArray), so downstream consumers connect before any
    frame is sent, to the type they will keep receiving.

    Parameters
    ----------
    server
        The worker's ``pva.PvaServer``.
    channel
        The record's name.
    """

    def __init__(self, server, channel: str, logger=None) -> None:
        self.channel = channel
        self.published = 0
        self._server = server
        self._logger = logger
        template = pva.NtNdArray()
        self._structure = template.getStructureDict()
        self._checked = False
        server.addRecord(channel, template, None)

    def publish(self, result) -> None:
        """Post ``result``; the first one's type is checked against the record's."""
        if not self._checked:
            self._checked = True
            if result.getStructureDict() != self._structure:
                self._retype(result)
                return
        self._server.updateUnchecked(self.channel, result)
        self.published += 1

    def _retype(self, result) -> None:
        # Input frames of another NTNDArray layout: the record takes their type, and its
        # monitors reconnect to it (each skips the value it reconnects to: this one).
        if self._logger is not None:
            self._logger.warning(
                "results on %s are not standard NTNDArrays: the record is recreated with "
                "their type; connected monitors reconnect and may miss the first result",
                self.channel,
            )
        self._server.removeRecord(self.channel)
        self._server.addRecord(self.channel, result.copy(), None)
        self.published += 1
