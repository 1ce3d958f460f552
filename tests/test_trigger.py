"""The device's trigger: a status per point, finished by result batches and pool counts."""

import time

import numpy as np
import pytest

from ptychonn_ophyd.errors import InferenceTimeoutError, WorkerDiedError
from ptychonn_ophyd.session.ledger import LOST_AFTER, Counts, FrameLedger
from ptychonn_ophyd.session.trigger import PointTrigger
from ptychonn_ophyd.wire import BATCH_FRAME_FIELDS, ResultBatch


def batch(*ids: int) -> ResultBatch:
    frames = {name: np.zeros(len(ids)) for name in BATCH_FRAME_FIELDS}
    frames["uniqueId"] = np.array(ids, np.int64)
    frames["frameTime"] = np.full(len(ids), time.time())
    return ResultBatch(0, "m", 0, 0, time.time(), frames, np.zeros((len(ids), 2, 2), np.float32))


def healthy() -> None:
    pass


NOTHING = Counts()


def trigger(timeout: float = 30.0, first_id: int | None = 1, pool: Counts = NOTHING):
    return PointTrigger("inference", FrameLedger(first_id, time.time(), pool), timeout)


def test_a_point_finishes_when_its_last_batch_arrives():
    t = trigger()
    status = t.wait(last_id=3)
    t.on_batch(batch(1, 2))
    assert not status.done
    t.on_batch(batch(3))
    assert status.done and status.success
    assert t.inferred == 3


def test_a_point_whose_frames_were_inferred_already_is_done_at_once():
    t = trigger()
    t.on_batch(batch(1, 2))
    assert t.wait(last_id=2).done


def test_frames_dropped_or_rejected_finish_a_point_once_the_pool_says_so():
    t = trigger(pool=Counts(received=10, rejected={"shape": 4}))
    status = t.wait(last_id=3)
    t.on_batch(batch(1))
    t.poll(Counts(received=13, dropped=1, rejected={"shape": 4}), healthy)
    assert not status.done  # one frame still without an outcome
    t.poll(Counts(received=13, dropped=1, rejected={"shape": 5}), healthy)
    assert status.done and status.success


def test_without_a_source_a_point_waits_for_what_the_pool_received():
    t = trigger(first_id=None, pool=Counts(received=5))
    t.poll(Counts(received=7), healthy)
    status = t.wait(last_id=None)
    assert not status.done
    t.on_batch(batch(6, 7))
    assert status.done and status.success


def test_a_wait_without_results_fails_naming_the_missing_frames():
    t = trigger(timeout=0.0)
    t.on_batch(batch(2))
    status = t.wait(last_id=4)
    time.sleep(0.01)  # past the zero timeout
    t.poll(Counts(received=1), healthy)
    with pytest.raises(InferenceTimeoutError) as raised:
        status.wait(1)
    assert raised.value.missing == [1, 3, 4]


def test_a_dead_worker_fails_the_waits_with_its_error():
    t = trigger()
    status = t.wait(last_id=1)

    def died() -> None:
        raise WorkerDiedError("worker 1 died (exit code -9)")

    t.poll(Counts(), died)
    with pytest.raises(WorkerDiedError, match="worker 1 died"):
        status.wait(1)


def test_a_worker_that_died_between_points_fails_the_next_point_even_with_its_frames_in():
    t = trigger()

    def died() -> None:
        raise WorkerDiedError("worker 2 (host gpu2, pid 7) has published no status for 6 s")

    t.poll(Counts(), died)  # during a fly scan's trajectory: nothing waits yet
    t.on_batch(batch(1, 2, 3))
    status = t.wait(last_id=3)
    with pytest.raises(WorkerDiedError, match="worker 2 \\(host gpu2"):
        status.wait(1)


def test_unstaging_fails_the_waits_saying_so():
    t = trigger()
    status = t.wait(last_id=1)
    t.close("unstaged")
    with pytest.raises(RuntimeError, match="inference: unstaged while waiting for inference"):
        status.wait(1)


def test_results_the_monitors_lost_finish_a_point_instead_of_timing_it_out():
    t = PointTrigger("inference", FrameLedger(1, time.time(), NOTHING), 30.0, overruns=5)
    status = t.wait(last_id=4)
    t.on_batch(batch(1, 4))
    t.poll(Counts(received=4), healthy, overruns=6)
    assert not status.done  # one of the two results without a batch was lost (so far)
    t.poll(Counts(received=4), healthy, overruns=7)
    assert status.done and status.success
    assert t.inferred == 2


def test_frames_the_workers_never_received_finish_a_point_instead_of_timing_it_out():
    """A frame lost between the detector and a worker (a gap in the uniqueIds it saw,
    pvapy's ``missed``) will bring no result: the point finishes with it counted, as on
    a 2-core machine where the detector's server queue overflowed and the fly scan
    waited ``trigger_timeout`` and failed."""
    t = trigger(pool=Counts(received=2, missed=3))
    status = t.wait(last_id=6)
    t.on_batch(batch(1, 2, 5, 6))
    t.poll(Counts(received=6, missed=4), healthy)
    assert not status.done  # uniqueId 4 may still be on its way
    t.poll(Counts(received=6, missed=5), healthy)
    assert status.done and status.success


def test_results_lost_after_the_last_batch_finish_a_point_once_results_stop_coming():
    """At 20 kHz a store process's monitors lost results after the workers' last batches,
    which no later batch revealed: the fly scan waited ``trigger_timeout`` and failed.
    The workers' counts say the frames were inferred: the point finishes."""
    t = trigger(pool=Counts(received=8, inferred=8))
    status = t.wait(last_id=4)
    t.on_batch(batch(1, 2))
    t.poll(Counts(received=12, inferred=12), healthy)
    assert not status.done  # results 3 and 4 may still be on their way
    t.ledger.last_result -= LOST_AFTER
    t.poll(Counts(received=12, inferred=11), healthy)
    assert not status.done  # a worker still has one of them
    t.poll(Counts(received=12, inferred=12), healthy)
    assert status.done and status.success
