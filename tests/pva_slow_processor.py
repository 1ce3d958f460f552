"""The PtychoNN processor with an engine that takes ``start_delay`` seconds longer to start.

Loaded by pvapy with ``--processor-file tests/pva_slow_processor.py --processor-class
SlowStartProcessor``, it gives the warm-up queue test time to send frames before the
engine is ready.
"""

from __future__ import annotations

import time

from ptychonn_ophyd.worker.processor import InferPtychoNNImageProcessor


class SlowStartProcessor(InferPtychoNNImageProcessor):
    """:class:`InferPtychoNNImageProcessor` taking the extra argument ``start_delay``."""

    def __init__(self, configDict: dict | None = None) -> None:
        configDict = dict(configDict or {})
        self.start_delay = float(configDict.pop("start_delay", 0.0))
        super().__init__(configDict)

    def _build_engine(self, model):
        time.sleep(self.start_delay)
        return super()._build_engine(model)
