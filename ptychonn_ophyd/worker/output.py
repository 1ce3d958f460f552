"""Result NTNDArrays that keep the identity of the frame they came from."""

from __future__ import annotations

import numpy as np
import pvaccess as pva

from ptychonn_ophyd.wire import INPUT_TAGS, result_descriptor, time_stamp


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
