"""Far-field diffraction of a probe-lit object patch, counted by a pixel detector.

For each scan position the exit wave is ``probe * object_patch``; the detector sees its
far-field intensity ``|FFT(exit wave)|**2`` (zero frequency at the frame centre), scaled
to a photon budget, with Poisson counting noise, rounded to integers and clipped at the
detector dtype's maximum (saturation).  Larger detectors are simulated by giving every
128x128 pixel a ``b x b`` block of finer pixels with the same expected count, inside a
dark border; cropping the border and mean-binning ``b x b`` (what the package's
preprocessing does) gives back the 128x128 pattern.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ptychonn_ophyd.physics.objects import ComplexObject
from ptychonn_ophyd.physics.scan import to_pixels

DETECTOR_DTYPES = ("int16", "uint16", "int32", "uint32")
"""Integer types an areaDetector may deliver; counts saturate at their maximum."""


@dataclass(frozen=True)
class DetectorConfig:
    """How diffraction intensity becomes a detector frame.

    Attributes
    ----------
    photons
        Expected total counts of the 128x128 pattern for a fully transparent object
        (the object's absorption lowers it).  Finer pixels keep the per-pixel count,
        so a large frame's total is ``photons * bin_factor**2``.
    dtype
        Detector integer type; counts above its maximum are clipped to it.
    bin_factor
        Side of the block of detector pixels that one pattern pixel becomes.
    border
        Dark pixels added on each side (``border=2, bin_factor=4`` gives 516x516).
    noise
        Draw Poisson counts; without it the expected counts are rounded.
    """

    photons: float = 1e6
    dtype: str = "int16"
    bin_factor: int = 1
    border: int = 0
    noise: bool = True

    def __post_init__(self) -> None:
        if self.photons <= 0:
            raise ValueError(f"photons must be positive, got {self.photons}")
        if self.dtype not in DETECTOR_DTYPES:
            raise ValueError(f"dtype must be one of {DETECTOR_DTYPES}, got {self.dtype!r}")
        if self.bin_factor < 1 or self.border < 0:
            raise ValueError(f"need bin_factor >= 1 and border >= 0: {self}")

    def frame_size(self, pattern_size: int) -> int:
        """Side of the detector frame for a pattern of ``pattern_size`` pixels."""
        return pattern_size * self.bin_factor + 2 * self.border


def far_field_intensity(exit_waves: np.ndarray) -> np.ndarray:
    """``|FFT|**2`` of a stack of exit waves, centred, with unitary scaling (Parseval)."""
    spectrum = np.fft.fft2(exit_waves, norm="ortho", axes=(-2, -1))
    return np.fft.fftshift(np.abs(spectrum) ** 2, axes=(-2, -1))


def count_photons(
    intensity: np.ndarray, config: DetectorConfig, rng: np.random.Generator
) -> np.ndarray:
    """Expected counts (..., n, n) to detector frames: embed, add noise, round, saturate."""
    b, pad = config.bin_factor, config.border
    if b > 1:
        intensity = np.repeat(np.repeat(intensity, b, axis=-2), b, axis=-1)
    if pad:
        widths = [(0, 0)] * (intensity.ndim - 2) + [(pad, pad), (pad, pad)]
        intensity = np.pad(intensity, widths)
    counts = rng.poisson(intensity) if config.noise else np.rint(intensity)
    return np.clip(counts, 0, np.iinfo(config.dtype).max).astype(config.dtype)


class PtychoSimulation:
    """A ptychography scan of one object: diffraction frames and their ground truth.

    Parameters
    ----------
    obj
        The sample.
    probe
        Complex probe of unit total intensity (:func:`~ptychonn_ophyd.physics.probe.make_probe`);
        its side is the patch size.
    positions_um
        ``(N, 2)`` scan positions ``(x, y)`` in micrometres from the object centre
        (:mod:`ptychonn_ophyd.physics.scan`); may be empty when only ``*_at`` methods are used.
    detector
        Photon budget, noise, dtype and frame size.
    seed
        Seed of the noise generator: the same seed gives the same frames.
    """

    def __init__(
        self,
        obj: ComplexObject,
        probe: np.ndarray,
        positions_um: np.ndarray | Sequence[Sequence[float]] = (),
        detector: DetectorConfig = DetectorConfig(),
        seed: int = 0,
    ) -> None:
        if probe.ndim != 2 or probe.shape[0] != probe.shape[1]:
            raise ValueError(f"probe must be square, got {probe.shape}")
        self.obj = obj
        self.probe = probe.astype(np.complex64)
        self.detector = detector
        self.positions_um = np.asarray(positions_um, dtype=np.float64).reshape(-1, 2)
        self.rng = np.random.default_rng(seed)
        self._corners = self._patch_corners(self.positions_um)

    @property
    def patch_size(self) -> int:
        return self.probe.shape[0]

    @property
    def frame_shape(self) -> tuple[int, int]:
        side = self.detector.frame_size(self.patch_size)
        return side, side

    @property
    def patch_corners(self) -> np.ndarray:
        """``(N, 2)`` top-left ``(row, col)`` object pixel of each scan point's patch."""
        return self._corners

    def __len__(self) -> int:
        return len(self.positions_um)

    def frame(self, i: int) -> np.ndarray:
        """Detector frame of scan point ``i`` (fresh noise on every call)."""
        return self.frames([i])[0]

    def frames(self, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Detector frames ``(n, H, W)`` of the given scan points (all by default)."""
        corners = self._corners if indices is None else self._corners[np.asarray(indices)]
        return count_photons(self._intensity(corners), self.detector, self.rng)

    def expected_intensity(self, i: int) -> np.ndarray:
        """Noise-free counts of the 128x128 pattern of scan point ``i`` (float64)."""
        return self._intensity(self._corners[[i]])[0]

    def ground_truth_patch(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(phase, amplitude)`` of the object patch scan point ``i`` lights."""
        phase, amplitude = self.ground_truth(np.array([i]))
        return phase[0], amplitude[0]

    def ground_truth(
        self, indices: Sequence[int] | np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Stacks ``(n, p, p)`` of phase and amplitude patches: what PtychoNN must predict."""
        corners = self._corners if indices is None else self._corners[np.asarray(indices)]
        return self._crop(self.obj.phase, corners), self._crop(self.obj.amplitude, corners)

    def frames_at(self, positions_um: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        """Detector frames at arbitrary positions ``(x, y)`` in micrometres."""
        corners = self._patch_corners(np.asarray(positions_um, dtype=np.float64).reshape(-1, 2))
        return count_photons(self._intensity(corners), self.detector, self.rng)

    def _patch_corners(self, positions_um: np.ndarray) -> np.ndarray:
        """Top-left ``(row, col)`` of the patch each position lights, bounds checked."""
        pixels = to_pixels(positions_um, self.obj.pixel_size_um, self.obj.shape)
        half = self.patch_size // 2
        corners = np.rint(pixels[:, ::-1]).astype(np.int64) - half
        limit = np.array(self.obj.shape) - self.patch_size
        outside = np.any((corners < 0) | (corners > limit), axis=1)
        if np.any(outside):
            first = positions_um[np.argmax(outside)]
            raise ValueError(
                f"{int(outside.sum())} positions light patches outside the "
                f"{self.obj.shape} object, e.g. {first.tolist()} um; "
                f"keep |x|, |y| below {(min(self.obj.shape) // 2 - half) * self.obj.pixel_size_um}"
            )
        return corners

    def _crop(self, image: np.ndarray, corners: np.ndarray) -> np.ndarray:
        p = self.patch_size
        return np.stack([image[r : r + p, c : c + p] for r, c in corners])

    def _intensity(self, corners: np.ndarray) -> np.ndarray:
        exit_waves = self.probe * self._crop(self.obj.transmission, corners)
        return far_field_intensity(exit_waves) * self.detector.photons
