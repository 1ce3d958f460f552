"""Complex transmission objects made from the images bundled with scikit-image.

A ptychography sample is a thin complex transmission ``amplitude * exp(1j * phase)``.
Here the phase comes from one grey image and the amplitude from another, so the network
must learn to tell them apart.  Only images that ship inside the scikit-image wheel are
used (nothing is downloaded).  The images are split once and for all into a TRAINING
pool and a HELD-OUT pair that training never sees, so the demo reconstructs an object
the model has not met.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

TRAINING_IMAGES: tuple[str, ...] = (
    "astronaut",
    "brick",
    "cell",
    "chelsea",
    "checkerboard",
    "clock",
    "coffee",
    "coins",
    "colorwheel",
    "grass",
    "gravel",
    "horse",
    "hubble_deep_field",
    "immunohistochemistry",
    "logo",
    "page",
    "retina",
    "rocket",
    "shepp_logan_phantom",
    "text",
)
"""Images that training objects draw their phase and amplitude from."""

HELD_OUT_PHASE = "camera"
HELD_OUT_AMPLITUDE = "moon"
"""The demo object's images; neither is in :data:`TRAINING_IMAGES`."""

HELD_OUT_SIZE = 384
HELD_OUT_MAGNIFICATION = 3.0
"""The demo object is the central 128x128 image pixels of each, shown 3x larger."""

DEFAULT_PHASE_RANGE = (-np.pi / 2, np.pi / 2)
"""Phase span in radians: strong enough to scatter well, well inside ``pi * tanh``."""

DEFAULT_AMPLITUDE_RANGE = (0.6, 1.0)
"""Amplitude span: a moderately absorbing sample."""

DEFAULT_PIXEL_SIZE_M = 10e-9
"""Object pixel size; positions in micrometres convert to pixels with it."""


@dataclass(frozen=True)
class ComplexObject:
    """A sample: phase and amplitude maps on a 2-D grid of known pixel size.

    Attributes
    ----------
    phase, amplitude
        2-D float32 arrays of the same shape (radians, and transmission in [0, 1]).
    pixel_size_m
        Side of one object pixel in metres.
    name
        Which images it was made from, for logs and metadata.
    """

    phase: np.ndarray
    amplitude: np.ndarray
    pixel_size_m: float = DEFAULT_PIXEL_SIZE_M
    name: str = ""
    transmission: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.phase.ndim != 2 or self.phase.shape != self.amplitude.shape:
            raise ValueError(
                f"phase {self.phase.shape} and amplitude {self.amplitude.shape} must be equal 2-D"
            )
        if self.pixel_size_m <= 0:
            raise ValueError(f"pixel size must be positive, got {self.pixel_size_m}")
        transmission = (self.amplitude * np.exp(1j * self.phase)).astype(np.complex64)
        object.__setattr__(self, "transmission", transmission)

    @property
    def shape(self) -> tuple[int, int]:
        return self.phase.shape  # type: ignore[return-value]

    @property
    def pixel_size_um(self) -> float:
        return self.pixel_size_m * 1e6


def available_images() -> tuple[str, ...]:
    """Names accepted by :func:`load_image`: the training pool and the held-out pair."""
    return (*TRAINING_IMAGES, HELD_OUT_PHASE, HELD_OUT_AMPLITUDE)


def load_image(name: str) -> np.ndarray:
    """One bundled scikit-image picture as a float32 grey image scaled to [0, 1].

    Colour images are converted to luminance; the scaling uses the 0.5 and 99.5
    percentiles so that a few hot pixels do not flatten the rest.
    """
    if name not in available_images():
        raise ValueError(f"unknown image {name!r}; choose from {', '.join(available_images())}")
    import skimage.color
    import skimage.data

    image = np.asarray(getattr(skimage.data, name)())
    if image.ndim == 3:
        image = skimage.color.rgb2gray(image[..., :3])
    image = image.astype(np.float32)
    low, high = np.percentile(image, (0.5, 99.5))
    return np.clip((image - low) / max(high - low, 1e-6), 0.0, 1.0).astype(np.float32)


def square_view(image: np.ndarray, size: int, magnification: float | None = None) -> np.ndarray:
    """A centred square ``size`` x ``size`` view of an image, resampled with anti-aliasing.

    ``magnification`` is object pixels per image pixel, so the view covers
    ``size / magnification`` image pixels (at most the image's short side; ``None``
    takes the whole short side).
    """
    from skimage.transform import resize

    short = min(image.shape)
    side = short if magnification is None else min(short, max(4, round(size / magnification)))
    top, left = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
    view = image[top : top + side, left : left + side]
    view = resize(view, (size, size), anti_aliasing=side > size, preserve_range=True)
    return np.ascontiguousarray(view, dtype=np.float32)


@dataclass(frozen=True)
class ObjectStyle:
    """How grey images map to a sample: phase and amplitude spans, and pixel size.

    Attributes
    ----------
    phase_range
        Radians that image values 0 and 1 map to; inside (-pi, pi) so that PtychoNN's
        ``pi * tanh`` output can reach it.
    amplitude_range
        Transmission that image values 0 and 1 map to, inside [0, 1].
    pixel_size_m
        Object pixel size in metres.
    """

    phase_range: tuple[float, float] = DEFAULT_PHASE_RANGE
    amplitude_range: tuple[float, float] = DEFAULT_AMPLITUDE_RANGE
    pixel_size_m: float = DEFAULT_PIXEL_SIZE_M

    def __post_init__(self) -> None:
        low, high = self.amplitude_range
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"amplitude range must lie in [0, 1], got {self.amplitude_range}")
        low, high = self.phase_range
        if low > high or max(abs(low), abs(high)) >= np.pi:
            raise ValueError(f"phase range must increase inside (-pi, pi): {self.phase_range}")
        if self.pixel_size_m <= 0:
            raise ValueError(f"pixel size must be positive, got {self.pixel_size_m}")


def make_object(
    phase_image: np.ndarray,
    amplitude_image: np.ndarray,
    style: ObjectStyle = ObjectStyle(),
    name: str = "",
) -> ComplexObject:
    """Map two [0, 1] images linearly onto the style's phase and amplitude spans."""
    (p0, p1), (a0, a1) = style.phase_range, style.amplitude_range
    phase = (p0 + (p1 - p0) * phase_image).astype(np.float32)
    amplitude = (a0 + (a1 - a0) * amplitude_image).astype(np.float32)
    return ComplexObject(phase, amplitude, style.pixel_size_m, name)


def named_object(
    phase_name: str,
    amplitude_name: str,
    size: int = HELD_OUT_SIZE,
    magnification: float | None = HELD_OUT_MAGNIFICATION,
    style: ObjectStyle = ObjectStyle(),
) -> ComplexObject:
    """An object from two named bundled images (centred views, see :func:`square_view`)."""
    phase = square_view(_cached_image(phase_name), size, magnification)
    amplitude = square_view(_cached_image(amplitude_name), size, magnification)
    return make_object(phase, amplitude, style, f"{phase_name}/{amplitude_name}")


def held_out_object(
    size: int = HELD_OUT_SIZE,
    magnification: float | None = HELD_OUT_MAGNIFICATION,
    style: ObjectStyle = ObjectStyle(),
) -> ComplexObject:
    """The demo object (camera phase, moon amplitude) that no training set contains."""
    return named_object(HELD_OUT_PHASE, HELD_OUT_AMPLITUDE, size, magnification, style)


_IMAGE_CACHE: dict[str, np.ndarray] = {}


def _cached_image(name: str) -> np.ndarray:
    """:func:`load_image`, decoded once per process."""
    if name not in _IMAGE_CACHE:
        _IMAGE_CACHE[name] = load_image(name)
    return _IMAGE_CACHE[name]
