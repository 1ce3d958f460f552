"""Random object patches and their diffraction frames, drawn on the training device.

Each draw is a batch of fresh samples: a grey pattern for the phase and another for the
amplitude (a random view of a training photograph, or a synthetic texture), mapped onto
random phase and amplitude spans, lit by one of a few jittered probes, and counted at a
random photon budget by :func:`~ptychonn_ophyd.physics.forward_torch.diffraction_frames`.
Everything happens in torch on the device, so a GPU draws frames far faster than it
trains on them, and one seeded generator makes every draw reproducible.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ptychonn_ophyd.physics.forward_torch import diffraction_frames
from ptychonn_ophyd.physics.objects import TRAINING_IMAGES, load_image
from ptychonn_ophyd.physics.probe import ProbeConfig, make_probe, probe_weight
from ptychonn_ophyd.training.config import TrainingConfig, Variation

LARGEST_SIDE = 1024
"""Side, in pixels, that no photograph of the training bank exceeds."""


@dataclass(frozen=True)
class Batch:
    """Frames and what the network must predict, all ``(n, p, p)`` float32 on one device.

    ``phase`` is referenced to its probe-weighted mean: no frame tells a patch's absolute
    phase, so the network learns the phase about the mean of what the beam lit.
    ``weight`` is each sample's probe intensity scaled to a maximum of 1.
    """

    frames: torch.Tensor
    phase: torch.Tensor
    amplitude: torch.Tensor
    weight: torch.Tensor

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, rows: slice) -> Batch:
        return Batch(self.frames[rows], self.phase[rows], self.amplitude[rows], self.weight[rows])


class FrameSampler:
    """Draws :class:`Batch` es of random training samples on ``device``.

    Parameters
    ----------
    config
        The recipe: probe, variation ranges and detector style.
    device
        Where samples are made and kept.
    seed
        Seeds the probes and every draw; two samplers with one seed draw the same batches.
    """

    def __init__(self, config: TrainingConfig, device: torch.device | str, seed: int) -> None:
        self.device = torch.device(device)
        self.variation = config.variation
        self.patch = config.probe.size
        self.generator = torch.Generator(self.device).manual_seed(seed)
        rng = np.random.default_rng(seed)
        self.bank, self.sizes = _image_bank(TRAINING_IMAGES, self.device)
        probes = [make_probe(p) for p in _jittered_probes(config.probe, self.variation, rng)]
        self.probes = torch.as_tensor(np.stack(probes), device=self.device)
        weights = np.stack([probe_weight(p) for p in probes])
        self.weights = torch.as_tensor(weights, device=self.device)

    def draw(self, n: int) -> Batch:
        """``n`` fresh samples."""
        v = self.variation
        phase, amplitude = self.objects(n)
        which = self._integers(n, len(self.probes))
        photons = torch.exp(self._uniform(n, *np.log(v.photons_range)))
        frames = diffraction_frames(
            self.probes[which], phase, amplitude, photons, generator=self.generator
        )
        weight = self.weights[which]
        return Batch(frames, phase - weighted_mean(phase, weight), amplitude, weight)

    def objects(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` random objects, phase and amplitude ``(n, p, p)`` (``p`` the probe's side),
        as every sample's object is drawn."""
        v = self.variation
        phase = self._grey(n) * self._uniform(n, *v.phase_span_range)[:, None, None]
        floor = self._uniform(n, *v.amplitude_floor_range)[:, None, None]
        return phase, floor + (1.0 - floor) * self._grey(n)

    def _grey(self, n: int) -> torch.Tensor:
        """``(n, p, p)`` patterns in [0, 1]: photographs and textures, random contrast.

        Both kinds are made for every sample and one is kept: choosing without
        branching keeps the host from waiting on the device.
        """
        synthetic = self._uniform(n, 0.0, 1.0) < self.variation.texture_fraction
        grey = torch.where(synthetic[:, None, None], self._textures(n), self._views(n))
        gamma = torch.exp(self._uniform(n, math.log(0.6), math.log(1.7)))[:, None, None]
        grey = grey.clamp(0.0, 1.0) ** gamma
        invert = (self._uniform(n, 0.0, 1.0) < 0.5)[:, None, None]
        return torch.where(invert, 1.0 - grey, grey)

    def _views(self, n: int) -> torch.Tensor:
        """Random views of the training photographs: any angle, flip, place and scale.

        The photographs are the slices of one volume, so one trilinear ``grid_sample``
        takes every view, each sampling exactly on its photograph's slice.
        """
        count, height, width = self.bank.shape
        which = self._integers(n, count)
        h, w = self.sizes[which, 0], self.sizes[which, 1]
        v = self.variation
        magnification = torch.exp(self._uniform(n, *np.log(v.magnification_range)))
        half = self.patch / (2 * magnification)  # image pixels from the view's centre
        reach = half * math.sqrt(2)
        cx = reach + self._uniform(n, 0.0, 1.0) * (w - 1 - 2 * reach).clamp(min=0)
        cy = reach + self._uniform(n, 0.0, 1.0) * (h - 1 - 2 * reach).clamp(min=0)
        angle = self._uniform(n, 0.0, 2 * math.pi)
        flip = torch.where(self._uniform(n, 0.0, 1.0) < 0.5, -1.0, 1.0)
        cos, sin = torch.cos(angle) * half, torch.sin(angle) * half
        u = torch.linspace(-1 + 1 / self.patch, 1 - 1 / self.patch, self.patch, device=self.device)
        ux, uy = u[None, None, :], u[None, :, None]  # output column and row, in [-1, 1]
        # Pixel centre + R(angle) (flip * ux, uy) * half, to grid_sample's normalised
        # coordinates (align_corners=False): (2 * pixel + 1) / size - 1.
        px = cx[:, None, None] + (cos * flip)[:, None, None] * ux - sin[:, None, None] * uy
        py = cy[:, None, None] + (sin * flip)[:, None, None] * ux + cos[:, None, None] * uy
        pz = which.to(px.dtype)[:, None, None].expand_as(px)
        grid = torch.stack(
            [(2 * px + 1) / width - 1, (2 * py + 1) / height - 1, (2 * pz + 1) / count - 1], -1
        )
        volume = self.bank[None, None]
        views = F.grid_sample(volume, grid[None], "bilinear", "zeros", align_corners=False)
        return views[0, 0]

    def _textures(self, n: int) -> torch.Tensor:
        """Power-law noise, half of it cut into flat regions with soft edges, in [0, 1]."""
        p = self.patch
        k = torch.fft.fftfreq(p, device=self.device) * p
        radius = torch.hypot(k[:, None], k[None, :]).clamp(min=1.0)
        slope = self._uniform(n, 1.5, 3.5)[:, None, None]
        noise = torch.randn(n, p, p, generator=self.generator, device=self.device)
        field = torch.fft.ifft2(torch.fft.fft2(noise) * radius ** (-slope)).real
        field = _to_unit(field)
        levels = self._integers(n, 4) + 2
        flat = torch.floor(field * levels[:, None, None]) / (levels[:, None, None] - 1)
        edge = self._uniform(n, 0.5, 3.0)[:, None, None]
        soft = torch.fft.ifft2(
            torch.fft.fft2(flat) * torch.exp(-((radius / p * edge * 6) ** 2))
        ).real
        regions = (self._uniform(n, 0.0, 1.0) < 0.5)[:, None, None]
        return torch.where(regions, _to_unit(soft), field)

    def _uniform(self, n: int, low: float, high: float) -> torch.Tensor:
        u = torch.rand(n, generator=self.generator, device=self.device)
        return float(low) + float(high - low) * u

    def _integers(self, n: int, high: int) -> torch.Tensor:
        return torch.randint(high, (n,), generator=self.generator, device=self.device)


def weighted_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Each ``(p, p)`` slice's ``weight``-weighted mean, shaped ``(n, 1, 1)``."""
    dims = (-2, -1)
    return (values * weight).sum(dims, keepdim=True) / weight.sum(dims, keepdim=True)


def _image_bank(names: tuple[str, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The photographs as slices of one zero-padded volume, and each one's ``(h, w)``.

    Photographs longer than :data:`LARGEST_SIDE` are shrunk to it: the views magnify
    them at least 1.5 times, so nothing finer is ever seen.
    """
    from skimage.transform import rescale

    images = []
    for name in names:
        image = load_image(name)
        if max(image.shape) > LARGEST_SIDE:
            image = rescale(image, LARGEST_SIDE / max(image.shape), anti_aliasing=True)
        images.append(image.astype(np.float32))
    height = max(image.shape[0] for image in images)
    width = max(image.shape[1] for image in images)
    bank = np.zeros((len(images), height, width), np.float32)
    for slot, image in zip(bank, images, strict=True):
        slot[: image.shape[0], : image.shape[1]] = image
    sizes = [image.shape for image in images]
    return torch.as_tensor(bank, device=device), torch.as_tensor(sizes, device=device)


def _to_unit(field: torch.Tensor) -> torch.Tensor:
    """Each ``(p, p)`` slice scaled to [0, 1]."""
    low = field.amin((-2, -1), keepdim=True)
    span = (field.amax((-2, -1), keepdim=True) - low).clamp(min=1e-6)
    return (field - low) / span


def _jittered_probes(
    nominal: ProbeConfig, variation: Variation, rng: np.random.Generator
) -> list[ProbeConfig]:
    """The nominal probe and ``n_probes - 1`` others of jittered defocus and pupil."""
    jitter = variation.probe_jitter
    others = [
        dataclasses.replace(
            nominal,
            defocus=nominal.defocus * (1 + jitter * rng.uniform(-1, 1)),
            pupil_radius=nominal.pupil_radius * (1 + jitter * rng.uniform(-1, 1)),
        )
        for _ in range(variation.n_probes - 1)
    ]
    return [nominal, *others]
