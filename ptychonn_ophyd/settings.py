"""The one schema of the inference settings, validated where it enters.

:class:`InferenceSettings` is what every worker does with its frames.  A worker is
given it, with its GPU and its parent, as :class:`ProcessorArgs` (the
``--processor-args`` JSON); a pool is described by :class:`PoolConfig`, which adds the
channels, the number of workers and pvapy's own options.  The ``pool`` command's
options and the ophyd device's configuration signals are made from
:class:`PoolConfig`'s fields, so a new option is one field here plus the code that
uses it.  Every error names the bad key in one line (:func:`describe`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import to_jsonable_python

from ptychonn_ophyd.engines import Backend, Precision
from ptychonn_ophyd.errors import ArgsError
from ptychonn_ophyd.preprocess import PreprocessConfig

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
FrameOutputs = Literal["every", "preview", "none"]
Gpus = Literal["auto"] | tuple[int, ...]


def channel_names(value: str) -> tuple[str, ...]:
    """The PV names of a channel list separated by commas, as pvapy's list options take
    them, without the spaces around each.

    Raises
    ------
    ValueError
        A name is empty; the message names the list.
    """
    names = tuple(name.strip() for name in value.split(","))
    if not all(names):
        raise ValueError(f"{value!r} has an empty channel name")
    return names


class InferenceSettings(BaseModel):
    """What every worker does with the frames it receives."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    model: Path = Field(
        validation_alias=AliasChoices("model", "onnx_mdl"),
        description=".onnx or .pth PtychoNN model (the seed's onnx_mdl is accepted too)",
    )
    backend: Backend = Field("auto", description="inference backend; auto says why it chose")
    precision: Precision = Field("fp32", description="arithmetic on the GPU")
    batch_size: int = Field(
        8,
        ge=1,
        le=4096,
        validation_alias=AliasChoices("batch_size", "bsz"),
        description="largest batch (the seed's bsz is accepted too)",
    )
    batch_timeout: float = Field(
        0.005, gt=0, le=60, description="seconds the first frame of a partial batch waits"
    )
    preprocess: PreprocessConfig = Field(
        PreprocessConfig(), description="crop, bin and threshold applied to every frame"
    )
    outputs: tuple[Output, ...] = Field(
        ("phase",), description='["phase"] or ["phase", "amplitude"]'
    )
    frame_outputs: FrameOutputs = Field(
        "every",
        description="per-frame NTNDArrays on <prefix>:<k>:output beside the batch channel: "
        "every frame (for the stock tools), a preview (the latest result every "
        "preview_period s, for viewers), or none",
    )
    preview_period: float = Field(
        0.25, gt=0, le=60, description="seconds between two preview results"
    )
    warmup_queue_size: int = Field(
        4096,
        ge=1,
        description="frames held while the engine starts or falls behind; frames arriving "
        "when it is full are dropped (dropped: queue_full, the newest)",
    )
    max_wait: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="seconds a frame may wait for inference; a worker that falls behind "
        "drops batches whose frames all waited longer (dropped: stale, the oldest), so its "
        "latency and memory stay bounded",
    )
    stop_drain: float = Field(
        10.0,
        ge=0,
        le=600,
        description="seconds a stopping worker goes on inferring its queued frames; what "
        "is left then is dropped (dropped: stopped)",
    )
    threads: int | None = Field(None, ge=1, description="ONNX Runtime CPU threads")
    swap_dirs: tuple[Path, ...] = Field(
        (),
        description="folders a control-channel configure may load a new model from; "
        "empty: the start model's folder only",
    )

    @field_validator("model")
    @classmethod
    def _model_exists(cls, path: Path) -> Path:
        if not path.is_file():
            raise ValueError(f"no model file at {path}")
        return path

    def allowed_swap_dirs(self) -> tuple[Path, ...]:
        """The folders, resolved, a swapped-in model must lie in (see ``swap_dirs``)."""
        return tuple(p.resolve() for p in self.swap_dirs) or (self.model.resolve().parent,)

    def check_swap(self, model: Path) -> None:
        """Raise :class:`ArgsError` unless ``model``, resolved, lies in an allowed folder:
        any client that reaches PV Access can ask a worker to load a model."""
        path, allowed = model.resolve(), self.allowed_swap_dirs()
        if not any(path.is_relative_to(folder) for folder in allowed):
            folders = ", ".join(str(folder) for folder in allowed)
            raise ArgsError(
                f"model: {path} is outside the folders models may be swapped from "
                f"({folders}); start the workers with swap_dirs naming its folder"
            )

    @field_validator("outputs")
    @classmethod
    def _phase_first(cls, outputs: tuple[str, ...]) -> tuple[str, ...]:
        if "phase" not in outputs or len(set(outputs)) != len(outputs):
            raise ValueError('outputs is ["phase"] or ["phase", "amplitude"]')
        return outputs


class PoolShape(BaseModel):
    """How many workers a pool has in all, on every host, and how frames are dealt to
    them.  A worker is told too, and publishes it, so that a session attaching to
    workers started elsewhere can check they make the pool it expects."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_workers: int = Field(
        1,
        ge=1,
        le=256,
        description="consumer processes in the pool, on every host",
        json_schema_extra={"flag": "workers"},
    )
    distributor_updates: int = Field(8, ge=1, description="consecutive frames per worker")


class ProcessorArgs(PoolShape, InferenceSettings):
    """The ``--processor-args`` JSON of one worker: the settings, its pool, its GPU and
    its parent.

    ``gpu`` is an index, or ``"auto"``: consumer ``k`` uses GPU ``(k - 1) mod count``.
    With ``parent_pid`` set, the worker exits as soon as that process is no longer its
    parent.
    """

    gpu: int | Literal["auto"] = Field("auto", description="GPU index, or auto")
    parent_pid: int | None = Field(None, ge=1, description="exit when this parent is gone")

    @field_validator("gpu")
    @classmethod
    def _gpu_index(cls, gpu: int | str) -> int | str:
        if isinstance(gpu, int) and gpu < 0:
            raise ValueError("a GPU index is 0 or more")
        return gpu

    def engine_device(self, consumer_id: int) -> str:
        """The engine's ``device`` for consumer ``consumer_id`` (``cuda:N``, ``cpu``, ``auto``)."""
        if self.backend == "onnxruntime":
            return "cpu"
        if isinstance(self.gpu, int):
            return f"cuda:{self.gpu}"
        from ptychonn_ophyd.engines.selection import cuda_gpu_count

        return auto_gpu(consumer_id, cuda_gpu_count())


def auto_gpu(consumer_id: int, gpu_count: int) -> str:
    """``gpu: "auto"``: consumer ``k`` on ``cuda:(k - 1) mod count``; ``auto`` without GPUs."""
    return f"cuda:{(consumer_id - 1) % gpu_count}" if gpu_count else "auto"


class ModelUpdate(BaseModel):
    """What the control channel's ``configure`` may change while frames flow."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    model: Path | None = Field(None, validation_alias=AliasChoices("model", "onnx_mdl"))
    batch_timeout: float | None = Field(None, gt=0, le=60)

    @field_validator("model")
    @classmethod
    def _model_exists(cls, path: Path | None) -> Path | None:
        return InferenceSettings._model_exists(path) if path is not None else None


class PoolConfig(PoolShape, InferenceSettings):
    """What a pool runs (a :class:`~ptychonn_ophyd.pool.ConsumerPool` starts it, a
    :class:`~ptychonn_ophyd.pool.RemotePool` attaches to it): the settings of every
    worker, the channels and how frames are shared out.

    ``threads`` (ONNX Runtime's CPU threads) defaults to the cores shared out among the
    workers, so CPU workers do not fight over cores.
    """

    input_channel: str = Field(
        description="the detector's NTNDArray channel, or several separated by commas "
        "(a detector that scatters its frames over them): n_workers / channels workers "
        "read each"
    )
    output_prefix: str = Field(
        "inference", description="worker k publishes <prefix>:<k>:output and its siblings"
    )
    attach: bool = Field(
        False,
        description="the workers run already (each host's share started with ptychonn-ophyd "
        "pool --consumer-ids): find the n_workers under output_prefix, check and use them "
        "instead of starting workers here",
    )
    gpus: Gpus = Field(
        "auto", description='"auto" or GPU indices ("0,1"), dealt round-robin to the workers'
    )
    server_queue_size: int = Field(
        100, ge=0, description="frames the input's server queues per worker"
    )
    receiver_queue_size: int = Field(
        0,
        ge=0,
        description="frames pvapy queues in C++ before process(); 0: process on receipt",
    )
    status_period: float = Field(1.0, gt=0, description="seconds between status updates")
    wait_for_input: bool = Field(
        True, description="start() also waits until every worker hears the input channel"
    )
    log_dir: Path | None = Field(
        None,
        description="folder for worker-<k>.log files, kept; default: a new one under "
        "$PTYCHONN_LOGS or ~/.local/state/ptychonn-ophyd/logs, removed after a clean stop",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="pvapy's log level in the workers"
    )

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpu_list(cls, value: object) -> object:
        """``"auto"``, or indices from ``"0,1"``, ``"0 1"``, one int or a sequence."""
        if isinstance(value, str) and value != "auto":
            value = value.replace(",", " ").split()
        if isinstance(value, int):
            value = (value,)
        return value

    @field_validator("input_channel")
    @classmethod
    def _channel_names(cls, value: str) -> str:
        return ",".join(channel_names(value))

    @model_validator(mode="after")
    def _workers_per_channel(self) -> PoolConfig:
        k = len(self.input_channels)
        if self.n_workers % k:
            raise ValueError(
                f"n_workers ({self.n_workers}) is not a multiple of the {k} input channels: "
                "each channel needs as many workers"
            )
        return self

    @property
    def input_channels(self) -> tuple[str, ...]:
        """The input channels, in the order the detector scatters its frames over them.

        The frames must reach each channel in runs of :attr:`scatter_run` (or one at a
        time, with ``distributor_updates`` 1, as areaDetector's ``NDPluginScatter``
        sends them), so that each worker sees its frames' uniqueIds step as on one
        channel and counts the ones it missed.
        """
        return tuple(self.input_channel.split(","))

    @property
    def scatter_run(self) -> int:
        """Frames a detector scattering over :attr:`input_channels` sends to each in
        turn: one run of ``distributor_updates`` for each of the channel's workers."""
        return self.n_workers // len(self.input_channels) * self.distributor_updates

    def channel_of(self, consumer_id: int) -> str:
        """The input channel of worker ``consumer_id``: the workers ``1..n/k`` read the
        first of ``k`` channels, the next ``n/k`` the second, and so on."""
        channels = self.input_channels
        return channels[(consumer_id - 1) // (self.n_workers // len(channels))]

    def processor_args(self, consumer_id: int, parent_pid: int) -> dict[str, object]:
        """The ``--processor-args`` of worker ``consumer_id``."""
        shared = self.model_dump(mode="json", include=set(ProcessorArgs.model_fields))
        gpu = self.gpus if self.gpus == "auto" else self.gpus[(consumer_id - 1) % len(self.gpus)]
        return {
            **shared,
            "model": str(self.model.resolve()),
            "swap_dirs": [str(folder) for folder in self.allowed_swap_dirs()],
            "threads": self.threads or max(1, (os.cpu_count() or 1) // self.n_workers),
            "gpu": gpu,
            "parent_pid": parent_pid,
        }

    def consumer_options(self, consumer_id: int) -> dict[str, object]:
        """pvapy options of worker ``consumer_id`` beyond the channels and the processor.

        The workers of each input channel are a distributor group of their own, named
        for the channel: pvDatabase's distributor deals a record's updates over every
        client of a group, whichever record they watch, so workers of two channels of
        one IOC (or of two pools) in one group would each lose the updates dealt to the
        others.
        """
        options: dict[str, object] = {
            "report-period": self.status_period,
            "report-stats": "user",
            "server-queue-size": self.server_queue_size,
            "log-level": self.log_level,
        }
        if self.receiver_queue_size:
            options["receiver-queue-size"] = self.receiver_queue_size
        if self.n_workers > 1:
            options["distributor-group"] = re.sub(r"\W", "_", self.channel_of(consumer_id))
            options["distributor-updates"] = self.distributor_updates
            options["oid-offset"] = (self.n_workers - 1) * self.distributor_updates + 1
        return options

    def signal_values(self) -> dict[str, object]:
        """Every setting as a value an ophyd signal can hold and describe.

        Numbers, strings and booleans stay as they are, ``None`` becomes ``""``, and
        nested settings, tuples and paths become JSON text; :meth:`from_signal_values`
        reads them back.
        """
        return {name: signal_value(value) for name, value in self.model_dump().items()}

    @classmethod
    def from_signal_values(cls, values: Mapping[str, object]) -> PoolConfig:
        """The config that :meth:`signal_values` (or a user's ``put``) describes.

        Raises
        ------
        ArgsError
            A value does not fit its setting; the message names it.
        """
        return validated(cls, {k: from_signal_value(v) for k, v in values.items()})


class LiveViewSettings(BaseModel):
    """What the live view of a scan shows (:class:`~ptychonn_ophyd.session.live_view.LiveView`).

    The stitching window itself is an array, given to ``LiveView`` and stored with each
    run so that replay stitches with the same one.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="stitch each run's results as they arrive")
    figure: bool | Literal["auto"] = Field(
        "auto", description="a matplotlib figure; auto: only where there is a display"
    )
    channel: bool = Field(True, description="publish the mosaic on <output_prefix>:mosaic")
    store: bool = Field(True, description="store the final mosaic with the run")
    update_period: float = Field(
        0.25, gt=0, description="seconds between two updates of the figure and channel"
    )
    final_solve: float = Field(
        30.0,
        gt=0,
        description="seconds the end of a run may spend solving the final image's offsets",
    )


def signal_value(value: object) -> object:
    """A setting as an ophyd signal can hold and describe it (see ``signal_values``)."""
    plain = to_jsonable_python(value)
    if plain is None:
        return ""
    if isinstance(plain, dict | list):
        return json.dumps(plain)
    return plain


def from_signal_value(value: object) -> object:
    """A setting as :func:`signal_value` wrote it (a signal's value, or a run's pool
    facts), back as its plain value: ``""`` as ``None``, JSON text parsed."""
    if value == "":
        return None
    if isinstance(value, str) and value[:1] in "[{":
        return json.loads(value)
    return value


def parse_args(config: Mapping[str, object]) -> ProcessorArgs:
    """Validate a pvapy processor configuration dictionary, ignoring pvapy's own keys."""
    return validated(ProcessorArgs, config)


def parse_update(config: Mapping[str, object]) -> ModelUpdate:
    """Validate the arguments of a ``configure`` command, ignoring pvapy's own keys."""
    return validated(ModelUpdate, config)


def validated(model: type[BaseModel], config: Mapping[str, Any]) -> Any:
    """``model`` from ``config`` (pvapy's own keys left out), or :class:`ArgsError`."""
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
        where = ".".join(str(part) for part in error["loc"])
        why = error["msg"].removeprefix("Value error, ")
        if not where:  # a check of several settings together names them itself
            problems.append(why)
        elif error["type"] == "extra_forbidden":
            unknown = True
            problems.append(f"unknown key {where!r}")
        elif error["type"] == "missing":
            problems.append(f"{where!r} is required")
        else:
            problems.append(f"{where}: {why}")
    message = "; ".join(problems)
    if unknown:
        message += f" (known keys: {', '.join(model.model_fields)})"
    return message
