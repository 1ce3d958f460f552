"""ONNX Runtime on the CPU: the backend that runs everywhere."""

from __future__ import annotations

import numpy as np

from ptychonn_ophyd.engines.base import EngineConfig, InferenceEngine, Prediction
from ptychonn_ophyd.errors import BackendUnavailable
from ptychonn_ophyd.models import ModelFile
from ptychonn_ophyd.models.onnx_graph import read_onnx


class OnnxRuntimeEngine(InferenceEngine):
    """Runs the ONNX form of a model with ONNX Runtime's CPU provider.

    A graph with a static batch ``B`` takes stacks of exactly ``B``: shorter stacks
    are padded with zeros and the padding is dropped from the results.
    """

    backend = "onnxruntime"

    def __init__(self, model: ModelFile, config: EngineConfig) -> None:
        super().__init__(model, config)
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise BackendUnavailable(f"onnxruntime is not installed ({err})") from None
        options = ort.SessionOptions()
        if config.threads:
            options.intra_op_num_threads = config.threads
        onnx_bytes = model.onnx_bytes()
        self._graph = model.graph or read_onnx(model.path, onnx_bytes)
        self._session = ort.InferenceSession(
            onnx_bytes, options, providers=["CPUExecutionProvider"]
        )
        self._static_batch = self._graph.static_batch
        self._outputs = list(self._graph.output_heads)

    @property
    def description(self) -> str:
        threads = self.config.threads or "default"
        return f"onnxruntime CPU fp32, {threads} threads"

    def close(self) -> None:
        self._session = None

    def _run(self, frames: np.ndarray) -> Prediction:
        n = len(frames)
        step = self._static_batch or n
        chunks = [self._run_chunk(frames[i : i + step], step) for i in range(0, n, step)]
        heads = {
            head: np.concatenate([c[name] for c in chunks])
            for name, head in self._graph.output_heads.items()
        }
        return Prediction(heads["phase"], heads.get("amplitude"))

    def _run_chunk(self, frames: np.ndarray, step: int) -> dict[str, np.ndarray]:
        n = len(frames)
        batch = frames[:, None]
        if n < step:
            batch = np.zeros((step, 1, *self.input_shape), np.float32)
            batch[:n, 0] = frames
        values = self._session.run(self._outputs, {self._graph.input_name: batch})
        return {name: v[:n, 0] for name, v in zip(self._outputs, values, strict=True)}
