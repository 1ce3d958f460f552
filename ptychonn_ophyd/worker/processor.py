"""The pvapy processor that runs PtychoNN on every frame of an areaDetector stream.

It runs under the stock ``pvapy-hpc-consumer``::

    pvapy-hpc-consumer --input-channel ad:image \\
        --control-channel 'inference:*:control' --status-channel 'inference:*:status' \\
        --output-channel 'inference:*:output' \\
        --processor-class ptychonn_ophyd.processor.InferPtychoNNImageProcessor \\
        --processor-args '{"model": "ptychonn.onnx", "batch_size": 8}' \\
        --n-consumers 4 --distributor-updates 8 --disable-curses

pvapy's monitor thread calls :meth:`~InferPtychoNNImageProcessor.process` for each
frame, which preprocesses it straight into a preallocated batch buffer and keeps a copy
of the received PV; an inference thread infers whole batches (a partial one after
``batch_timeout``), reads each frame's uniqueId, time and position from its copy, and
publishes each batch as one update of ``<prefix>:<k>:batch``
(:class:`~ptychonn_ophyd.wire.ResultBatch`), and, as ``frame_outputs`` asks, one
NTNDArray per frame on ``<prefix>:<k>:output`` for every frame, a preview, or none.
Every frame ends up inferred, dropped or rejected, and counted.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from time import perf_counter

import numpy as np
import psutil
from pvapy.hpc.adImageProcessor import AdImageProcessor
from pvapy.utility.operationMode import OperationMode

from ptychonn_ophyd.engines import EngineConfig, InferenceEngine, create_engine
from ptychonn_ophyd.errors import ArgsError, FrameRejected, ModelError
from ptychonn_ophyd.models import ModelFile, open_model
from ptychonn_ophyd.moments import frame_moments
from ptychonn_ophyd.preprocess import Preprocessor
from ptychonn_ophyd.settings import ProcessorArgs, parse_args, parse_update
from ptychonn_ophyd.throttle import Throttle
from ptychonn_ophyd.wire import (
    BATCH_CHANNEL,
    FRAME_TAGS,
    INPUT_MOMENT_FIELDS,
    STATS_PVA_TYPES,
    ResultBatch,
    read_frame_tags,
    sibling_channel,
)
from ptychonn_ophyd.worker.batching import BatchQueue
from ptychonn_ophyd.worker.engine_slot import EngineSlot
from ptychonn_ophyd.worker.frames import NoFrameYet, decode_frame
from ptychonn_ophyd.worker.output import BatchRecord, FrameOutputGate, OutputRecord, ResultBuilder
from ptychonn_ophyd.worker.stats import FrameCounts

IN_FLIGHT_WAIT = 5.0
"""Seconds a stopping worker whose ``stop_drain`` ran out still waits for the batch its
engine is inferring; an engine slower than that is taken as hung, and its batch's frames
are counted as dropped (``stopped``)."""

SWITCH_INTERVAL = 5e-4
"""Seconds the inference thread may hold the GIL while pvAccess's receive thread waits
for it (Python's default is 5 ms): every frame needs the GIL on arrival, and a frame
waiting for it is a frame not read from the socket.  Measured on the H200 host, one
worker, pipeline-only: 4,125 frames/s lossless at 5 ms, 4,500 at 0.5 ms (BENCHMARKS.md,
version 5)."""


class InferPtychoNNImageProcessor(AdImageProcessor):
    """PtychoNN inference on NTNDArray frames, published by the batch and by the frame.

    Parameters
    ----------
    configDict
        pvapy's processor configuration: the ``--processor-args`` JSON, validated as
        :class:`~ptychonn_ophyd.settings.ProcessorArgs`, plus pvapy's own keys.
        Bad arguments end the worker at start with one line saying what is wrong.
    """

    def __init__(self, configDict: dict | None = None) -> None:
        configDict = configDict or {}
        super().__init__(configDict)
        self.consumer_id = int(configDict.get("processorId") or 1)
        try:
            self.args = parse_args(configDict)
            self._model = open_model(self.args.model)
            _check_heads(self._model, self.args.outputs)
        except (ArgsError, ModelError) as err:
            _exit_at_start(f"InferPtychoNNImageProcessor: {err}")
        args, shape = self.args, self._model.input_shape
        self._counts = FrameCounts()
        self._throttle = Throttle(self.logger)
        n_buffers = max(2, -(-args.warmup_queue_size // args.batch_size))
        fill = Preprocessor(args.preprocess, shape).into
        self._queue = BatchQueue(n_buffers, args.batch_size, shape, args.batch_timeout, fill)
        resized = args.preprocess.crop != (0, 0, 0, 0) or args.preprocess.bin != 1
        self._results = ResultBuilder(self.consumer_id, shape, resized)
        self._latencies = np.zeros(args.batch_size)
        self._slot = EngineSlot(self._build_engine)
        self._device = ""
        self._gate = FrameOutputGate(args.frame_outputs, args.preview_period)
        pvas = configDict.get("outputMode", OperationMode.PVAS) == OperationMode.PVAS
        self._makes_output = pvas and bool(configDict.get("outputChannel"))
        self._amplitude_channel = None
        if "amplitude" in args.outputs and args.frame_outputs != "none":
            self._amplitude_channel = sibling_channel(configDict.get("outputChannel"), "amplitude")
        self._output: OutputRecord | None = None
        self._amplitude_output: OutputRecord | None = None
        self._batches: BatchRecord | None = None
        self._stopping = threading.Event()
        self._inference: threading.Thread | None = None
        self._configured = 0
        self._configure_error = ""
        self._identity = published_identity(args, configDict.get("inputChannel", ""))

    # pvapy's interface

    def start(self) -> None:
        """Start building the engine and the inference thread; frames queue meanwhile."""
        sys.setswitchinterval(SWITCH_INTERVAL)
        if not self._makes_output:
            self.logger.warning("no PVA output channel: results are counted, not published")
        self._create_outputs()
        self._slot.load(self._model)
        self._inference = _thread(self._infer_stream, "ptychonn-inference")
        if self.args.parent_pid:
            _thread(self._watch_parent, "ptychonn-watchdog")

    def getOutputPvObjectType(self, pvObject):
        """``None`` (pvapy makes no record of its own) when :meth:`start` makes the records.

        pvapy asks at the first input frame, which can come before :meth:`start`.
        """
        return None if self._makes_output else pvObject

    def updateOutputChannel(self, pvObject) -> None:
        """Publish one result on the output channel."""
        if self._output is not None:
            self._output.publish(pvObject)
        else:
            super().updateOutputChannel(pvObject)

    def process(self, pvObject) -> None:
        """Queue one frame as model input, or count it as rejected or dropped.

        This runs on pvAccess's receive thread, which reads no more frames while it runs:
        it keeps a copy of the PV (a C++ copy) and leaves reading the frame's attributes
        (pvapy converts every attribute to Python) to the inference thread.

        The channel's value before the detector's first frame (:class:`NoFrameYet`),
        which a worker receives when it reconnects to a restarted source at once, is
        no frame: it is logged, not counted.
        """
        received_at = perf_counter()
        try:
            frame, compressed = decode_frame(pvObject)
        except NoFrameYet as empty:
            self.logger.info("%s", empty)
            return
        except Exception as err:
            self._counts.received += 1
            self._refuse(pvObject, err)
            return
        self._counts.received += 1
        try:
            kept = pvObject.copy()
            if compressed:
                self._results.clear_codec(kept)
            if not self._queue.put(frame, (kept, self._gate.wants(received_at)), received_at):
                self._drop_refused(pvObject["uniqueId"])
        except Exception as err:
            self._refuse(pvObject, err)

    def _refuse(self, pvObject, err: Exception) -> None:
        """Count a received frame that cannot be inferred: rejected for a
        :class:`FrameRejected`, else dropped (a frame must never vanish uncounted)."""
        if isinstance(err, FrameRejected):
            self._counts.rejected[err.reason] += 1
            self._throttle.warning(
                f"rejected-{err.reason}",
                f"frame {pvObject['uniqueId']} rejected ({err.reason}): {err}",
            )
        else:
            self._counts.dropped["error"] += 1
            self._throttle.warning("process", "frame dropped: cannot queue it", exc_info=True)

    def configure(self, configDict: dict) -> None:
        """Apply a control-channel ``configure``: ``model`` swaps models (from the folders
        of ``swap_dirs`` only), ``batch_timeout``.  Every request is logged.

        The new engine is built in the calling (control) thread while frames flow; the
        inference thread switches to it between two batches.  ``userStats`` counts the
        requests (``configured``) and says why the last one failed (``configureError``).

        Raises
        ------
        ArgsError, ModelError, BackendUnavailable
            The request cannot be applied; the running model stays.
        """
        self.logger.info("configure request: %s", configDict)
        try:
            self._configure(configDict)
            self._configure_error = ""
        except Exception as err:
            self._configure_error = str(err)
            self.logger.error("configure %s failed: %s", configDict, err)
            raise
        finally:
            self._configured += 1

    def _configure(self, configDict: dict) -> None:
        if not isinstance(configDict, dict):
            raise ArgsError(f"configure takes a JSON object, not {configDict!r}")
        update = parse_update(configDict)
        if update.batch_timeout is not None:
            self._queue.timeout = update.batch_timeout
        if update.model is not None:
            self.args.check_swap(update.model)
            model = open_model(update.model)
            _check_heads(model, self.args.outputs)
            if model.input_shape != self._model.input_shape:
                raise ModelError(
                    model.path,
                    f"takes {model.input_shape} frames; the running model takes "
                    f"{self._model.input_shape}",
                )
            self._slot.stage(model)
            self.logger.info("model %s (%s) staged", model.path, model.model_hash)

    def stop(self) -> None:
        """Infer what is queued for up to ``stop_drain`` s, count what is left as dropped
        (``stopped``), free the engine and write the final counts as the log's last line.

        pvapy has stopped the input by then, so no frame arrives meanwhile.
        """
        self._stopping.set()
        self._queue.close()
        if self._inference is not None:
            self._inference.join(self.args.stop_drain)
            if self._inference.is_alive():
                self._abandon_queue(self._inference)
        self._slot.close()
        final = self._counts.final(self.consumer_id)
        self.logger.info(
            "consumer %s stopped: %s received, %s inferred, %s dropped, %s rejected",
            self.consumer_id,
            final.received,
            final.inferred,
            final.dropped,
            sum(final.rejected.values()),
        )
        print(final.line(), flush=True)

    def _abandon_queue(self, inference: threading.Thread) -> None:
        """Count the frames ``stop_drain`` left queued as dropped, and the batch being
        inferred too should the engine not finish it within :data:`IN_FLIGHT_WAIT` s."""
        left = self._queue.discard()
        self._counts.dropped["stopped"] += left
        inference.join(IN_FLIGHT_WAIT)
        in_flight = self._counts.in_flight if inference.is_alive() else 0
        self._counts.drop_batch("stopped", in_flight)
        self.logger.warning(
            "consumer %s: stop_drain (%g s) ran out: %s queued frame(s) dropped%s",
            self.consumer_id,
            self.args.stop_drain,
            left,
            f", and {in_flight} being inferred by an engine that did not finish"
            if in_flight
            else "",
        )

    def resetStats(self) -> None:
        """Count from zero."""
        self._counts.reset()

    def getStats(self) -> dict[str, object]:
        """``userStats`` for the status channel (see :data:`STATS_PVA_TYPES`)."""
        engine = self._slot.engine
        model = engine.model if engine is not None else self._model
        stats = self._counts.user_stats(self._queue.depth)
        stats.update(
            ready=self._slot.ready.is_set(),
            queueCapacity=self._queue.capacity,
            batchSize=self.args.batch_size,
            backend=engine.backend if engine is not None else "",
            engine=engine.description if engine is not None else "",
            device=self._device,
            model=str(model.path),
            modelHash=model.model_hash,
            error=self._slot.error,
            configured=self._configured,
            configureError=self._configure_error,
            published=self._output.published if self._output is not None else 0,
            batchesPublished=self._batches.batches if self._batches is not None else 0,
            **self._identity,
        )
        return stats

    def getStatsPvaTypes(self) -> dict[str, object]:
        """PVA types of :meth:`getStats`."""
        return STATS_PVA_TYPES

    # inference thread

    def _infer_stream(self) -> None:
        if not self._engine_ready():
            return
        while (batch := self._queue.take()) is not None:
            buffer, n = batch
            self._counts.take(n)
            try:
                if self._queue.newest_wait(buffer, n) > self.args.max_wait:
                    self._drop_stale(n)
                else:
                    self._infer_batch(buffer, n)
            finally:
                self._queue.release(buffer, n)

    def _drop_stale(self, n: int) -> None:
        """Count a batch whose every frame waited over ``max_wait``: dropping the oldest
        keeps the worker's latency and memory bounded when it cannot keep up."""
        self._counts.drop_batch("stale", n)
        self._throttle.warning(
            "stale",
            f"batch of {n} frames dropped: each waited over max_wait ({self.args.max_wait:g} "
            "s) for inference, which lags the stream",
        )

    def _engine_ready(self) -> bool:
        while not self._slot.ready.wait(0.05):
            if self._slot.failed.is_set():
                self._fatal(self._slot.error)
            if self._stopping.is_set():
                self._queue.close()
                self._counts.dropped["stopped"] += self._queue.discard()
                return False
        engine = self._slot.current()
        self.logger.info(
            "consumer %s ready %.2f s after its process started (engine %.2f s): %s",
            self.consumer_id,
            time.time() - psutil.Process().create_time(),
            self._slot.load_seconds,
            engine.description,
        )
        return True

    def _infer_batch(self, buffer: int, n: int) -> None:
        engine = self._slot.current()
        if engine.model_hash != self._results.model_hash:
            self._results.set_model_hash(engine.model_hash)
        inputs = self._queue.frames[buffer, :n]
        moments = frame_moments(inputs)  # before an engine could touch its input
        try:
            prediction = engine.infer(inputs)
        except Exception:  # count the batch and keep the stream going
            self._counts.drop_batch("error", n)
            self._throttle.warning("infer", f"batch of {n} frames dropped", exc_info=True)
            return
        self._publish(buffer, n, prediction, moments)

    def _publish(
        self, buffer: int, n: int, prediction, moments: tuple[np.ndarray, np.ndarray]
    ) -> None:
        """The batch as one update of the batch channel, then a result NTNDArray for each
        frame kept for one (``frame_outputs``); the batch's frames share one publish time.

        A batch that cannot be published is counted as dropped: its frames reach no
        reader.  A per-frame result that cannot be published is only logged, since its
        frame went out in the batch.
        """
        now = time.time()
        self._latencies[:n] = perf_counter() - self._queue.received_at[buffer, :n]
        try:
            if self._batches is not None:
                self._batches.publish(self._batch(buffer, n, prediction, moments, now))
        except Exception:  # as for inference: count what is lost and go on
            self._counts.drop_batch("error", n)
            self._throttle.warning("publish", f"batch of {n} results lost", exc_info=True)
            return
        self._counts.record_batch(self._latencies[:n])
        kept = [(i, pv) for i, (pv, own) in enumerate(self._queue.meta[buffer][:n]) if own]
        if kept:
            self._publish_frames(kept, prediction, moments, now)

    def _batch(
        self, buffer: int, n: int, prediction, moments: tuple[np.ndarray, np.ndarray], now: float
    ) -> ResultBatch:
        tags = np.array([read_frame_tags(pv) for pv, _ in self._queue.meta[buffer][:n]])
        frames = {name: tags[:, k] for k, name in enumerate(FRAME_TAGS)}
        totals, centroids = moments
        frames.update(zip(INPUT_MOMENT_FIELDS, (totals, *centroids.T), strict=True))
        amplitude = prediction.amplitude if "amplitude" in self.args.outputs else None
        return ResultBatch(
            self.consumer_id,
            self._results.model_hash,
            0,
            0,
            now,
            frames,
            prediction.phase,
            amplitude,
        )

    def _publish_frames(
        self, kept: list, prediction, moments: tuple[np.ndarray, np.ndarray], now: float
    ) -> None:
        """One result NTNDArray for each ``(index in batch, received frame)`` of ``kept``."""
        amplitude = prediction.amplitude if self._amplitude_channel else None
        publish = self._output.publish if self._output is not None else self.updateOutputChannel
        totals, centroids = (m.tolist() for m in moments)  # floats format 3x faster
        try:
            for i, frame in kept:
                result = self._results.result(
                    frame, prediction.phase[i], now, totals[i], centroids[i]
                )
                publish(result)
                if amplitude is not None:
                    self._publish_amplitude(self._results.sibling(result, amplitude[i]))
        except Exception:
            self._throttle.warning(
                "publish-frames", "per-frame results not published", exc_info=True
            )

    def _publish_amplitude(self, result) -> None:
        if self._amplitude_output is None:
            self._amplitude_output = OutputRecord(self.pvaServer, self._amplitude_channel)
        self._amplitude_output.publish(result)

    # helpers

    def _create_outputs(self) -> None:
        """Create the result records now, so downstream stages can connect before frames.

        pvapy would create the output record from the first input frame; a consumer of
        the results started before then may find it only after the stream has passed.
        """
        if self.pvaServer is None or not self._makes_output:
            return
        batch_channel = sibling_channel(self.outputChannel, BATCH_CHANNEL)
        self._batches = BatchRecord(self.pvaServer, batch_channel)
        if self.args.frame_outputs != "none":
            self._output = OutputRecord(self.pvaServer, self.outputChannel, self.logger)
        if self._amplitude_channel:
            self._amplitude_output = OutputRecord(self.pvaServer, self._amplitude_channel)

    def _build_engine(self, model: ModelFile) -> InferenceEngine:
        device = self.args.engine_device(self.consumer_id)
        config = EngineConfig(
            backend=self.args.backend,
            precision=self.args.precision,
            max_batch=self.args.batch_size,
            device=device,
            threads=self.args.threads,
        )
        engine = create_engine(model, config)
        self._device = _device_name(device)
        return engine

    def _drop_refused(self, unique_id: int) -> None:
        if self._queue.closed:
            self._counts.dropped["stopped"] += 1
            return
        self._counts.dropped["queue_full"] += 1
        waiting = "the engine is starting" if not self._slot.ready.is_set() else "inference lags"
        self._throttle.warning(
            "queue_full",
            f"frame {unique_id} dropped: the queue of {self._queue.capacity} frames is full "
            f"({waiting})",
        )

    def _watch_parent(self) -> None:
        parent = self.args.parent_pid
        while True:
            if os.getppid() != parent:
                self._fatal(f"parent process {parent} is gone")
            if self._stopping.wait(0.5):
                return

    def _fatal(self, message: str) -> None:
        queued = self._queue.depth() + self._counts.in_flight
        print(
            f"InferPtychoNNImageProcessor {self.consumer_id}: {message}; exiting with "
            f"{queued} queued frames not inferred ({self._counts.received} received, "
            f"{self._counts.inferred} inferred)",
            file=sys.stderr,
            flush=True,
        )
        _stop_fork_parent()
        os._exit(2)


def _check_heads(model: ModelFile, outputs: tuple[str, ...]) -> None:
    missing = set(outputs) - set(model.heads)
    if missing:
        raise ModelError(
            model.path, f"has no {', '.join(sorted(missing))} head; outputs asks for {outputs}"
        )


def _device_name(device: str) -> str:
    if not device.startswith("cuda"):
        return "cpu"
    torch = sys.modules.get("torch")
    if torch is None:
        return device
    return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"


def _thread(target, name: str) -> threading.Thread:
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


def _exit_at_start(message: str) -> None:
    curses = sys.modules.get("curses")
    if curses is not None:
        with contextlib.suppress(curses.error):
            curses.endwin()
    print(message, file=sys.stderr, flush=True)
    _stop_fork_parent()
    raise SystemExit(2)


def _stop_fork_parent() -> None:
    """Under ``--n-consumers N`` pvapy forks: stop the parent too, which stops the others."""
    if multiprocessing.parent_process() is not None:
        os.kill(os.getppid(), signal.SIGINT)


def published_identity(args: ProcessorArgs, input_channel: str) -> dict[str, object]:
    """Where a worker runs and what it does (``host``, ``pid``, ``settings`` of
    ``userStats``), for a session that attaches to workers it did not start."""
    settings = {"input_channel": input_channel, **args.model_dump(mode="json")}
    del settings["parent_pid"]
    return {"host": socket.gethostname(), "pid": os.getpid(), "settings": json.dumps(settings)}
