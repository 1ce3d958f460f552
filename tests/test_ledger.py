"""The frame ledger: pure bookkeeping of which frames a span produced and their outcomes."""

import numpy as np

from ptychonn_ophyd.run_schema import OUTCOMES
from ptychonn_ophyd.session.ledger import CHUNK_BITS, LOST_AFTER, Counts, FrameLedger, IdSet

T0 = 1_000.0


def ids(*values: int) -> np.ndarray:
    return np.array(values, np.int64)


def at(n: int, t: float = T0 + 1) -> np.ndarray:
    return np.full(n, t)


def balanced(summary: dict) -> bool:
    return sum(summary[k] for k in OUTCOMES) == summary["produced"]


def test_id_set_reports_new_ids_and_first_of_repeats():
    s = IdSet()
    assert s.add(ids(5, 6, 5)).tolist() == [True, True, False]
    assert s.add(ids(6, 7)).tolist() == [False, True]


def test_id_set_agrees_with_a_set_whatever_the_batches_look_like():
    edge = 1 << CHUNK_BITS
    shapes = [
        lambda r, k: np.arange(k, k + 8),  # consecutive
        lambda r, k: np.sort(r.choice(np.arange(k, k + 40), 8, replace=False)),  # rising, gaps
        lambda r, k: r.integers(k, k + 6, 8),  # repeats, any order
        lambda r, k: np.arange(edge - 4, edge + 4),  # across a chunk's end
        lambda r, k: np.array([k]),
        lambda r, k: np.array([], np.int64),
    ]
    rng = np.random.default_rng(3)
    s, seen = IdSet(), set()
    for round_ in range(400):
        batch = shapes[round_ % len(shapes)](rng, int(rng.integers(1, 3 * edge))).astype(np.int64)
        expected = []
        for i in batch.tolist():
            expected.append(i not in seen)
            seen.add(i)
        assert s.add(batch).tolist() == expected


def test_id_set_lists_missing_ids_across_chunks_in_order():
    s = IdSet()
    edge = 1 << CHUNK_BITS
    s.add(np.arange(edge - 5, edge + 5))
    assert s.missing(edge - 7, edge + 6, limit=10) == [edge - 7, edge - 6, edge + 5, edge + 6]
    assert s.missing(1, 10**9, limit=3) == [1, 2, 3]


def test_id_set_memory_is_a_bit_a_frame_where_ids_fall():
    s = IdSet()
    s.add(np.arange(10**9, 10**9 + 100_000))
    assert len(s._chunks) <= 3


def test_a_span_keeps_new_frames_and_counts_duplicates_and_earlier_frames():
    ledger = FrameLedger(first_id=11, began=T0, pool=Counts())
    keep = ledger.take(ids(9, 10, 11, 12, 12), at(5))
    assert keep.tolist() == [False, False, True, True, False]
    assert (ledger.inferred, ledger.duplicates, ledger.outside) == (2, 1, 2)
    assert ledger.take(ids(11, 13), at(2)).tolist() == [False, True]


def test_a_point_is_done_when_its_frames_have_a_result_or_were_lost():
    ledger = FrameLedger(first_id=1, began=T0, pool=Counts(received=100, dropped=3))
    ledger.observe_source(10, T0 + 1)
    ledger.take(np.arange(1, 9), at(8))
    assert not ledger.settled(Counts(received=108, dropped=3))
    assert ledger.settled(Counts(received=110, dropped=4, rejected={"shape": 1}))
    assert ledger.settled(Counts(received=108, dropped=3), upto=8)


def test_frames_no_worker_received_settle_a_span_and_are_its_missed():
    ledger = FrameLedger(first_id=1, began=T0, pool=Counts(received=100, missed=7))
    ledger.observe_source(10, T0 + 1)
    ledger.take(np.arange(1, 9), at(8))
    assert not ledger.settled(Counts(received=108, missed=8))
    now = Counts(received=108, missed=9)
    assert ledger.settled(now)
    summary = ledger.accounting(now)
    assert summary["missed"] == 2 and balanced(summary)


def test_results_lost_after_the_last_batch_settle_a_span_once_results_stop_coming():
    """A monitor counts results it lost only when a later batch comes: those lost after
    a worker's last batch are settled by the workers' counts, once no result came for
    LOST_AFTER s, and the accounting has them as not in time."""
    ledger = FrameLedger(first_id=1, began=T0, pool=Counts(received=50, inferred=50))
    ledger.observe_source(10, T0 + 1)
    ledger.take(np.arange(1, 7), at(6))
    now = Counts(received=60, inferred=60)
    assert not ledger.settled(now, now=ledger.last_result + LOST_AFTER - 0.1)
    assert ledger.settled(now, now=ledger.last_result + LOST_AFTER)
    assert not ledger.settled(Counts(received=60, inferred=59), now=ledger.last_result + 60)
    summary = ledger.accounting(now)
    assert summary["not_in_time"] == 4 and balanced(summary)


def test_pool_counts_before_the_span_do_not_count_in_it():
    """The keep-warm case: the pool's workers ran before this staging, and dropped and
    rejected frames then; those must not finish this staging's points."""
    before = Counts(received=500, dropped=40, rejected={"shape": 60})
    ledger = FrameLedger(first_id=501, began=T0, pool=before)
    ledger.observe_source(600, T0 + 1)
    assert not ledger.settled(before)
    ledger.take(np.arange(501, 550), at(49))
    assert not ledger.settled(Counts(received=600, dropped=40, rejected={"shape": 60}))


def test_the_span_s_drops_and_rejections_by_reason_are_those_since_it_began():
    before = Counts(500, 40, {"shape": 60}, {"queue_full": 40})
    ledger = FrameLedger(first_id=501, began=T0, pool=before)
    ledger.observe_source(510, T0 + 1)
    ledger.take(np.arange(501, 506), at(5))
    now = Counts(510, 44, {"shape": 61}, {"queue_full": 40, "stale": 4})
    summary = ledger.accounting(now)
    assert summary["dropped_reasons"] == {"stale": 4} and summary["dropped"] == 4
    assert summary["rejected_reasons"] == {"shape": 1}


def test_without_a_source_the_span_produced_what_the_pool_received():
    ledger = FrameLedger(first_id=None, began=T0, pool=Counts(received=7))
    ledger.take(ids(3, 4, 4), at(3))
    pool = Counts(received=11, dropped=1)
    assert ledger.produced(pool) == 3
    assert ledger.settled(pool)
    assert ledger.missing() == []


def test_a_source_restart_opens_an_epoch_that_counts_from_one():
    ledger = FrameLedger(first_id=101, began=T0, pool=Counts())
    ledger.observe_source(110, T0 + 1)
    ledger.take(np.arange(101, 108), at(7, T0 + 1))
    assert ledger.observe_source(3, T0 + 2)
    # the old epoch's last frames arrive after the restart was seen; their times say whose
    ledger.take(np.arange(108, 111), at(3, T0 + 1.5))
    ledger.take(ids(1, 2, 3), at(3, T0 + 2.5))
    assert ledger.restarts == 1
    assert ledger.produced(Counts()) == 13
    assert ledger.inferred == 13
    assert ledger.settled(Counts())


def test_missing_names_the_newest_epoch_frames_without_a_result():
    ledger = FrameLedger(first_id=1, began=T0, pool=Counts())
    ledger.observe_source(6, T0 + 1)
    ledger.take(ids(1, 2, 4), at(3))
    assert ledger.missing() == [3, 5, 6]
    assert ledger.missing(limit=1) == [3]


def test_claims_count_late_results_of_the_span_only():
    ledger = FrameLedger(first_id=11, began=T0, pool=Counts())
    ledger.observe_source(20, T0 + 1)
    assert ledger.claims(ids(5, 11, 20, 21), at(4)) == 2


def test_accounting_puts_every_frame_in_exactly_one_outcome():
    before = Counts(received=1000, dropped=5, rejected={"shape": 2})
    ledger = FrameLedger(first_id=1, began=T0, pool=before)
    ledger.observe_source(100, T0 + 1)
    ledger.take(np.arange(1, 81), at(80))
    ledger.take(ids(80), at(1))
    now = Counts(received=1000 + 95 + 1, dropped=5 + 6, rejected={"shape": 2 + 3, "dtype": 1})
    summary = ledger.accounting(now)
    assert summary["produced"] == 100
    assert summary["inferred"] == 80
    assert summary["dropped"] == 6
    assert summary["rejected"] == 4
    assert summary["rejected_reasons"] == {"shape": 3, "dtype": 1}
    assert summary["duplicates"] == 1
    assert summary["missed"] == 5
    assert summary["not_in_time"] == 5
    assert balanced(summary)


def test_accounting_trusts_results_over_lagging_pool_counts():
    ledger = FrameLedger(first_id=1, began=T0, pool=Counts())
    ledger.observe_source(10, T0 + 1)
    ledger.take(np.arange(1, 11), at(10))
    summary = ledger.accounting(Counts(received=4))
    assert (summary["received"], summary["missed"], summary["not_in_time"]) == (10, 0, 0)
    assert balanced(summary)


def test_counts_since_drop_reasons_that_did_not_change():
    now = Counts(received=9, dropped=2, rejected={"shape": 3, "dtype": 1})
    then = Counts(received=4, dropped=1, rejected={"shape": 3})
    assert now.since(then) == Counts(5, 1, {"dtype": 1})
    assert now.since(then).lost == 2
