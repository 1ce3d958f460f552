"""Opening PtychoNN model files: PyTorch ``.pth`` state_dicts and ONNX graphs.

:func:`open_model` validates a file once and describes it as a :class:`ModelFile`;
engines then ask it for what they run (ONNX bytes or a ``state_dict``).  Only
``.pth`` files and ONNX export need PyTorch.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ptychonn_ophyd.errors import ModelError
from ptychonn_ophyd.models.architecture import ArchitectureSpec, spec_from_shapes
from ptychonn_ophyd.models.onnx_graph import OnnxGraph, read_onnx


@dataclass(frozen=True)
class ModelFile:
    """A validated PtychoNN model file.

    Attributes
    ----------
    path
        Where it was read from.
    format
        ``"pth"`` or ``"onnx"``.
    sha256
        Hash of the file's bytes; results carry its first 12 digits as the model id.
    input_shape
        ``(H, W)`` of one frame.
    heads
        ``("phase",)`` or ``("amplitude", "phase")``.
    spec
        The architecture, when the weights have the PtychoNN layout (always for
        ``.pth``; for ONNX files whose initialisers keep the PyTorch names).
    static_batch
        The fixed batch of an ONNX graph, or ``None`` when the batch is dynamic.
    """

    path: Path
    format: str
    sha256: str
    input_shape: tuple[int, int]
    heads: tuple[str, ...]
    spec: ArchitectureSpec | None
    static_batch: int | None
    graph: OnnxGraph | None = None

    @property
    def model_hash(self) -> str:
        """Short id of the weights, written into every result."""
        return short_hash(self.sha256)

    def state_dict(self) -> dict[str, np.ndarray]:
        """The weights under PtychoNN's key names, as float32 numpy arrays."""
        if self.format == "onnx":
            if self.spec is None:
                raise ModelError(self.path, "ONNX weights do not use PtychoNN's layer names")
            return {k: v for k, v in self.graph.initializers.items() if k in _keys(self.spec)}
        return {k: v.numpy() for k, v in _read_pth(self.path).items()}

    def onnx_bytes(self) -> bytes:
        """The model as ONNX: the file itself, or a dynamic-batch export of a ``.pth``."""
        if self.format == "onnx":
            return self.path.read_bytes()
        from ptychonn_ophyd.models.export import export_onnx_bytes

        return export_onnx_bytes(self.spec, self.state_dict())


def export_onnx(source: str | Path, destination: str | Path) -> Path:
    """Export the checkpoint at ``source`` to a dynamic-batch ONNX file at ``destination``."""
    from ptychonn_ophyd.models.export import export_onnx_bytes

    model = open_model(source)
    destination = Path(destination)
    destination.write_bytes(export_onnx_bytes(model.spec, model.state_dict()))
    return destination


_LAYER_PREFIXES = ("encoder.", "decoder1.", "decoder2.")


def _keys(spec: ArchitectureSpec) -> set[str]:
    return set(spec.parameter_shapes())


def short_hash(sha256: str) -> str:
    """A model's hash (:attr:`ModelFile.model_hash`) from its file's SHA-256."""
    return sha256[:12]


def model_hash_of(path: str | Path) -> str:
    """The hash :func:`open_model` would give the file at ``path``, without reading it as
    a model (no ONNX or PyTorch import: what a session checks its workers' models by).

    Raises
    ------
    ModelError
        There is no file at ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(path, "no such model file")
    return short_hash(hashlib.sha256(path.read_bytes()).hexdigest())


def open_model(path: str | Path, input_size: int | None = None) -> ModelFile:
    """Read and validate a PtychoNN model file, picking its architecture from its shapes.

    Parameters
    ----------
    path
        A ``.pth``/``.pt`` state_dict or an ``.onnx`` file.
    input_size
        Frame side for a ``.pth`` file when it differs from the variant's default.

    Raises
    ------
    ModelError
        The file is missing, truncated, or not a PtychoNN model; the message names it.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(path, "no such model file")
    data = path.read_bytes()
    if not data:
        raise ModelError(path, "the file is empty")
    sha256 = hashlib.sha256(data).hexdigest()
    if path.suffix.lower() == ".onnx":
        return _open_onnx(path, data, sha256)
    if path.suffix.lower() in {".pth", ".pt"}:
        return _open_pth(path, sha256, input_size)
    raise ModelError(path, "unknown model format: expected a .pth, .pt or .onnx file")


def _open_onnx(path: Path, data: bytes, sha256: str) -> ModelFile:
    graph = read_onnx(path, data)
    shapes = {k: v.shape for k, v in graph.initializers.items() if k.startswith(_LAYER_PREFIXES)}
    try:
        spec = spec_from_shapes(shapes, input_size=graph.input_shape[0])
    except ValueError:
        spec = None
    return ModelFile(
        path, "onnx", sha256, graph.input_shape, graph.heads, spec, graph.static_batch, graph
    )


def _open_pth(path: Path, sha256: str, input_size: int | None) -> ModelFile:
    state = _read_pth(path)
    try:
        spec = spec_from_shapes({k: tuple(v.shape) for k, v in state.items()}, input_size)
    except ValueError as err:
        raise ModelError(path, f"not a PtychoNN checkpoint: {err}") from None
    size = (spec.input_size, spec.input_size)
    return ModelFile(path, "pth", sha256, size, spec.heads, spec, None)


def _read_pth(path: Path) -> dict:
    try:
        import torch
    except ImportError:
        raise ModelError(
            path, "reading .pth files needs PyTorch: pip install 'ptychonn-ophyd[torch]'"
        ) from None
    data = path.read_bytes()
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # torch raises many types, with pages of text, for a foreign file
        raise ModelError(path, _why_not_a_checkpoint(data)) from None
    return _unwrap_state_dict(path, obj)


_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = 0x80
"""First bytes of PyTorch's two formats: a zip archive (since 1.6) or a pickle (before)."""


def _why_not_a_checkpoint(data: bytes) -> str:
    """Say what a file torch could not load is not, from its first bytes.

    torch's own messages (an unpickler opcode, a miniz error, a paragraph about
    ``weights_only``) do not tell a user whether the file is damaged or something else.
    """
    if data.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(io.BytesIO(data)):
            return "a truncated or damaged PyTorch checkpoint (a zip archive without its end)"
        return "a zip archive, but not a PyTorch checkpoint (no tensors readable inside)"
    if data[0] == _PICKLE_PROTO:
        return (
            "a pickle, but not a PyTorch checkpoint of tensors only "
            "(save the model's state_dict with torch.save)"
        )
    return "not a PyTorch checkpoint (no zip archive or pickle inside)"


def _unwrap_state_dict(path: Path, obj: object) -> dict:
    import torch

    if isinstance(obj, dict):
        for key in ("model_state_dict", "state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(path, "not a PtychoNN checkpoint: expected a state_dict of tensors")
    return {k.removeprefix("module."): v.float() for k, v in obj.items()}
