"""Processor arguments: what ``--processor-args`` may say, checked once at start."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..engines import Precision
from ..preprocess import PreprocessConfig

PVAPY_KEYS = frozenset(
    {
        "processorId",
        "inputChannel",
        "inputMode",
        "inputArgs",
        "outputChannel",
        "outputMode",
        "outputArgs",
        "objectIdField",
        "skipInitialUpdates",
        "objectIdOffset",
        "nSequentialUpdates",
        "fieldRequest",
        "receiverQueueSize",
    }
)
"""Keys pvapy itself puts into the processor's configuration dictionary."""

Output = Literal["phase", "amplitude"]


class ProcessorArgs(BaseModel):
    """The ``--processor-args`` JSON of the PtychoNN processor.

    Attributes
    ----------
    model
        ``.onnx`` or ``.pth`` PtychoNN model (the seed's ``onnx_mdl`` is accepted too).
    backend, precision, threads
        As in :class:`~ptychonn_ophyd.engines.EngineConfig`.
    batch_size
        Largest batch (the seed's ``bsz`` is accepted too).
    batch_timeout
        Seconds the first frame of a partial batch waits before the batch is inferred.
    gpu
        GPU index, or ``"auto"``: consumer ``k`` uses GPU ``(k - 1) mod count``.
    preprocess
        Crop, bin and threshold (:class:`~ptychonn_ophyd.preprocess.PreprocessConfig`).
    outputs
        ``["phase"]`` or ``["phase", "amplitude"]``.
    warmup_queue_size
        Frames held while the engine starts or falls behind (rounded up to whole
        batches); frames beyond it are dropped and counted.
    parent_pid
        When set, the worker exits as soon as this process is no longer its parent.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    model: Path = Field(validation_alias=AliasChoices("model", "onnx_mdl"))
    backend: Literal["auto", "tensorrt", "torch", "onnxruntime"] = "auto"
    precision: Precision = "fp32"
    batch_size: int = Field(8, ge=1, le=4096, validation_alias=AliasChoices("batch_size", "bsz"))
    batch_timeout: float = Field(0.005, gt=0, le=60)
    gpu: int | Literal["auto"] = "auto"
    preprocess: PreprocessConfig = PreprocessConfig()
    outputs: tuple[Output, ...] = ("phase",)
    warmup_queue_size: int = Field(4096, ge=1)
    threads: int | None = Field(None, ge=1)
    parent_pid: int | None = Field(None, ge=1)

    @field_validator("model")
    @classmethod
    def _model_exists(cls, path: Path) -> Path:
        return _existing_file(path)

    @field_validator("gpu")
    @classmethod
    def _gpu_index(cls, gpu: int | str) -> int | str:
        if isinstance(gpu, int) and gpu < 0:
            raise ValueError("a GPU index is 0 or more")
        return gpu

    @field_validator("outputs")
    @classmethod
    def _phase_first(cls, outputs: tuple[str, ...]) -> tuple[str, ...]:
        if "phase" not in outputs or len(set(outputs)) != len(outputs):
            raise ValueError('outputs is ["phase"] or ["phase", "amplitude"]')
        return outputs

    def engine_device(self, consumer_id: int) -> str:
        """The engine's ``device`` for consumer ``consumer_id`` (``cuda:N``, ``cpu``, ``auto``)."""
        if self.backend == "onnxruntime":
            return "cpu"
        if isinstance(self.gpu, int):
            return f"cuda:{self.gpu}"
        from ..engines.selection import cuda_gpu_count

        count = cuda_gpu_count()
        return f"cuda:{(consumer_id - 1) % count}" if count else "auto"


class ModelUpdate(BaseModel):
    """What the control channel's ``configure`` may change while frames flow."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    model: Path | None = Field(None, validation_alias=AliasChoices("model", "onnx_mdl"))
    batch_timeout: float | None = Field(None, gt=0, le=60)

    @field_validator("model")
    @classmethod
    def _model_exists(cls, path: Path | None) -> Path | None:
        return _existing_file(path) if path is not None else None


def _existing_file(path: Path) -> Path:
    if not path.is_file():
        raise ValueError(f"no model file at {path}")
    return path


class ArgsError(ValueError):
    """Processor arguments that cannot be used; the message is one line for the user."""


def parse_args(config: Mapping[str, object]) -> ProcessorArgs:
    """Validate a pvapy processor configuration dictionary, ignoring pvapy's own keys."""
    return _validated(ProcessorArgs, config)


def parse_update(config: Mapping[str, object]) -> ModelUpdate:
    """Validate the arguments of a ``configure`` command, ignoring pvapy's own keys."""
    return _validated(ModelUpdate, config)


def _validated(model: type[BaseModel], config: Mapping[str, object]):
    ours = {k: v for k, v in config.items() if k not in PVAPY_KEYS}
    try:
        return model.model_validate(ours)
    except ValidationError as err:
        raise ArgsError(describe(err, model)) from None


def describe(err: ValidationError, model: type[BaseModel]) -> str:
    """One line naming every bad key of ``err`` and what is wrong with it."""
    problems = []
    unknown = False
    for error in err.errors():
        where = ".".join(str(part) for part in error["loc"]) or "arguments"
        if error["type"] == "extra_forbidden":
            unknown = True
            problems.append(f"unknown key {where!r}")
        elif error["type"] == "missing":
            problems.append(f"{where!r} is required")
        else:
            problems.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    message = "; ".join(problems)
    if unknown:
        message += f" (known keys: {', '.join(model.model_fields)})"
    return message
