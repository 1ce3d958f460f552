"""Frame moments: what a frame's counts say without the network."""

import numpy as np

from ptychonn_ophyd.moments import frame_moments


def test_moments_of_counts_are_those_of_their_exact_values():
    rng = np.random.default_rng(0)
    counts = rng.poisson(rng.uniform(0, 3000, (4, 32, 48))).astype(np.int16)
    exact = counts.astype(np.float64)
    total = exact.sum((1, 2))
    rows, cols = np.mgrid[:32, :48]
    x = (exact * cols).sum((1, 2)) / total
    y = (exact * rows).sum((1, 2)) / total

    for frames in (counts, counts.astype(np.float32)):
        got_total, centroid = frame_moments(frames)
        np.testing.assert_allclose(got_total, total, rtol=1e-12)
        np.testing.assert_allclose(centroid, np.stack([x, y], 1), rtol=1e-12)


def test_a_frame_without_counts_has_no_centroid():
    total, centroid = frame_moments(np.zeros((1, 8, 8), np.float32))
    assert total.tolist() == [0.0] and np.isnan(centroid).all()
