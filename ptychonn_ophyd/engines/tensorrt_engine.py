"""TensorRT 10 with device memory and streams from cuda-python.

The seed used pycuda, whose context handling fights PyTorch and CuPy in one process
and which has no wheels for current CUDA; cuda-python is NVIDIA's own binding of the
runtime API, ships wheels, and only hands out raw pointers, which is all TensorRT's
``set_tensor_address`` needs.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
from pathlib import Path

import numpy as np

from ptychonn_ophyd.engines.base import EngineConfig, InferenceEngine, Prediction
from ptychonn_ophyd.errors import BackendUnavailable
from ptychonn_ophyd.models import ModelFile
from ptychonn_ophyd.models.onnx_graph import read_onnx, with_dynamic_batch


def import_tensorrt():
    """The ``tensorrt`` and cuda-python runtime modules, or :class:`BackendUnavailable`."""
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailable("TensorRT is not installed (pip install tensorrt)") from None
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError:
            raise BackendUnavailable(
                "cuda-python is not installed (pip install cuda-python)"
            ) from None
    if int(trt.__version__.split(".")[0]) < 10:
        raise BackendUnavailable(f"TensorRT {trt.__version__} found; 10 or newer is needed")
    return trt, cudart


def _check(result):
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA runtime error {err}")
    return values[0] if len(values) == 1 else values


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ptychonn_ophyd" / "tensorrt"


class TensorRTEngine(InferenceEngine):
    """Builds (or loads from cache) a TensorRT engine for batches 1 to ``max_batch``.

    The cache key is the model hash, GPU name, TensorRT version, precision and maximum
    batch, so a second start deserialises in seconds instead of rebuilding.
    """

    backend = "tensorrt"

    def __init__(self, model: ModelFile, config: EngineConfig) -> None:
        super().__init__(model, config)
        trt, cudart = import_tensorrt()
        self._trt, self._cudart = trt, cudart
        self._device = int(config.device.split(":")[-1]) if ":" in config.device else 0
        _check(cudart.cudaSetDevice(self._device))
        props = _check(cudart.cudaGetDeviceProperties(self._device))
        self.gpu_name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
        self._logger = trt.Logger(trt.Logger.WARNING)
        onnx_bytes = with_dynamic_batch(model.onnx_bytes())
        self._graph = read_onnx(model.path, onnx_bytes)
        plan = self._cached_plan(onnx_bytes)
        self._engine = trt.Runtime(self._logger).deserialize_cuda_engine(plan)
        self._context = self._engine.create_execution_context()
        self._stream = _check(cudart.cudaStreamCreate())
        self._allocate()

    @property
    def description(self) -> str:
        version = self._trt.__version__
        return f"tensorrt {version} cuda:{self._device} ({self.gpu_name}) {self.config.precision}"

    def cache_path(self) -> Path:
        key = "|".join(
            [
                self.model.sha256,
                self.gpu_name,
                self._trt.__version__,
                self.config.precision,
                str(self.max_batch),
            ]
        )
        digest = hashlib.sha256(key.encode()).hexdigest()[:24]
        base = Path(self.config.cache_dir) if self.config.cache_dir else default_cache_dir()
        return base / f"{digest}.engine"

    def _cached_plan(self, onnx_bytes: bytes) -> bytes:
        path = self.cache_path()
        if path.is_file():
            return path.read_bytes()
        plan = self._build(onnx_bytes)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(plan)
        tmp.replace(path)
        return plan

    def _build(self, onnx_bytes: bytes) -> bytes:
        trt = self._trt
        builder = trt.Builder(self._logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse(onnx_bytes):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendUnavailable(f"TensorRT cannot parse {self.model.path}: {errors}")
        config = builder.create_builder_config()
        if self.config.precision in ("fp16", "bf16"):
            flag = trt.BuilderFlag.FP16 if self.config.precision == "fp16" else trt.BuilderFlag.BF16
            config.set_flag(flag)
        if self.config.precision == "fp32":
            config.clear_flag(trt.BuilderFlag.TF32)
        h, w = self.input_shape
        profile = builder.create_optimization_profile()
        opt = min(self.max_batch, 8)
        profile.set_shape(
            self._graph.input_name, (1, 1, h, w), (opt, 1, h, w), (self.max_batch, 1, h, w)
        )
        config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise BackendUnavailable(f"TensorRT failed to build an engine for {self.model.path}")
        return bytes(plan)

    def _allocate(self) -> None:
        cudart = self._cudart
        h, w = self.input_shape
        frame_bytes = h * w * 4
        self._names = [self._graph.input_name, *self._graph.output_heads]
        self._device_ptrs = {}
        self._host = {}
        for name in self._names:
            nbytes = self.max_batch * frame_bytes
            self._device_ptrs[name] = _check(cudart.cudaMalloc(nbytes))
            host_ptr = _check(cudart.cudaMallocHost(nbytes))
            buffer = (ctypes.c_float * (self.max_batch * h * w)).from_address(int(host_ptr))
            self._host[name] = (host_ptr, np.frombuffer(buffer, np.float32).reshape(-1, h, w))
            self._context.set_tensor_address(name, int(self._device_ptrs[name]))

    def _run(self, frames: np.ndarray) -> Prediction:
        cudart = self._cudart
        n = len(frames)
        nbytes = frames.nbytes
        h, w = self.input_shape
        input_name = self._graph.input_name
        self._host[input_name][1][:n] = frames
        self._context.set_input_shape(input_name, (n, 1, h, w))
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(
            cudart.cudaMemcpyAsync(
                self._device_ptrs[input_name], self._host[input_name][0], nbytes, h2d, self._stream
            )
        )
        if not self._context.execute_async_v3(int(self._stream)):
            raise RuntimeError("TensorRT execution failed")
        for name in self._graph.output_heads:
            _check(
                cudart.cudaMemcpyAsync(
                    self._host[name][0], self._device_ptrs[name], nbytes, d2h, self._stream
                )
            )
        _check(cudart.cudaStreamSynchronize(self._stream))
        heads = {
            head: self._host[name][1][:n].copy() for name, head in self._graph.output_heads.items()
        }
        return Prediction(heads["phase"], heads.get("amplitude"))

    def close(self) -> None:
        cudart = getattr(self, "_cudart", None)
        if cudart is None or not hasattr(self, "_host"):
            return
        for ptr in self._device_ptrs.values():
            cudart.cudaFree(ptr)
        for host_ptr, _ in self._host.values():
            cudart.cudaFreeHost(host_ptr)
        cudart.cudaStreamDestroy(self._stream)
        self._host = {}
        self._device_ptrs = {}
