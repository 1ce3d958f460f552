"""A worker that cannot keep up, and a pool stopped with frames still queued: every frame
ends inferred or dropped with its reason, and the backlog stays bounded.

The workers run the bundled demo model on one CPU thread (tens of frames a second on
the 2-core machine), fed hundreds of frames a second, so a backlog builds at once.
"""

from __future__ import annotations

import pytest
from frames import poisson_frames
from pva_consumers import wait_until

from ptychonn_ophyd.models.bundled import demo_model_path
from ptychonn_ophyd.pool import ConsumerPool

pytestmark = [pytest.mark.processes, pytest.mark.timeout(180)]


@pytest.fixture
def slow_pool(make_pool):
    """Start a one-worker pool of the demo model with ``settings``."""

    def start(**settings) -> ConsumerPool:
        pool = make_pool(model=demo_model_path(), **settings)
        pool.start(timeout=120)
        return pool

    return start


def all_heard(pool: ConsumerPool, sent: int) -> bool:
    stats = pool.stats()
    return stats.received + stats.missed == sent


def settled(pool: ConsumerPool) -> bool:
    stats = pool.stats()
    return stats.queue_depth == 0 and stats.received == (
        stats.inferred + stats.dropped + sum(stats.rejected.values())
    )


def test_a_worker_that_cannot_keep_up_drops_its_oldest_frames_and_keeps_its_latency(
    slow_pool, source
):
    pool = slow_pool(max_wait=0.5)
    source.publish_frames(poisson_frames(400, seed=1), rate_hz=200)
    # 400 frames in 2 s to a worker inferring tens a second: unbounded, the last would
    # wait about 10 s, and its queue would hold hundreds of frames.
    assert wait_until(lambda: all_heard(pool, 400), 60)
    assert wait_until(lambda: settled(pool), 60), pool.stats()
    stats = pool.stats()
    assert stats.dropped_by_reason["stale"] > 0 and stats.inferred > 0
    assert stats.dropped == stats.dropped_by_reason["stale"]
    assert stats.latency_p99_s < 3.0, stats
    assert "each waited over max_wait (0.5 s)" in pool.log_paths[0].read_text()


def stop_with_backlog(pool: ConsumerPool, source, frames: int, seed: int) -> tuple[int, object]:
    """Send ``frames`` at once, stop the pool once its worker has them all; the frames it
    received and its final counts."""
    source.publish_frames(poisson_frames(frames, seed=seed))
    assert wait_until(lambda: all_heard(pool, frames), 60)
    received = pool.stats().received
    pool.stop()
    (final,) = pool.final_counts
    return received, final


def test_stopping_with_a_backlog_counts_what_the_drain_left_as_dropped_stopped(slow_pool, source):
    pool = slow_pool(max_wait=600, stop_drain=1.0)
    received, final = stop_with_backlog(pool, source, 300, seed=2)
    assert final.received == received and final.unaccounted == 0, final
    assert final.dropped_by_reason["stopped"] > 0 and final.inferred > 0, final
    assert final.dropped == final.dropped_by_reason["stopped"]
    assert "stop_drain (1 s) ran out" in pool.log_paths[0].read_text()


def test_stopping_infers_the_backlog_that_stop_drain_allows(slow_pool, source):
    pool = slow_pool(max_wait=600, stop_drain=120)
    received, final = stop_with_backlog(pool, source, 120, seed=3)
    assert final.received == received and final.inferred == received and final.dropped == 0
