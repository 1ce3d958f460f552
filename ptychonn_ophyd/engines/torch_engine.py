"""PyTorch: CUDA graphs on the GPU, or plain eager mode on the CPU."""

from __future__ import annotations

import numpy as np

from ptychonn_ophyd.engines.base import EngineConfig, InferenceEngine, Prediction
from ptychonn_ophyd.errors import BackendUnavailable, ModelError
from ptychonn_ophyd.models import ModelFile, build_torch_model

PIPELINE_CHUNK = 128
"""Frames per graph launch: large stacks run as chunks, so copying chunk ``i + 1`` into
pinned memory on the CPU overlaps the GPU's work on chunk ``i``."""


def batch_buckets(max_batch: int) -> list[int]:
    """Batch sizes that get their own CUDA graph: powers of two up to the chunk size."""
    largest = min(max_batch, PIPELINE_CHUNK)
    sizes = {largest}
    size = 1
    while size < largest:
        sizes.add(size)
        size *= 2
    return sorted(sizes)


class TorchEngine(InferenceEngine):
    """Runs PtychoNN-layout weights in PyTorch.

    On CUDA every batch bucket is captured once as a CUDA graph (the small model is
    launch-bound without them), frames move through pinned host buffers with
    asynchronous copies, and convolutions use channels-last memory in the chosen
    precision.  A stack of ``n`` frames runs in the smallest bucket that holds it.
    """

    backend = "torch"

    def __init__(self, model: ModelFile, config: EngineConfig) -> None:
        super().__init__(model, config)
        try:
            import torch
        except ImportError:
            raise BackendUnavailable(
                "PyTorch is not installed: pip install 'ptychonn-ophyd[torch]'"
            ) from None
        if model.spec is None:
            raise ModelError(model.path, "the torch backend needs PtychoNN layer names")
        self._device = torch.device(_resolve_device(torch, config.device))
        net = build_torch_model(model.spec, model.state_dict())
        if self._device.type == "cuda":
            self._runner = _CudaGraphRunner(net, self._device, config, model.input_shape)
        else:
            if config.precision in ("fp16", "bf16"):
                raise BackendUnavailable(f"{config.precision} needs CUDA; the CPU runs fp32")
            self._runner = _EagerRunner(net)

    @property
    def description(self) -> str:
        if self._device.type == "cuda":
            import torch

            name = torch.cuda.get_device_name(self._device)
            return f"torch {self._device} ({name}) {self.config.precision}, CUDA graphs"
        return "torch CPU fp32"

    def _run(self, frames: np.ndarray) -> Prediction:
        heads = self._runner(frames)
        return Prediction(heads[-1], heads[0] if len(heads) == 2 else None)

    def close(self) -> None:
        self._runner = None


def _resolve_device(torch, device: str) -> str:
    if device == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailable(f"device {device} asked for, but PyTorch sees no CUDA GPU")
    return device


class _EagerRunner:
    def __init__(self, net) -> None:
        self._net = net

    def __call__(self, frames: np.ndarray) -> list[np.ndarray]:
        import torch

        with torch.inference_mode():
            outputs = self._net(torch.from_numpy(frames)[:, None])
        return [out[:, 0].numpy() for out in outputs]


class _CudaGraphRunner:
    """One captured graph per batch bucket, fed from pinned memory in chunks.

    Results are copied straight from the device into pinned arrays taken from PyTorch's
    caching host allocator and handed out as numpy views: no host-side copy of the output.
    """

    def __init__(self, net, device, config: EngineConfig, shape: tuple[int, int]) -> None:
        import torch

        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(config.precision, torch.float32)
        allow_tf32 = config.precision == "tf32"
        torch.backends.cudnn.allow_tf32 = allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        torch.backends.cudnn.benchmark = True
        self._torch = torch
        self._device = device
        self._shape = shape
        self._net = net.to(device=device, dtype=dtype, memory_format=torch.channels_last)
        self._dtype = dtype
        self._n_heads = len(net.spec.heads)
        self._pinned_in = torch.zeros((config.max_batch, 1, *shape), pin_memory=True)
        self._pinned_in_np = self._pinned_in.numpy()[:, 0]
        self._pool = torch.cuda.graph_pool_handle()
        # A blocking event sleeps the waiting thread; a stream synchronise spins a core.
        self._done = torch.cuda.Event(blocking=True)
        self._graphs = {b: self._capture(b, shape) for b in batch_buckets(config.max_batch)}
        self._buckets = sorted(self._graphs)
        self._chunk = self._buckets[-1]

    def _forward(self, frames):
        x = frames.to(self._dtype).contiguous(memory_format=self._torch.channels_last)
        return [out[:, 0].float() for out in self._net(x)]

    def _capture(self, batch: int, shape: tuple[int, int]):
        torch = self._torch
        static_in = torch.zeros((batch, 1, *shape), device=self._device)
        with torch.cuda.device(self._device), torch.inference_mode():
            warm = torch.cuda.Stream(self._device)
            warm.wait_stream(torch.cuda.current_stream(self._device))
            with torch.cuda.stream(warm):
                for _ in range(3):
                    self._forward(static_in)
            torch.cuda.current_stream(self._device).wait_stream(warm)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                static_out = self._forward(static_in)
        return graph, static_in, static_out

    def __call__(self, frames: np.ndarray) -> list[np.ndarray]:
        torch = self._torch
        n = len(frames)
        results = [torch.empty((n, *self._shape), pin_memory=True) for _ in range(self._n_heads)]
        with torch.cuda.device(self._device):
            for start in range(0, n, self._chunk):
                stop = min(start + self._chunk, n)
                self._pinned_in_np[start:stop] = frames[start:stop]
                self._launch(start, stop, results)
            self._done.record()
            self._done.synchronize()
        return [r.numpy() for r in results]

    def _launch(self, start: int, stop: int, results) -> None:
        """Queue copy-in, graph and copy-out of one chunk; the CPU does not wait."""
        size = stop - start
        batch = next(b for b in self._buckets if b >= size)
        graph, static_in, static_out = self._graphs[batch]
        static_in[:size].copy_(self._pinned_in[start:stop], non_blocking=True)
        graph.replay()
        for result, out in zip(results, static_out, strict=True):
            result[start:stop].copy_(out[:size], non_blocking=True)
