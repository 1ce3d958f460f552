"""The live mosaic as PV Access NTNDArray channels, ``<prefix>:mosaic`` and its coverage.

c2dv or any areaDetector viewer shows it: a float32 2-D image of the stitched phase,
with the object pixel size, the run's uid, the patches in it, the pixel of scan
position ``(0, 0)`` and the fill as attributes
(:data:`~ptychonn_ophyd.wire.MOSAIC_ATTRIBUTES`).  Where the scan has not been the image
holds the fill, the lowest phase it has, not NaN: viewers scale to the image's minimum
and maximum, and a NaN made c2dv's froze.  ``<prefix>:mosaic:covered`` says which
pixels the scan has lit.  The ``uniqueId`` of both counts updates.
"""

from __future__ import annotations

import logging

import numpy as np
import pvaccess as pva

from ptychonn_ophyd.analysis.stitch import StitchedImage
from ptychonn_ophyd.wire import (
    MOSAIC_ATTRIBUTES,
    make_ntndarray,
    mosaic_channel,
    mosaic_coverage_channel,
)

log = logging.getLogger(__name__)


class MosaicChannel:
    """A PVA server in the session's process holding the mosaic records."""

    def __init__(self) -> None:
        self._server: pva.PvaServer | None = None
        self._records: set[str] = set()
        self.channel: str | None = None
        self.coverage_channel: str | None = None
        self.updates = 0

    def serve(self, prefix: str) -> None:
        """Publish on ``<prefix>:mosaic`` from now on (the record exists at once)."""
        if self._server is None:
            self._server = pva.PvaServer()
            self._server.start()
        self.channel = mosaic_channel(prefix)
        self.coverage_channel = mosaic_coverage_channel(prefix)
        if self.channel not in self._records:
            for record in (self.coverage_channel, self.channel):
                self._server.addRecord(record, pva.NtNdArray(), None)
            self._records.add(self.channel)
            log.info("serving the live mosaic on %s", self.channel)

    def publish(self, uid: str, phase: StitchedImage, frames: int) -> None:
        """Post run ``uid``'s phase mosaic of ``frames`` patches on the channel."""
        if self._server is None or self.channel is None:
            return
        covered = np.isfinite(phase.image)
        fill = float(phase.image[covered].min()) if covered.any() else 0.0
        image = np.where(covered, phase.image, fill).astype(np.float32)
        values = (phase.pixel_size_um, uid, frames, *phase.center, fill)
        self.updates += 1
        coverage = make_ntndarray(
            covered.astype(np.uint8),
            self.updates,
            {"scan_uid": uid, "frames": frames},
            descriptor="ptychonn mosaic coverage",
        )
        self._server.update(self.coverage_channel, coverage)
        array = make_ntndarray(
            image,
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
