"""The live mosaic as a PV Access NTNDArray channel, ``<prefix>:mosaic``.

c2dv or any areaDetector viewer shows it: a float32 2-D image of the stitched phase
(NaN where the scan has not been), with the object pixel size, the run's uid, the
patches in it and the pixel of scan position ``(0, 0)`` as attributes
(:data:`~ptychonn_ophyd.wire.MOSAIC_ATTRIBUTES`).  Its ``uniqueId`` counts updates.
"""

from __future__ import annotations

import logging

import numpy as np
import pvaccess as pva

from ptychonn_ophyd.analysis.stitch import StitchedImage
from ptychonn_ophyd.wire import MOSAIC_ATTRIBUTES, make_ntndarray, mosaic_channel

log = logging.getLogger(__name__)


class MosaicChannel:
    """A PVA server in the session's process holding the mosaic records."""

    def __init__(self) -> None:
        self._server: pva.PvaServer | None = None
        self._records: set[str] = set()
        self.channel: str | None = None
        self.updates = 0

    def serve(self, prefix: str) -> None:
        """Publish on ``<prefix>:mosaic`` from now on (the record exists at once)."""
        if self._server is None:
            self._server = pva.PvaServer()
            self._server.start()
        self.channel = mosaic_channel(prefix)
        if self.channel not in self._records:
            self._server.addRecord(self.channel, pva.NtNdArray(), None)
            self._records.add(self.channel)
            log.info("serving the live mosaic on %s", self.channel)

    def publish(self, uid: str, phase: StitchedImage, frames: int) -> None:
        """Post run ``uid``'s phase mosaic of ``frames`` patches on the channel."""
        if self._server is None or self.channel is None:
            return
        values = (phase.pixel_size_um, uid, frames, *phase.center)
        self.updates += 1
        array = make_ntndarray(
            np.ascontiguousarray(phase.image, dtype=np.float32),
            self.updates,
            dict(zip(MOSAIC_ATTRIBUTES, values, strict=True)),
            descriptor="ptychonn mosaic",
        )
        self._server.update(self.channel, array)

    def stop(self) -> None:
        """Stop the server; the channels disappear."""
        if self._server is not None:
            self._server.stop()
            self._server = None
            self._records.clear()
