"""The supplement, its run, writer and accounting, fed batches by hand: no processes.

A real RunEngine and an embedded Tiled catalog; in place of the device, an object
with the device's side that the supplement reads (its fan-out, its settings, the
source's counter and the pool's counts), which each test sets as it needs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
import pytest
from bluesky import RunEngine
from bluesky.utils import RunEngineInterrupted
from bluesky_world import assert_every_frame_counted, validate_all
from ophyd import Signal

from ptychonn_ophyd.catalog import assets_directory, catalog_writer, open_catalog
from ptychonn_ophyd.errors import StreamWiringError
from ptychonn_ophyd.run_schema import STREAM, frame_accounting, model_hash
from ptychonn_ophyd.session.ledger import Counts
from ptychonn_ophyd.session.results import ResultFanout
from ptychonn_ophyd.session.supplement import ABORTED_WITHOUT_REASON, InferenceSupplement
from ptychonn_ophyd.store.file import RowLayout, RowWriter
from ptychonn_ophyd.wire import BATCH_FRAME_FIELDS, ResultBatch

SHAPE = (8, 8)


@dataclass
class Source:
    last_unique_id: int = 0


@dataclass
class FakeInference:
    """The side of :class:`~ptychonn_ophyd.session.device.PtychoNNDetector` the
    supplement reads; ``emit`` plays a worker publishing a batch of frames."""

    name: str = "inference"
    results: ResultFanout = field(default_factory=ResultFanout)
    source: Source | None = field(default_factory=Source)
    counts: Counts = field(default_factory=Counts)
    heads: tuple[str, ...] = ("phase",)
    monitor_overruns: int = 0
    pool: object | None = "staged"
    output_prefix: Signal = field(
        default_factory=lambda: Signal(value="fake:inference", name="output_prefix")
    )

    def image_shape(self) -> tuple[int, int]:
        return SHAPE

    def read_configuration(self) -> dict:
        return {"inference_model_hash": {"value": "abc", "timestamp": 0.0}}

    def describe_configuration(self) -> dict:
        return {"inference_model_hash": {"source": "fake", "dtype": "string", "shape": []}}

    def source_last_id(self) -> int:
        return self.source.last_unique_id if self.source is not None else 0

    def open_rows(self, uid: str, path: Path, layout: RowLayout) -> RowWriter:
        return RowWriter(uid, path, layout)

    reported: Counts | None = None
    """The counts as the workers' last status posted them (``None``: always current):
    ``pool_counts`` returns them unless asked for counts made after a moment."""

    def pool_counts(self, since: float | None = None) -> Counts:
        return self.counts if self.reported is None or since is not None else self.reported

    def span_counts(self) -> Counts:
        return self.pool_counts(since=self.results.last_published or None)

    def produce(self, n: int) -> None:
        """The detector publishes ``n`` frames; the pool receives them."""
        self.source.last_unique_id += n
        self.receive(n)

    def receive(self, n: int, dropped: int = 0) -> None:
        c = self.counts
        stale = c.dropped_by_reason.get("stale", 0) + dropped
        self.counts = Counts(c.received + n, c.dropped + dropped, c.rejected, {"stale": stale})

    def emit(
        self, ids: list[int], frame_time: float | None = None, model: str = "00000000abcd"
    ) -> None:
        n = len(ids)
        frames = {name: np.zeros(n) for name in BATCH_FRAME_FIELDS}
        frames["uniqueId"] = np.array(ids, np.int64)
        frames["frameTime"] = np.full(n, time.time() if frame_time is None else frame_time)
        frames["x"] = 0.01 * frames["uniqueId"]
        frames["point"] = np.array(ids, np.int64) - 1
        phase = np.stack([np.full(SHAPE, i, np.float32) for i in ids])
        self.results.on_batch(ResultBatch(0, model, 0, 0, time.time(), frames, phase))


@pytest.fixture
def session(tmp_path):
    """A RunEngine storing into an embedded catalog, with the fake's supplement."""
    inference = FakeInference()
    RE = RunEngine()
    client = open_catalog(tmp_path / "catalog")
    supplement = InferenceSupplement(
        inference, assets_directory(tmp_path / "catalog"), grace=0.5, collect_period=0
    )
    RE.preprocessors.append(supplement)
    RE.subscribe(catalog_writer(client))
    documents: list[tuple[str, dict]] = []
    RE.subscribe(lambda name, doc: documents.append((name, doc)))
    yield RE, inference, supplement, client, documents
    client.context.close()


def run_with(inference: FakeInference, body) -> object:
    """A plan: a run naming the inference device, ``body(inference)`` in it, one event."""

    def plan():
        yield from bps.open_run(md={"detectors": [inference.name]})
        body(inference)
        yield from bps.null()
        yield from bps.close_run()

    return plan()


def stored_ids(client, uid: str) -> list[int]:
    return client[uid][STREAM]["unique_id"].read().tolist()


def test_a_run_begun_right_after_another_does_not_count_the_other_s_frames(session):
    """Workers post their counts every status period: a run opened within one of the last
    run's results counts from counts made after it, not from the last ones posted."""
    RE, inference, _, client, _ = session
    inference.reported = Counts()  # posted before the first run's frames, not since

    def first(f):
        f.produce(4)
        f.emit([1, 2, 3, 4])

    def second(f):
        f.reported = None  # the workers post their counts now, in the second run
        f.produce(2)
        f.emit([5, 6])

    RE(run_with(inference, first))
    (uid,) = RE(run_with(inference, second))
    accounting = frame_accounting(client[uid])
    assert (accounting["produced"], accounting["received"], accounting["stored"]) == (2, 2, 2)


def test_a_run_stores_each_frame_once_and_valid_documents(session):
    RE, inference, _, client, documents = session

    def body(f):
        f.produce(8)
        f.emit([1, 2, 3, 4])
        f.emit([5, 6, 7, 8, 4])  # frame 4 reached two workers

    (uid,) = RE(run_with(inference, body))
    validate_all(documents)
    assert stored_ids(client, uid) == list(range(1, 9))
    phase = client[uid][STREAM]["phase"].read()
    assert phase.shape == (8, *SHAPE) and phase[7, 0, 0] == 8
    summary = frame_accounting(client[uid])
    assert (summary["inferred"], summary["stored"], summary["duplicates"]) == (8, 8, 1)
    assert_every_frame_counted(summary)


def test_each_row_names_its_model_and_the_accounting_every_model_used(session):
    RE, inference, _, client, _ = session
    old, new = "0123456789ab", "ba9876543210"

    def body(f):
        f.produce(5)
        f.emit([1, 2], model=old)
        f.emit([3, 4, 5], model=new)  # swapped in mid-run

    (uid,) = RE(run_with(inference, body))
    rows = client[uid][STREAM].read()
    made_by = dict(zip(rows["unique_id"].values, rows["model"].values, strict=True))
    assert {i: model_hash(n) for i, n in made_by.items()} == {
        1: old,
        2: old,
        3: new,
        4: new,
        5: new,
    }
    assert frame_accounting(client[uid])["models"] == {old: 2, new: 3}


def test_frames_from_before_the_run_are_not_its_own(session):
    RE, inference, _, client, _ = session
    inference.produce(3)
    inference.emit([1, 2])  # a result still on its way from before the run

    def body(f):
        f.emit([3])
        f.produce(2)
        f.emit([4, 5])

    (uid,) = RE(run_with(inference, body))
    assert stored_ids(client, uid) == [4, 5]
    assert frame_accounting(client[uid])["produced"] == 2


def test_dropped_frames_end_the_run_without_waiting_for_grace(session):
    RE, inference, supplement, client, _ = session
    supplement.grace = 60.0

    def body(f):
        f.source.last_unique_id += 5
        f.receive(5, dropped=2)
        f.emit([1, 2, 3])

    start = time.monotonic()
    (uid,) = RE(run_with(inference, body))
    assert time.monotonic() - start < 30.0
    summary = frame_accounting(client[uid])
    assert (summary["inferred"], summary["dropped"]) == (3, 2)
    assert summary["dropped_reasons"] == {"stale": 2}
    assert_every_frame_counted(summary)


def test_results_the_monitors_lost_end_the_run_without_waiting_for_grace(session):
    RE, inference, supplement, client, _ = session
    supplement.grace = 60.0
    inference.monitor_overruns = 4  # lost in an earlier run: not this run's

    def body(f):
        f.produce(5)
        f.emit([1, 2, 3])
        f.monitor_overruns += 2  # the batch of frames 4 and 5 never arrived

    start = time.monotonic()
    (uid,) = RE(run_with(inference, body))
    assert time.monotonic() - start < 30.0
    summary = frame_accounting(client[uid])
    assert (summary["inferred"], summary["monitor_overruns"]) == (3, 2)
    assert summary["not_in_time"] == 2
    assert_every_frame_counted(summary)


def test_results_after_the_grace_period_are_late_not_lost(session):
    RE, inference, supplement, client, _ = session

    def body(f):
        f.produce(4)
        f.source.last_unique_id += 1  # a fifth frame the pool never received
        f.emit([1, 2])

    (uid,) = RE(run_with(inference, body))
    summary = frame_accounting(client[uid])
    assert (summary["inferred"], summary["not_in_time"], summary["missed"]) == (2, 2, 1)
    assert_every_frame_counted(summary)

    inference.emit([3, 4])
    inference.emit([99])  # no frame of this run
    assert supplement.late(uid) == 2
    assert stored_ids(client, uid) == [1, 2]


def test_late_results_make_one_warning_then_one_total_per_run(session, caplog):
    RE, inference, supplement, _, _ = session

    def body(f):
        f.produce(6)
        f.emit([1])

    caplog.set_level(logging.WARNING, "ptychonn_ophyd.session.run")
    (uid,) = RE(run_with(inference, body))
    for late in ([2], [3, 4], [5], [6]):
        inference.emit(late)
    RE(run_with(inference, lambda f: None))
    late_lines = [r.getMessage() for r in caplog.records if "after its last rows" in r.message]
    assert late_lines == [
        f"run {uid}: results are coming after its last rows were stored: counted as late, "
        "not stored; their number is logged when the next run opens",
        f"run {uid}: 5 result(s) came after its last rows were stored",
    ]
    assert supplement.late(uid) == 5


def test_an_aborted_run_gives_a_reason_in_its_stop_document(session):
    RE, inference, _, client, _ = session

    def paused_run():
        yield from bps.checkpoint()
        yield from bps.pause()

    with pytest.raises(RunEngineInterrupted):
        RE(bpp.run_wrapper(paused_run(), md={"detectors": [inference.name]}))
    RE.abort()
    stop = client.values().last().metadata["stop"]
    assert stop["exit_status"] == "abort" and stop["reason"] == ABORTED_WITHOUT_REASON


def test_a_source_that_restarts_mid_run_loses_no_frame_silently(session):
    RE, inference, supplement, client, _ = session

    def body(f):
        f.produce(6)
        supplement.on_source(6, time.time())  # the device's watch thread reads the counter
        f.emit([1, 2, 3, 4])
        before = time.time()
        f.source.last_unique_id = 0
        supplement.on_source(0, time.time())
        f.produce(3)  # the restarted source counts from 1 again
        f.emit([5, 6], frame_time=before)  # the old epoch's last frames, arriving late
        f.emit([1, 2, 3])

    (uid,) = RE(run_with(inference, body))
    summary = frame_accounting(client[uid])
    assert (summary["produced"], summary["inferred"], summary["source_restarts"]) == (9, 9, 1)
    assert sorted(stored_ids(client, uid)) == [1, 1, 2, 2, 3, 3, 4, 5, 6]
    assert_every_frame_counted(summary)


def test_runs_without_the_device_get_no_inference_stream(session):
    RE, inference, _, client, _ = session

    def plan():
        yield from bps.open_run(md={"detectors": ["det"]})
        inference.produce(2)
        inference.emit([1, 2])
        yield from bps.close_run()

    (uid,) = RE(plan())
    assert STREAM not in client[uid]


def test_a_second_supplement_for_one_device_is_refused(session, tmp_path):
    _, inference, _, _, _ = session
    with pytest.raises(StreamWiringError, match="already has an InferenceSupplement"):
        InferenceSupplement(inference, tmp_path)
