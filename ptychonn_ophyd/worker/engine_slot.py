"""The engine a worker infers with: built in the background, swapped between batches."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from ptychonn_ophyd.engines import InferenceEngine
from ptychonn_ophyd.models import ModelFile

EngineFactory = Callable[[ModelFile], InferenceEngine]


def warmed_up(engine: InferenceEngine) -> InferenceEngine:
    """Run ``engine`` once at its largest and smallest batch so first frames pay no set-up."""
    h, w = engine.input_shape
    for n in sorted({engine.max_batch, 1}, reverse=True):
        engine.infer(np.zeros((n, h, w), np.float32))
    return engine


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
        except Exception as err:  # any failure to build an engine ends the worker
            self.error = f"cannot start the engine for {model.path}: {err}"
            self.failed.set()
            return
        self.load_seconds = time.perf_counter() - began
        self.ready.set()
