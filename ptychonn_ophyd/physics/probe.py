"""The X-ray probe: a defocused, apodised focus on the reconstruction grid.

A zone plate or KB mirror fills a circular pupil in the far field; slightly out of focus
the pupil carries a quadratic (defocus) phase.  The probe in the sample plane is the
inverse Fourier transform of that pupil: a ring-structured spot whose size is set by the
defocus.  Keeping it inside half the grid keeps the diffraction pattern oversampled, and
its curved phase breaks the twin-image ambiguity of a far-field measurement, both of
which a single-shot network needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

PATCH_SIZE = 128
"""Side of the diffraction pattern and of the object patch PtychoNN predicts, in pixels."""


@dataclass(frozen=True)
class ProbeConfig:
    """Shape of the simulated probe.

    Attributes
    ----------
    size
        Grid side in pixels (the network's patch size).
    pupil_radius
        Radius of the bright disc in the far field, in detector pixels.
    defocus
        Defocus phase at the pupil edge, in radians; the spot radius grows roughly as
        ``defocus * size / (pi * pupil_radius)`` pixels.
    edge_width
        Width of the pupil's soft edge in detector pixels (apodisation).
    """

    size: int = PATCH_SIZE
    pupil_radius: float = 20.0
    defocus: float = 8.0
    edge_width: float = 1.5

    def __post_init__(self) -> None:
        if self.size < 8 or not 0 < self.pupil_radius < self.size / 2:
            raise ValueError(f"need size >= 8 and 0 < pupil_radius < size/2: {self}")
        if self.edge_width <= 0:
            raise ValueError(f"edge width must be positive, got {self.edge_width}")


def make_probe(config: ProbeConfig = ProbeConfig()) -> np.ndarray:
    """The complex probe, centred on the grid and normalised to unit total intensity."""
    k = np.fft.fftshift(np.fft.fftfreq(config.size)) * config.size
    radius = np.hypot(*np.meshgrid(k, k, indexing="ij"))
    edge = 0.5 * (1.0 - np.tanh((radius - config.pupil_radius) / config.edge_width))
    pupil = edge * np.exp(1j * config.defocus * (radius / config.pupil_radius) ** 2)
    probe = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(pupil)))
    return (probe / np.sqrt(np.sum(np.abs(probe) ** 2))).astype(np.complex64)


def probe_weight(probe: np.ndarray) -> np.ndarray:
    """Probe intensity scaled to a maximum of 1: where a prediction is trustworthy.

    Training weights its loss with it, and stitching should weight each predicted
    patch with it, since the network cannot know the object where the beam is dark.
    """
    intensity = np.abs(probe).astype(np.float32) ** 2
    return intensity / intensity.max()


def check_probe(probe: np.ndarray, name: str = "the probe") -> np.ndarray:
    """``probe`` as an array, checked: a square complex one (``name`` says which in
    the error).

    Raises
    ------
    ValueError
        It is not one.
    """
    probe = np.asarray(probe)
    if probe.ndim != 2 or probe.shape[0] != probe.shape[1] or not np.iscomplexobj(probe):
        raise ValueError(f"{name} must be a square complex array, not {probe.dtype} {probe.shape}")
    return probe


def load_probe(path: str | Path) -> np.ndarray:
    """The complex probe ``(p, p)`` saved with ``numpy.save`` at ``path``.

    Raises
    ------
    ValueError
        No such file, or it holds no square complex array.
    """
    try:
        probe = np.load(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read a probe from {path}: {err}") from None
    return check_probe(probe, f"the probe in {path}")
