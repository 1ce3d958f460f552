"""The PtychoNN family described as data, read from checkpoint tensor shapes.

Every PtychoNN variant is an encoder of conv-conv-pool blocks and one or two decoders
of conv-conv-upsample blocks ending in a single conv.  Knowing the channel widths of
each block and which decoders exist fixes the network, so a ``state_dict``'s shapes
are enough to rebuild it.  This module needs no PyTorch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

HEAD_DECODERS = {"amplitude": "decoder1", "phase": "decoder2"}
"""Which ``state_dict`` prefix holds each output head, as the PtychoNN authors named them."""

MODULES_PER_BLOCK = 5
"""conv, ReLU, conv, ReLU, pool/upsample: the index stride of a block in ``nn.Sequential``."""


@dataclass(frozen=True)
class ArchitectureSpec:
    """Shape of one PtychoNN network.

    Attributes
    ----------
    encoder_channels
        Output width of each encoder block, e.g. ``(16, 32, 64, 128)``.
    decoder_channels
        Output width of each decoder block, e.g. ``(128, 64, 32, 16)``; the final
        conv maps the last width to one channel.
    heads
        ``("phase",)`` or ``("amplitude", "phase")``.
    input_size
        Side of the square input frame in pixels.
    """

    encoder_channels: tuple[int, ...]
    decoder_channels: tuple[int, ...]
    heads: tuple[str, ...]
    input_size: int

    def __post_init__(self) -> None:
        if len(self.encoder_channels) != len(self.decoder_channels):
            raise ValueError("encoder and decoder must have the same number of blocks")
        if set(self.heads) - set(HEAD_DECODERS) or "phase" not in self.heads:
            raise ValueError(f"heads must be ('phase',) or ('amplitude', 'phase'): {self.heads}")
        if self.input_size % (2 ** len(self.encoder_channels)):
            raise ValueError(
                f"input size {self.input_size} is not divisible by 2**{len(self.encoder_channels)}"
            )

    @property
    def depth(self) -> int:
        return len(self.encoder_channels)

    def parameter_shapes(self) -> dict[str, tuple[int, ...]]:
        """The ``state_dict`` key and tensor shape of every weight of this network."""
        shapes: dict[str, tuple[int, ...]] = {}
        _block_shapes(shapes, "encoder", 1, self.encoder_channels)
        for head in self.heads:
            prefix = HEAD_DECODERS[head]
            _block_shapes(shapes, prefix, self.encoder_channels[-1], self.decoder_channels)
            final = f"{prefix}.{MODULES_PER_BLOCK * self.depth}"
            shapes[f"{final}.weight"] = (1, self.decoder_channels[-1], 3, 3)
            shapes[f"{final}.bias"] = (1,)
        return shapes


def _block_shapes(
    shapes: dict[str, tuple[int, ...]], prefix: str, c_in: int, widths: Sequence[int]
) -> None:
    for block, c_out in enumerate(widths):
        first = MODULES_PER_BLOCK * block
        for index, conv_in in ((first, c_in), (first + 2, c_out)):
            shapes[f"{prefix}.{index}.weight"] = (c_out, conv_in, 3, 3)
            shapes[f"{prefix}.{index}.bias"] = (c_out,)
        c_in = c_out


PRESETS: dict[str, ArchitectureSpec] = {
    "small_phase": ArchitectureSpec((16, 32, 64, 128), (128, 64, 32, 16), ("phase",), 128),
    "small_amp_phase": ArchitectureSpec(
        (16, 32, 64, 128), (128, 64, 32, 16), ("amplitude", "phase"), 128
    ),
    "original": ArchitectureSpec((32, 64, 128), (128, 64, 64), ("amplitude", "phase"), 64),
}
"""The variants in use: edgePtychoNN's small models and the APL 2020 PtychoNN."""

_CONV_KEY = re.compile(r"^(encoder|decoder1|decoder2)\.(\d+)\.weight$")


def spec_from_shapes(
    shapes: Mapping[str, Sequence[int]], input_size: int | None = None
) -> ArchitectureSpec:
    """Infer the architecture whose weights have these shapes.

    Parameters
    ----------
    shapes
        ``state_dict`` key to tensor shape.
    input_size
        Frame side; by default 64 for three-level networks (the original PtychoNN was
        trained on 64x64 frames) and 128 otherwise.

    Raises
    ------
    ValueError
        The keys or shapes are not those of a PtychoNN network; the message says which.
    """
    convs: dict[str, dict[int, tuple[int, ...]]] = {}
    for key, shape in shapes.items():
        match = _CONV_KEY.match(key)
        if match:
            convs.setdefault(match[1], {})[int(match[2])] = tuple(shape)
    if "encoder" not in convs or "decoder2" not in convs:
        raise ValueError("no encoder.* and decoder2.* convolution weights found")
    encoder = _block_widths(convs["encoder"], "encoder", final=False)
    decoder = _block_widths(convs["decoder2"], "decoder2", final=True)
    heads = ("amplitude", "phase") if "decoder1" in convs else ("phase",)
    size = input_size or (64 if len(encoder) == 3 else 128)
    spec = ArchitectureSpec(encoder, decoder, heads, size)
    _check_all_shapes(spec, shapes)
    return spec


def _block_widths(convs: dict[int, tuple[int, ...]], name: str, final: bool) -> tuple[int, ...]:
    indices = sorted(convs)
    n_blocks = (len(indices) - (1 if final else 0)) // 2
    if n_blocks < 1:
        raise ValueError(f"{name} has too few convolutions ({len(indices)})")
    widths = []
    for block in range(n_blocks):
        index = MODULES_PER_BLOCK * block
        if index not in convs or index + 2 not in convs:
            raise ValueError(f"{name} lacks the convolutions {index} and {index + 2}")
        widths.append(convs[index][0])
    return tuple(widths)


def _check_all_shapes(spec: ArchitectureSpec, shapes: Mapping[str, Sequence[int]]) -> None:
    expected = spec.parameter_shapes()
    missing = sorted(set(expected) - set(shapes))
    if missing:
        raise ValueError(f"missing weights {', '.join(missing[:4])}")
    unexpected = sorted(set(shapes) - set(expected))
    if unexpected:
        raise ValueError(f"unexpected weights {', '.join(unexpected[:4])}")
    for key, shape in expected.items():
        if tuple(shapes[key]) != shape:
            raise ValueError(f"{key} has shape {tuple(shapes[key])}, expected {shape}")
