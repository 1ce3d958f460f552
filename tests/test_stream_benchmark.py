"""benchmarks/stream.py: its recorder keeps every result, its collectors read batch
channels in processes of their own, and a whole run accounts for every frame."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ptychonn_ophyd.loopback import LOOPBACK_ENV

pytestmark = pytest.mark.timeout(180)

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "stream.py"

TRIAL_KEYS = {
    "offered_hz",
    "sent",
    "received",
    "distinct",
    "duplicates",
    "lost",
    "dropped",
    "dropped_by_reason",
    "rejected",
    "missed",
    "not_in_time",
    "sustained_hz",
    "latency_p50_ms",
    "latency_p99_ms",
    "worker_latency_p99_ms",
    "worker_cpu_ms",
    "source_cpu_ms",
    "collector_cpu_ms",
    "collector_busy",
    "collectors",
    "waited_s",
    "wait_end",
}


@pytest.fixture(scope="module")
def stream():
    """The benchmark script as the module ``stream``, importable by the collector
    processes it spawns."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        yield importlib.import_module("stream")
    finally:
        sys.path.remove(str(SCRIPT.parent))
        sys.modules.pop("stream", None)


def record_batches(recorder, bursts, duplicated: int, rng) -> None:
    """Record every frame of ``bursts`` once, in batches of up to 32 in shuffled order,
    and ``duplicated`` of them a second time."""
    pairs = np.array(
        [(k, i) for k, b in enumerate(bursts) for i in range(b.first_id, b.first_id + b.sent)]
    )
    pairs = np.concatenate([pairs, pairs[rng.choice(len(pairs), duplicated, replace=False)]])
    rng.shuffle(pairs)
    start = 0
    while start < len(pairs):
        stop = min(start + int(rng.integers(1, 33)), len(pairs))
        for k in np.unique(pairs[start:stop, 0]):
            ids = pairs[start:stop][pairs[start:stop, 0] == k, 1]
            recorder.add(int(k), ids, np.full(len(ids), 0.001), time.perf_counter())
        start = stop


def test_recording_more_results_than_the_first_chunk_loses_none(stream):
    bursts = [stream.Burst(4000, 1.0, 1), stream.Burst(3500, 1.0, 101), stream.Burst(2500, 1.0, 7)]
    recorder = stream.Recorder(first_chunk=16)
    record_batches(recorder, bursts, duplicated=123, rng=np.random.default_rng(0))

    records = recorder.records()
    assert len(records) == len(recorder) == 10_000 + 123
    counted = stream.tally(records, bursts)
    assert counted.distinct == 10_000
    assert counted.duplicates == 123
    assert counted.lost == 0
    assert counted.stale == 0


def test_a_missing_result_is_lost_and_one_of_an_earlier_burst_is_stale(stream):
    bursts = [stream.Burst(100, 1.0, 1)]
    recorder = stream.Recorder(first_chunk=16)
    ids = np.array([0, *range(1, 51), *range(52, 101)])  # 0: the burst before; 51 missing
    recorder.add(0, ids, np.zeros(len(ids)), 1.0)

    counted = stream.tally(recorder.records(), bursts)
    assert (counted.received, counted.distinct, counted.lost, counted.stale) == (99, 99, 1, 1)


def test_clearing_the_recorder_starts_it_afresh(stream):
    recorder = stream.Recorder(first_chunk=4)
    recorder.add(0, np.arange(10), np.zeros(10), 1.0)
    recorder.clear()
    recorder.add(1, np.arange(3), np.zeros(3), 2.0)
    assert recorder.records()["stream"].tolist() == [1, 1, 1]


def test_a_trial_splits_its_lost_frames_by_where_they_were_lost(stream):
    """10 of 200 frames lost: 3 dropped, 1 rejected, 5 never received by a worker, so 1
    received whose result never came; a busy collector is warned about."""
    bursts = [stream.Burst(100, 0.5, 1), stream.Burst(100, 0.5, 1)]
    recorder = stream.Recorder(first_chunk=16)
    recorder.add(0, np.arange(1, 101), np.full(100, 0.002), 10.0)
    recorder.add(1, np.array([*range(1, 91), 5, 6, 0]), np.full(93, 0.004), 10.5)
    collected = stream.Collected(recorder.records(), [0.9, 0.1], [1.0, 1.0], 0)
    counts = {
        "received": 195,
        "rejected": 1,
        "missed": 4,
        "dropped_by_reason": {"queue_full": 3, "error": 0, "stopped": 0},
    }
    wait = stream.Wait(0.3, "all arrived")
    trial = stream.make_trial(bursts, 0.5, 9.5, collected, counts, 0.01, (0.2, 0.1), wait)

    assert (trial.sent, trial.received, trial.distinct) == (200, 192, 190)
    assert (trial.duplicates, trial.stale, trial.lost) == (2, 1, 10)
    assert (trial.dropped, trial.rejected, trial.missed, trial.not_in_time) == (3, 1, 5, 1)
    assert trial.pvapy_missed == 4
    assert trial.sustained_hz == pytest.approx(190.0)
    assert not trial.kept_up
    assert trial.collector_busy == [0.9, 0.1]
    assert trial.collector_cpu_ms == pytest.approx(5.0)
    assert any(note.startswith("warning: a collector was busy 90%") for note in trial.notes())


def test_the_latency_tail_is_placed_in_the_second_its_results_arrived(stream):
    """Results 0.2 and 2.7 s into the trial: the first second's tail, an empty second,
    then the third's; an empty trial has no seconds."""
    recorder = stream.Recorder(first_chunk=16)
    recorder.add(0, np.arange(100), np.full(100, 0.002), 10.2)
    recorder.add(0, np.arange(100, 110), np.full(10, 0.040), 12.7)
    assert stream.p99_by_second(recorder.records(), 10.0) == [2.0, 0.0, 40.0]
    recorder.clear()
    assert stream.p99_by_second(recorder.records(), 10.0) == []


@dataclass
class FakeTrial:
    """What :func:`stream.sweep` reads of a trial."""

    offered_hz: float
    kept_up: bool

    def line(self) -> str:
        return f"offered {self.offered_hz:.0f} Hz, kept up: {self.kept_up}"

    def notes(self) -> list[str]:
        return []


def test_a_sweep_reports_the_rate_offered_not_the_rate_asked(stream):
    def pipeline(rate: float) -> FakeTrial:  # keeps up to 5,000 Hz; sources offer 1 % less
        return FakeTrial(0.99 * rate, rate <= 5000)

    best, trials = stream.sweep(pipeline, 1000, refine=3, limit=1e6)
    assert [round(t.offered_hz) for t in trials[:5]] == [990, 1485, 2228, 3341, 5012]
    assert best == max(t.offered_hz for t in trials if t.kept_up) < 5000


def test_a_sweep_stops_where_the_source_falls_short(stream, capsys):
    def source_limited(rate: float) -> FakeTrial:  # the source offers at most 3,000 Hz
        return FakeTrial(min(rate, 3000.0), True)

    best, trials = stream.sweep(source_limited, 1000, refine=3, limit=1e6)
    assert best == 3000.0 and len(trials) == 4  # 1,000, 1,500, 2,250, then 3,375 asked
    assert "the sweep stops at the source's limit" in capsys.readouterr().out


@pytest.mark.processes
def test_collector_processes_record_every_frame_of_every_batch(stream, channel_prefix):
    """Two collector processes share three batch channels; a batch never published
    shows as a gap in its channel's ``framesBefore``."""
    import pvaccess as pva

    from ptychonn_ophyd.wire import BATCH_FRAME_FIELDS, ResultBatch, new_batch_value
    from ptychonn_ophyd.wire import write_result_batch as write

    names = [f"{channel_prefix}:{k}:batch" for k in (1, 2, 3)]
    server = pva.PvaServer()
    for name in names:
        server.addRecord(name, new_batch_value(), None)
    collectors = stream.Collectors([names[:2], names[2:]], n=2, first_chunk=16)
    try:
        value, next_id, before = new_batch_value(), 1, dict.fromkeys(names, 0)
        for b in range(30):
            name = names[b % 3]
            frames = {field: np.zeros(8) for field in BATCH_FRAME_FIELDS}
            frames.update(
                uniqueId=np.arange(next_id, next_id + 8), frameTime=np.full(8, time.time())
            )
            batch = ResultBatch(1, "m", b, before[name], time.time(), frames, np.zeros((8, 4, 4)))
            before[name] += 8
            next_id += 8
            if b != 10:  # batch 10 of channel 2 is never published
                write(value, batch)
                server.update(name, value)
        deadline = time.monotonic() + 30
        while collectors.count() < 29 * 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        collected = collectors.take()
    finally:
        collectors.close()
        server.stop()

    ids = collected.records["id"]
    assert len(ids) == len(np.unique(ids)) == 29 * 8
    assert not set(range(81, 89)) & set(ids.tolist())
    assert sorted(set(collected.records["stream"].tolist())) == [0, 1]
    assert collected.gap_frames == 8
    assert len(collected.cpu_s) == 2
    assert all(cpu > 0 for cpu in collected.cpu_s)


def run_benchmark(*options: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, **LOOPBACK_ENV}
    command = [sys.executable, str(SCRIPT), *options]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=170)


@pytest.mark.processes
def test_a_run_through_the_pool_accounts_for_every_frame(tmp_path):
    out = tmp_path / "run.json"
    done = run_benchmark(
        "--copy-model",
        "--backend",
        "onnxruntime",
        "--threads",
        "1",
        "--workers",
        "2",
        "--rate",
        "200",
        "--seconds",
        "1",
        "--collectors",
        "2",
        "--status-period",
        "0.2",
        "--json",
        str(out),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (trial,) = json.loads(out.read_text())["trials"]
    assert not TRIAL_KEYS - trial.keys(), "keys missing from the trial"
    assert trial["sent"] > 0
    assert trial["distinct"] == trial["sent"]
    assert trial["lost"] == 0
    assert trial["not_in_time"] == 0
    assert trial["collectors"] == 2
    assert len(trial["collector_busy"]) == 2
    assert trial["collector_cpu_ms"] > 0
    assert "waited" in done.stdout


@pytest.mark.processes
def test_comparing_with_pvapy_passthrough_reports_both_rates_and_their_ratio(tmp_path):
    out = tmp_path / "compare.json"
    done = run_benchmark(
        "--compare-passthrough",
        "--copy-model",
        "--backend",
        "onnxruntime",
        "--threads",
        "1",
        "--rate",
        "200",
        "--max-rate",
        "250",  # one trial each: 200 Hz, and 300 Hz would pass the ceiling
        "--refine",
        "0",
        "--seconds",
        "1",
        "--status-period",
        "0.2",
        "--frame-outputs",
        "none",
        "--json",
        str(out),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    (ours,) = result["trials"]
    (theirs,) = result["passthrough_trials"]
    assert ours["lost"] == 0
    assert theirs["processed"] == theirs["sent"] > 0
    assert theirs["missed"] == 0
    assert result["passthrough_best_lossless_hz"] == theirs["offered_hz"]
    assert result["ratio"] == result["best_lossless_hz"] / theirs["offered_hz"]
    assert "ratio" in done.stdout
