"""The worker's group-commit rule (orchwf/daemon/worker.py ``flush_due``): results that
finish together share a commit; a result nothing follows is committed at once."""

from __future__ import annotations

from orchwf.daemon.worker import FLUSH_LINGER, FLUSH_MAX, FLUSH_QUIET, flush_due

T = 1000.0  # a monotonic clock reading (the checks at a threshold step just past it: floats)


def test_a_result_waits_while_others_keep_arriving() -> None:
    # 3 of 10 running steps have finished, the latest just now: more are coming
    assert not flush_due(T + FLUSH_QUIET / 2, unfinished=3, inflight=10, oldest_at=T, latest_at=T)


def test_results_are_committed_once_none_has_arrived_for_the_quiet_gap() -> None:
    assert flush_due(T + FLUSH_QUIET * 1.01, unfinished=1, inflight=10, oldest_at=T, latest_at=T)
    # the gap counts from the latest result, not the oldest
    assert not flush_due(T + FLUSH_QUIET * 1.5, unfinished=2, inflight=10, oldest_at=T,
                         latest_at=T + FLUSH_QUIET)


def test_a_steady_stream_of_results_waits_no_longer_than_the_linger() -> None:
    latest = T + FLUSH_LINGER - FLUSH_QUIET / 10  # one arrived a moment ago
    assert not flush_due(T + FLUSH_LINGER - FLUSH_QUIET / 20, unfinished=5, inflight=10, oldest_at=T,
                         latest_at=latest)
    assert flush_due(T + FLUSH_LINGER * 1.01, unfinished=5, inflight=10, oldest_at=T, latest_at=latest)


def test_no_wait_when_nothing_else_runs_the_batch_is_full_or_the_worker_stops() -> None:
    assert flush_due(T, unfinished=4, inflight=4, oldest_at=T, latest_at=T)
    assert flush_due(T, unfinished=FLUSH_MAX, inflight=FLUSH_MAX + 50, oldest_at=T, latest_at=T)
    assert flush_due(T, unfinished=1, inflight=10, oldest_at=T, latest_at=T, stopping=True)
    assert not flush_due(T, unfinished=1, inflight=10, oldest_at=T, latest_at=T)


def test_the_quiet_gap_is_shorter_than_the_linger() -> None:
    assert 0 < FLUSH_QUIET < FLUSH_LINGER
