"""PtychoNN as a PyTorch module, built from an :class:`ArchitectureSpec`."""

from __future__ import annotations

import math

import torch
from torch import nn

from ptychonn_ophyd.models.architecture import HEAD_DECODERS, ArchitectureSpec


def _blocks(c_in: int, widths: tuple[int, ...], resample: type[nn.Module]) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for c_out in widths:
        layers += [
            nn.Conv2d(c_in, c_out, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1),
            nn.ReLU(),
            resample(),
        ]
        c_in = c_out
    return layers


class _Pool(nn.MaxPool2d):
    def __init__(self) -> None:
        super().__init__(2)


class _Upsample(nn.Upsample):
    def __init__(self) -> None:
        super().__init__(scale_factor=2, mode="bilinear", align_corners=False)


class PtychoNN(nn.Module):
    """PtychoNN with the authors' module layout, so their ``state_dict`` loads as is.

    ``forward`` takes raw counts ``[n, 1, H, W]`` and returns ``(phase,)`` in radians,
    or ``(amplitude, phase)`` for two-head models, each ``[n, 1, H, W]``.
    """

    def __init__(self, spec: ArchitectureSpec) -> None:
        super().__init__()
        self.spec = spec
        self.encoder = nn.Sequential(*_blocks(1, spec.encoder_channels, _Pool))
        for head in spec.heads:
            final_act = nn.Sigmoid() if head == "amplitude" else nn.Tanh()
            layers = _blocks(spec.encoder_channels[-1], spec.decoder_channels, _Upsample)
            layers += [nn.Conv2d(spec.decoder_channels[-1], 1, 3, padding=1), final_act]
            self.add_module(HEAD_DECODERS[head], nn.Sequential(*layers))

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.encoder(frames)
        phase = self.decoder2(features) * math.pi
        if "amplitude" in self.spec.heads:
            return self.decoder1(features), phase
        return (phase,)
