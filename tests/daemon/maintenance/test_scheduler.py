"""Scheduler: a retry waiting for its backoff is promoted once due; next_due reports the
wait before that; next_round bounds the supervisor's sleep."""

from __future__ import annotations

import pytest
from maintkit import (
    SCHEMA,
    claim,
    connection,
    details,
    finish,
    wait_until,
    worker_id,
)

from orchwf import Client
from orchwf.daemon.maintenance import scheduler
from orchwf.daemon.maintenance.scheduler import Scheduler, ScheduleResult
from orchwf.lifecycle import Outcome

BACKOFF = 0.6


def test_a_backed_off_retry_is_promoted_when_due(client: Client, app_db: str) -> None:
    """Not claimable before its backoff; promoted (and claimable) after; next_due said when."""
    client.enqueue("single", {})
    sched = Scheduler(SCHEMA)
    with connection(app_db) as conn:
        assert sched.run_once(conn) == ScheduleResult(0, None)  # nothing scheduled
        [step] = claim(conn, worker_id())
        assert finish(conn, step, Outcome.RETRY, delay=BACKOFF, error="boom")

        early = sched.run_once(conn)
        assert early.promoted == 0
        assert early.next_due is not None and 0 < early.next_due <= BACKOFF
        assert claim(conn, worker_id()) == []  # still backing off

        wait_until(lambda: (details(conn, step).due_in or 0) < 0, "the backoff to pass")
        assert sched.run_once(conn).promoted == 1
        assert sched.run_once(conn) == ScheduleResult(0, None)
        [again] = claim(conn, worker_id())
        assert (again.step_inst_id, again.attempt, again.retry_count) == (step.step_inst_id, 2, 1)


def test_next_due_after_a_promotion_names_the_next_step(client: Client, app_db: str) -> None:
    """The round that promotes the only scheduled step reports nothing more to wait for."""
    client.enqueue("single", {})
    with connection(app_db) as conn:
        [step] = claim(conn, worker_id())
        assert finish(conn, step, Outcome.RETRY, delay=0.05, error="boom")
        wait_until(lambda: (details(conn, step).due_in or 0) < 0, "the backoff to pass")
        assert Scheduler(SCHEMA).run_once(conn) == ScheduleResult(1, None)


@pytest.mark.parametrize(("next_due", "found_work", "low", "high"), [
    (None, False, 0.9 * scheduler.IDLE_INTERVAL, 1.1 * scheduler.IDLE_INTERVAL),
    (None, True, 0.9 * scheduler.BUSY_INTERVAL, 1.1 * scheduler.BUSY_INTERVAL),
    (0.3, False, 0.3, 0.3),             # sooner when a step is due sooner
    (60.0, True, 0.9 * scheduler.BUSY_INTERVAL, 1.1 * scheduler.BUSY_INTERVAL),  # never later
    (0.0, False, 0.01, 0.01),           # due now (or overdue): at once, not a busy loop
    (-5.0, False, 0.01, 0.01),
])
def test_next_round_bounds(next_due: float | None, found_work: bool, low: float, high: float) -> None:
    """Jittered interval, capped by next_due, at least 10 ms."""
    for _ in range(50):
        assert low <= Scheduler.next_round(ScheduleResult(0, next_due), found_work) <= high
