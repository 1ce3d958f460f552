"""A detector stand-in for the streaming tests: a PVA server publishing NTNDArray frames."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

import numpy as np
import pvaccess as pva
from pvapy.utility.adImageUtility import AdImageUtility


def ntnda(
    frame: np.ndarray, unique_id: int, attributes: Mapping[str, float | int] | None = None
) -> pva.NtNdArray:
    """An areaDetector-style NTNDArray of a 2-D ``frame`` with ``ColorMode`` and ``attributes``.

    Floats become float64 attributes and ints int32 ones, as the simulated detector's
    ``x``, ``y`` (µm) and ``point``.
    """
    array = AdImageUtility.generateNtNdArray2D(unique_id, frame)
    extra = [
        pva.NtAttribute(name, pva.PvInt(value) if isinstance(value, int) else pva.PvDouble(value))
        for name, value in (attributes or {}).items()
    ]
    array["attribute"] = [pva.NtAttribute("ColorMode", pva.PvInt(0)), *extra]
    return array


def empty_frame(unique_id: int) -> pva.NtNdArray:
    """An NTNDArray with no data at all."""
    array = pva.NtNdArray()
    array["uniqueId"] = unique_id
    return array


def boolean_frame(unique_id: int, shape: tuple[int, int] = (128, 128)) -> pva.NtNdArray:
    """An NTNDArray of booleans, a type no model takes."""
    array = ntnda(np.zeros(shape, np.int16), unique_id)
    array["value"] = {"booleanValue": [True] * (shape[0] * shape[1])}
    return array


def unknown_codec_frame(unique_id: int, shape: tuple[int, int] = (128, 128)) -> pva.NtNdArray:
    """An NTNDArray whose data claims a compression nobody can decode."""
    array = ntnda(np.zeros(shape, np.int16), unique_id)
    array["value"] = {"ubyteValue": np.arange(100, dtype=np.uint8)}
    array["codec"] = pva.PvCodec("nosuchcodec", pva.PvInt(int(pva.SHORT)))
    array["uncompressedSize"] = shape[0] * shape[1] * 2
    return array


class FrameSource:
    """Serves ``channel`` and publishes frames on it with uniqueIds counting from 1.

    The record starts as an empty NTNDArray, which consumers receive on connecting and
    skip, as with an areaDetector IOC.
    """

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.next_id = 1
        self.sent_at: dict[int, float] = {}
        self._server = pva.PvaServer()
        self._server.addRecord(channel, pva.NtNdArray(), None)
        self._server.start()

    def publish(self, array: pva.NtNdArray) -> int:
        """Publish a prepared NTNDArray under the next uniqueId, which it returns."""
        unique_id = self.next_id
        array["uniqueId"] = unique_id
        now = time.time()
        ts = pva.PvTimeStamp(now)
        array["timeStamp"] = ts
        array["dataTimeStamp"] = ts
        self._server.update(self.channel, array)
        self.sent_at[unique_id] = now
        self.next_id += 1
        return unique_id

    def publish_frames(
        self, frames: Iterable[np.ndarray], rate_hz: float | None = None, first_point: int = 0
    ) -> list[int]:
        """Publish ``frames`` as scan points (attributes ``x``, ``y``, ``point``) at ``rate_hz``."""
        ids = []
        start = time.perf_counter()
        for i, frame in enumerate(frames):
            if rate_hz:
                delay = start + i / rate_hz - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            point = first_point + i
            attributes = {"x": 0.5 * point, "y": -0.25 * point, "point": point}
            ids.append(self.publish(ntnda(frame, self.next_id, attributes)))
        return ids

    def close(self) -> None:
        """Stop serving, and let go of the record, so that the channel can be served
        again (a restarted IOC)."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
