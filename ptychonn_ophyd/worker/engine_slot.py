"""The engine a worker infers with: built in the background, swapped between batches."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from ptychonn_ophyd.engines import InferenceEngine, Prediction
from ptychonn_ophyd.errors import ModelError
from ptychonn_ophyd.models import ModelFile

EngineFactory = Callable[[ModelFile], InferenceEngine]


def warmed_up(engine: InferenceEngine) -> InferenceEngine:
    """Run ``engine`` once at its largest and smallest batch so first frames pay no set-up.

    The probe batches also check what the model gives: one image of the frame's shape
    per frame and head.  A model that does not (say 128x128 in, 64x64 out) is refused
    here, at start and on a swap, before a result could claim the wrong dimensions.
    The engine is closed when it is refused.

    Raises
    ------
    ModelError
        The model's results do not have its input's shape; the message names both.
    """
    h, w = engine.input_shape
    try:
        for n in sorted({engine.max_batch, 1}, reverse=True):
            _check_output_shape(engine, n, engine.infer(np.zeros((n, h, w), np.float32)))
    except BaseException:
        engine.close()
        raise
    return engine


def _check_output_shape(engine: InferenceEngine, n: int, prediction: Prediction) -> None:
    expected = (n, *engine.input_shape)
    for head, values in (("phase", prediction.phase), ("amplitude", prediction.amplitude)):
        if values is not None and tuple(values.shape) != expected:
            raise ModelError(
                engine.model.path,
                f"takes {_shape(engine.input_shape)} frames but gives {head} results of "
                f"{_shape(values.shape[1:])} (for a batch of {n}); a PtychoNN model's results "
                "have its input's shape",
            )


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape)) or "scalar"


class EngineSlot:
    """Holds the engine of one worker.

    :meth:`load` builds the first engine in a thread of its own, so frames can queue
    meanwhile; :meth:`stage` builds a replacement in the calling thread and the inference
    thread picks it up at its next :meth:`current`, between two batches, so no frame
    waits for a model swap.
    """

    def __init__(self, factory: EngineFactory) -> None:
        self._factory = factory
        self._engine: InferenceEngine | None = None
        self._staged: InferenceEngine | None = None
        self._lock = threading.Lock()
        self.ready = threading.Event()
        self.failed = threading.Event()
        self.error = ""
        self.load_seconds = 0.0
        """How long :meth:`load` took to build and warm up the first engine."""

    def load(self, model: ModelFile) -> None:
        """Build the engine for ``model`` in the background, then set ``ready`` or ``failed``."""
        threading.Thread(target=self._load, args=(model,), name="engine-load", daemon=True).start()

    def stage(self, model: ModelFile) -> InferenceEngine:
        """Build an engine for ``model`` now and make it the next batch's engine."""
        engine = warmed_up(self._factory(model))
        with self._lock:
            previous, self._staged = self._staged, engine
        if previous is not None:
            previous.close()
        return engine

    def current(self) -> InferenceEngine:
        """The engine for the next batch, after closing the one a staged engine replaces."""
        if self._staged is not None:
            with self._lock:
                old, self._engine, self._staged = self._engine, self._staged, None
            if old is not None:
                old.close()
        return self._engine

    @property
    def engine(self) -> InferenceEngine | None:
        """The engine of the next batch, a staged one included; ``None`` before it is ready.

        After :meth:`close` it is closed but still describes itself.
        """
        return self._staged or self._engine

    def close(self) -> None:
        """Close the engines held; :attr:`engine` still describes the last one."""
        with self._lock:
            engines, self._staged = (self._engine, self._staged), None
        for engine in engines:
            if engine is not None:
                engine.close()

    def _load(self, model: ModelFile) -> None:
        began = time.perf_counter()
        try:
            self._engine = warmed_up(self._factory(model))
        except ModelError as err:  # its message names the file already
            self.error = f"cannot start the engine: {err}"
            self.failed.set()
            return
        except Exception as err:  # any failure to build an engine ends the worker
            self.error = f"cannot start the engine for {model.path}: {err}"
            self.failed.set()
            return
        self.load_seconds = time.perf_counter() - began
        self.ready.set()
