"""What a diffraction frame's counts say without the network: its total and centroid.

The centre of mass of a far-field pattern is the mean phase gradient of the exit wave
(:mod:`ptychonn_ophyd.analysis.tilt`), and the frames' totals map the object's
absorption.  An areaDetector statistics plugin reports both (the simulated detector's
:class:`~ptychonn_ophyd.sim.detector.FrameStats`), and every worker measures them on
the model input it infers, so each result carries its own frame's
(:data:`~ptychonn_ophyd.wire.INPUT_TAGS`).
"""

from __future__ import annotations

import numpy as np


def frame_moments(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Total counts ``(n,)`` and centroid ``(n, 2)`` ``(x, y)`` (column, row, in pixels)
    of frames ``(n, h, w)``; NaN centroids for a frame without counts.

    The column and row sums are matrix-vector products in the frames' float precision
    (float32 for integer counts: exact while a column's sum stays below 2**24), about
    1.4 µs a 128x128 frame, which the workers spend on every one; the rest is float64.
    """
    frames = np.asarray(frames)
    dtype = np.result_type(frames.dtype, np.float32)
    h, w = frames.shape[-2:]
    columns = (np.ones(h, dtype) @ frames).astype(np.float64)
    rows = (frames @ np.ones(w, dtype)).astype(np.float64)
    total = columns.sum(-1)
    x = columns @ np.arange(w)
    y = rows @ np.arange(h)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total, np.stack([x, y], -1) / total[..., None]
