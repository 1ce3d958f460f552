"""Reading the image out of an NTNDArray without copying it."""

from __future__ import annotations

import numpy as np
from pvapy.utility.adImageUtility import AdImageUtility

from ptychonn_ophyd.errors import FrameRejected

NUMERIC_FIELDS = frozenset(AdImageUtility.NTNDA_DATA_FIELD_KEY_MAP.values())
"""NTNDArray ``value`` union members that hold numbers (all but ``booleanValue``)."""


class NoFrameYet(Exception):
    """The value an input channel holds before its detector's first frame.

    An areaDetector IOC's PVA plugin, the simulated detector and pvapy's servers start
    their record as an NTNDArray without data and with ``uniqueId`` 0; a worker that
    (re)connects before the first frame, as it does at once after a source restart,
    receives it as its first update.  The detector never produced it (its uniqueIds
    count from 1), so it is not counted as a frame.
    """

    def __init__(self) -> None:
        super().__init__(
            "the input channel holds no frame yet (uniqueId 0, no data): its server has "
            "just started"
        )


def decode_frame(ntnda) -> tuple[np.ndarray, bool]:
    """The 2-D image of an NTNDArray ``[ny, nx]`` and whether it came compressed.

    The array is a view of the PV's data where it can be (uncompressed frames).

    Raises
    ------
    NoFrameYet
        No data and ``uniqueId`` 0: the channel's value before the detector's first frame.
    FrameRejected
        ``"empty"`` (no data), ``"dtype"`` (booleans), ``"codec"`` (a compression that
        cannot be decoded here) or ``"shape"`` (not a 2-D image, or dimensions that
        disagree with the data).
    """
    field = ntnda.getSelectedUnionFieldName()
    if not field:
        if not ntnda["uniqueId"]:
            raise NoFrameYet
        raise FrameRejected("empty", "frame without data")
    if field not in NUMERIC_FIELDS:
        raise FrameRejected("dtype", f"unsupported data type {field}")
    data = ntnda.getUnion()[field]
    codec = ntnda["codec.name"]
    if codec:
        data = _decompressed(ntnda, codec, data)
    if data.size == 0:
        raise FrameRejected("empty", "frame with no pixels")
    dims = ntnda["dimension"]
    if len(dims) != 2:
        raise FrameRejected("shape", f"frame has {len(dims)} dimensions, expected 2")
    nx, ny = dims[0]["size"], dims[1]["size"]
    if nx * ny != data.size:
        raise FrameRejected(
            "shape", f"frame dimensions {nx}x{ny} do not match its {data.size} values"
        )
    return data.reshape(ny, nx), bool(codec)


def _decompressed(ntnda, codec: str, data: np.ndarray) -> np.ndarray:
    try:
        decompress = AdImageUtility.getDecompressor(codec)
        dtype = ntnda["codec.parameters"][0]["value"]
        return decompress(data, dtype, ntnda["uncompressedSize"])
    except Exception as err:  # decompressors raise whatever their library raises
        raise FrameRejected("codec", f"cannot decode {codec!r} frame: {err}") from None
