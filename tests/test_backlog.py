"""A worker that cannot keep up, and a pool stopped with frames still queued: every frame
ends inferred or dropped with its reason, and the backlog stays bounded.

The workers run the bundled demo model on one CPU thread (tens of frames a second on
the 2-core machine), fed hundreds of frames a second, so a backlog builds at once.
"""

from __future__ import annotations

import pytest
from frames import poisson_frames
from pva_consumers import wait_until
from pva_source import FrameSource

from ptychonn_ophyd.models.bundled import demo_model_path
from ptychonn_ophyd.pool import ConsumerPool
from ptychonn_ophyd.settings import PoolConfig

pytestmark = [pytest.mark.processes, pytest.mark.timeout(180)]


@pytest.fixture
def source(channel_prefix):
    with FrameSource(f"{channel_prefix}:image") as frames:
        yield frames


@pytest.fixture
def slow_pool(tmp_path, channel_prefix):
    """Start a one-worker pool of the demo model with ``settings``; stopped after the test."""
    pools: list[ConsumerPool] = []

    def start(**settings) -> ConsumerPool:
        config = PoolConfig(
            model=demo_model_path(),
            input_channel=f"{channel_prefix}:image",
            output_prefix=channel_prefix,
            backend="onnxruntime",
            threads=1,
            status_period=0.2,
            log_dir=tmp_path / f"pool-{len(pools) + 1}",
            **settings,
        )
        pool = ConsumerPool(config)
        pools.append(pool)
        pool.start(timeout=120)
        return pool

    yield start
    for pool in pools:
        pool.stop()


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


def test_stopping_with_a_backlog_counts_what_the_drain_left_as_dropped_stopped(slow_pool, source):
    pool = slow_pool(max_wait=600, stop_drain=1.0)
    source.publish_frames(poisson_frames(300, seed=2))
    assert wait_until(lambda: all_heard(pool, 300), 60)
    received = pool.stats().received
    pool.stop()
    (final,) = pool.final_counts
    assert final.received == received and final.unaccounted == 0, final
    assert final.dropped_by_reason["stopped"] > 0 and final.inferred > 0, final
    assert final.dropped == final.dropped_by_reason["stopped"]
    assert "stop_drain (1 s) ran out" in pool.log_paths[0].read_text()


def test_stopping_infers_the_backlog_that_stop_drain_allows(slow_pool, source):
    pool = slow_pool(max_wait=600, stop_drain=120)
    source.publish_frames(poisson_frames(120, seed=3))
    assert wait_until(lambda: all_heard(pool, 120), 60)
    received = pool.stats().received
    pool.stop()
    (final,) = pool.final_counts
    assert final.received == received and final.inferred == received and final.dropped == 0
