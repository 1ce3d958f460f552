"""The far-field forward model on torch tensors: the GPU path of :mod:`.diffraction`.

The physics is the numpy path's (:func:`~ptychonn_ophyd.physics.diffraction.far_field_intensity`
and :func:`~ptychonn_ophyd.physics.diffraction.count_photons`): exit wave ``probe * patch``,
unitary ``|FFT|**2`` with zero frequency at the centre, scaled to a photon budget, Poisson
counts, clipped at the detector dtype's maximum.  Training draws its frames with it on
whatever device it trains on; the tests check it against the numpy path.
"""

from __future__ import annotations

import numpy as np
import torch


def far_field_intensity(exit_waves: torch.Tensor) -> torch.Tensor:
    """``|FFT|**2`` of a stack of complex exit waves ``(..., n, n)``, centred, unitary."""
    spectrum = torch.fft.fft2(exit_waves, norm="ortho")
    return torch.fft.fftshift(spectrum.abs() ** 2, dim=(-2, -1))


def count_photons(
    expected: torch.Tensor, dtype: str = "int16", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Poisson counts of ``expected`` (float), clipped at ``dtype``'s maximum, as float32.

    Float, not integer: the network takes counts cast to float32, as the workers do.
    """
    counts = torch.poisson(expected.float(), generator=generator)
    return counts.clamp_(max=float(np.iinfo(dtype).max))


def diffraction_frames(
    probes: torch.Tensor,
    phase: torch.Tensor,
    amplitude: torch.Tensor,
    photons: torch.Tensor,
    dtype: str = "int16",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Detector frames ``(n, p, p)`` of object patches lit by ``probes``.

    Parameters
    ----------
    probes
        ``(n, p, p)`` complex probes of unit total intensity.
    phase, amplitude
        ``(n, p, p)`` object patches (radians, transmission).
    photons
        ``(n,)`` expected counts of each pattern for a fully transparent object.
    """
    exit_waves = probes * torch.polar(amplitude, phase)
    expected = far_field_intensity(exit_waves) * photons[:, None, None]
    return count_photons(expected, dtype, generator)
