"""Every patch's offset solved at once from its overlaps, on simulated patches."""

from __future__ import annotations

import numpy as np
import pytest

from ptychonn_ophyd.analysis.offsets import solved_offsets
from ptychonn_ophyd.physics.diffraction import PtychoSimulation
from ptychonn_ophyd.physics.objects import held_out_object
from ptychonn_ophyd.physics.probe import make_probe, probe_weight
from ptychonn_ophyd.physics.scan import raster_scan


@pytest.fixture(scope="module")
def scan() -> PtychoSimulation:
    return PtychoSimulation(held_out_object(size=256), make_probe(), raster_scan(9, 9, 0.1))


def test_offsets_added_to_true_patches_are_found_again(scan):
    truth, _ = scan.ground_truth()
    added = np.random.default_rng(0).normal(0, 1.0, len(scan))
    window = probe_weight(scan.probe)
    pixel = scan.obj.pixel_size_um
    found = solved_offsets(truth + added[:, None, None], scan.positions_um, pixel, window)
    assert found == pytest.approx(-(added - added.mean()), abs=1e-4)


def test_a_lone_patch_keeps_its_offset(scan):
    truth, _ = scan.ground_truth([0])
    window = probe_weight(scan.probe)
    found = solved_offsets(truth + 0.5, scan.positions_um[:1], scan.obj.pixel_size_um, window)
    assert found == pytest.approx([0.0])


def test_float32_patches_give_the_offsets_of_float64_ones(scan):
    truth, _ = scan.ground_truth()
    patches = truth + np.random.default_rng(1).normal(0, 1.0, len(scan))[:, None, None]
    args = (scan.positions_um, scan.obj.pixel_size_um, probe_weight(scan.probe))
    single = solved_offsets(patches.astype(np.float32), *args)
    assert single == pytest.approx(solved_offsets(patches.astype(np.float64), *args), abs=1e-5)
