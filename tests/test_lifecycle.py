"""orchwf.lifecycle agrees with itself and with the SQL: the failure decision, the crash
budget and the compensation order; every Outcome is understood by orchwf_finish_steps
(and nothing else is); the Event catalogue is exactly what the engines write."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from proctools import children

from orchwf import (
    Client,
    NonRetryableError,
    RetryPolicy,
    RetryPolicyBuilder,
    StepBuilder,
    ValidationError,
    WorkflowBuilder,
)
from orchwf.db.connect import connect
from orchwf.db.errors import translate_errors
from orchwf.db.queries import ClaimRequest, Queries
from orchwf.db.rows import ClaimedStep, StepResult
from orchwf.lifecycle import (
    EVENT_MEANINGS,
    MIN_CRASH_BUDGET,
    Event,
    FailureDecision,
    Outcome,
    compensation_order,
    crash_budget,
    decide_failure,
)

sys.path.insert(0, str(Path(__file__).parent / "parity"))

import paritykit  # noqa: E402

Q = Queries.of("public")

# -- decide_failure ---------------------------------------------------------------------

policy = RetryPolicyBuilder().with_max_attempts(3).with_initial_interval(0.5).with_multiplier(3).build()


@pytest.mark.parametrize(("failures_before", "expected"), [
    (0, FailureDecision(Outcome.RETRY, 0.5)),   # first failure: retry after initial_interval
    (1, FailureDecision(Outcome.RETRY, 1.5)),   # second: x multiplier
    (2, FailureDecision(Outcome.FAILED)),       # third: max_attempts (3) used up
    (7, FailureDecision(Outcome.FAILED)),
])
def test_decide_failure_counts_every_attempt(failures_before: int, expected: FailureDecision) -> None:
    """Retry with backoff while attempts remain; then fail."""
    assert decide_failure(policy, True, RuntimeError("x"), failures_before) == expected


def test_decide_failure_optional_steps_are_skipped_not_failed() -> None:
    assert decide_failure(policy, False, RuntimeError("x"), 2) == FailureDecision(Outcome.SKIPPED)
    assert decide_failure(policy, False, RuntimeError("x"), 0) == FailureDecision(Outcome.RETRY, 0.5)
    assert decide_failure(policy, False, NonRetryableError("x"), 0) == FailureDecision(Outcome.SKIPPED)


def test_decide_failure_honours_retryable_errors() -> None:
    """Listed class names, base class names and message substrings retry; others fail at once."""
    picky = RetryPolicy(max_attempts=5, initial_interval=0, retryable_errors=("ConnectionError", "rate limited"))
    assert decide_failure(picky, True, ConnectionResetError("reset"), 0) == FailureDecision(Outcome.RETRY, 0.0)
    assert decide_failure(picky, True, RuntimeError("429 rate limited"), 0).outcome is Outcome.RETRY
    assert decide_failure(picky, True, ValueError("bad input"), 0) == FailureDecision(Outcome.FAILED)
    assert decide_failure(RetryPolicy(), True, NonRetryableError("no"), 0) == FailureDecision(Outcome.FAILED)
    assert decide_failure(RetryPolicy(max_attempts=1), True, RuntimeError("x"), 0) == FailureDecision(Outcome.FAILED)


def test_decide_failure_backoff_is_capped_and_jittered_within_bounds() -> None:
    capped = RetryPolicy(max_attempts=10, initial_interval=1, multiplier=10, max_interval=5)
    assert [decide_failure(capped, True, RuntimeError(), n).delay for n in range(3)] == [1, 5, 5]
    jittered = RetryPolicy(max_attempts=10, initial_interval=2, multiplier=2, max_interval=30, jitter=True)
    delays = [decide_failure(jittered, True, RuntimeError(), 1).delay for _ in range(200)]
    assert all(2.0 <= d <= 4.0 for d in delays) and len(set(delays)) > 1


# -- compensation_order and crash_budget --------------------------------------------------


@dataclass
class Done:
    name: str
    completed_at: datetime | None
    order: int


def test_compensation_order_is_newest_first_ties_by_execution_order_desc() -> None:
    t = datetime(2024, 1, 1, tzinfo=timezone.utc)
    steps = [Done("a", t, 0), Done("b", t + timedelta(seconds=2), 1), Done("c", t + timedelta(seconds=1), 2),
             Done("d", t + timedelta(seconds=2), 3), Done("e", None, 4)]
    got = compensation_order(steps, key=lambda s: (s.completed_at, s.order))
    assert [s.name for s in got] == ["d", "b", "c", "a", "e"]
    assert compensation_order([], key=lambda s: (s.completed_at, s.order)) == []


@pytest.mark.parametrize(("max_attempts", "budget"), [(1, 3), (2, 3), (3, 3), (5, 5), (10, 10)])
def test_crash_budget(max_attempts: int, budget: int) -> None:
    assert crash_budget(max_attempts) == budget == max(MIN_CRASH_BUDGET, max_attempts)


def _noop(ctx, data):
    return None


def _one_step(workflow_id: str, max_attempts: int = 1):
    return WorkflowBuilder(workflow_id, workflow_id).add_step(
        StepBuilder("s", "S", _noop).with_retry_policy(RetryPolicy(max_attempts=max_attempts, initial_interval=0))
        .build()).build()


def _claim(conn, worker: str, workflow_id: str, suspects: bool = False) -> list[ClaimedStep]:
    return Q.claim_steps(conn, ClaimRequest(worker, ["default"], [workflow_id], 1, 30.0, suspects))


@pytest.mark.parametrize("max_attempts", [1, 5])
def test_the_sql_rescue_uses_crash_budget(db_dsn: str, max_attempts: int) -> None:
    """A step whose worker dies again and again fails at crash number crash_budget()."""
    workflow_id = f"crashy{max_attempts}"
    with Client(db_dsn) as client, connect(db_dsn, application_name="orchwf-test") as conn:
        client.register_workflow(_one_step(workflow_id, max_attempts))
        iid = client.enqueue(workflow_id, {})
        outcomes, causes = [], []
        while not outcomes or outcomes[-1] == "requeue":
            worker = f"host:{uuid.uuid4().hex[:6]}:1"
            [step] = _claim(conn, worker, workflow_id, suspects=bool(outcomes))
            [rescued] = Q.rescue_process_steps(conn, worker)
            outcomes.append(rescued.outcome)
            causes.append(rescued.cause)
            assert len(outcomes) <= 20
        budget = crash_budget(max_attempts)
        assert outcomes == ["requeue"] * (budget - 1) + ["failed"]
        assert causes[-1].endswith(f"crash {budget} of at most {budget})")
        assert client.get_workflow(iid).status.value == "failed"


# -- outcomes: the finish understands every Outcome, and only those ------------------------

#: outcome -> (the step's status afterwards, the events the finish writes for it)
MEANING = {
    Outcome.COMPLETED: ("completed", ["step.completed"]),
    Outcome.FAILED: ("failed", ["step.failed"]),
    Outcome.SKIPPED: ("skipped", ["step.failed", "step.skipped"]),
    Outcome.RETRY: ("retrying", ["step.attempt_failed"]),
    Outcome.REQUEUE: ("retrying", ["step.rescued"]),
    Outcome.RELEASE: ("pending", ["step.released"]),
    Outcome.WAIT: ("pending", ["step.waiting"]),  # with a child_instance_id: step.child_started
}
# Written by durable waits, which the parity scenarios do not use: tests/daemon's
# test_child_workflows.py and test_signals.py assert them.
WAIT_EVENTS = {"step.child_started", "step.waiting"}


def test_meanings_cover_every_outcome() -> None:
    assert set(MEANING) == set(Outcome)
    assert {o for o in Outcome if o.is_final} == {Outcome.COMPLETED, Outcome.FAILED, Outcome.SKIPPED}


@pytest.mark.parametrize("outcome", list(Outcome))
def test_every_outcome_is_accepted_by_the_sql_finish(db_dsn: str, outcome: Outcome) -> None:
    """A stale token is not accepted (no error); the lease holder's result is, with the
    status and events lifecycle says."""
    with Client(db_dsn) as client, connect(db_dsn, application_name="orchwf-test") as conn:
        client.register_workflow(_one_step("one", max_attempts=3))
        iid = client.enqueue("one", {})
        [step] = _claim(conn, "host:1:1", "one")

        def result(token: int) -> StepResult:
            return StepResult(step.step_inst_id, token, outcome.value, {"x": 1}, "boom", 5, 0.0, {})

        with translate_errors():
            assert Q.finish_steps(conn, [result(step.lease_token + 1000)]) == {step.step_inst_id: False}
            assert Q.finish_steps(conn, [result(step.lease_token)]) == {step.step_inst_id: True}
        status, events = MEANING[outcome]
        inst = client.get_workflow(iid)
        assert inst.step("s").status.value == status
        kinds = [e.event_type for e in client.get_workflow_events(iid) if e.step_inst_id == str(step.step_inst_id)]
        assert kinds == ["step.started", *events]


@pytest.mark.parametrize("bad", ["done", "COMPLETED", "", "cancelled"])
def test_an_unknown_outcome_is_refused_as_a_validation_error(db_dsn: str, bad: str) -> None:
    """OW400, mapped to ValidationError; nothing changes, the lease still holds."""
    with Client(db_dsn) as client, connect(db_dsn, application_name="orchwf-test") as conn:
        client.register_workflow(_one_step("one"))
        iid = client.enqueue("one", {})
        [step] = _claim(conn, "host:1:1", "one")
        row = StepResult(step.step_inst_id, step.lease_token, bad, None, "boom", 1, 0.0, None)
        with pytest.raises(psycopg.Error) as raw:
            Q.finish_steps(conn, [row])
        assert raw.value.sqlstate == "OW400"
        with pytest.raises(ValidationError, match="unknown outcome"), translate_errors():
            Q.finish_steps(conn, [row])
        assert client.get_workflow(iid).step("s").status.value == "running"
        ok = StepResult(step.step_inst_id, step.lease_token, Outcome.COMPLETED.value, {}, None, 1, 0.0, {})
        assert Q.finish_steps(conn, [ok]) == {step.step_inst_id: True}


# -- events: the catalogue is what the engines write ------------------------------------------


def test_event_meanings_cover_the_catalogue() -> None:
    assert set(EVENT_MEANINGS) == set(Event)
    assert all(EVENT_MEANINGS[e].strip() for e in Event)


DAEMON_ONLY = {Event.STEP_RESCUED.value, Event.STEP_RELEASED.value}


def test_the_engines_write_exactly_the_catalogue(pg_server_dsn: str, pg_template_db: str) -> None:
    """Every parity scenario on both engines, then a worker killed (-9) mid-step and a
    daemon stopped at once (SIGQUIT) mid-step: every event type seen is in the catalogue,
    the daemon writes every one of them, the in-process engine all but its two."""
    catalogue = {e.value for e in Event}
    seen: dict[str, set[str]] = {"inproc": set(), "daemon": set()}
    with paritykit.fresh_database(pg_server_dsn, pg_template_db, "orchwf_lc_inproc") as a, \
            paritykit.fresh_database(pg_server_dsn, pg_template_db, "orchwf_lc_daemon") as b:
        inproc, daemon = paritykit.InProcess(a), paritykit.Daemon(b)
        try:
            for engine in (inproc, daemon):
                for scenario in paritykit.SCENARIOS:
                    snap = paritykit.run_scenario(engine, scenario)
                    seen[engine.name] |= {e.event_type for e in snap.events}
            with tempfile.TemporaryDirectory() as scratch:
                seen["daemon"] |= _crash_and_quit(daemon, Path(scratch))
        finally:
            daemon.close()
            inproc.close()
    assert seen["inproc"] | seen["daemon"] <= catalogue, "an event type outside lifecycle.Event"
    assert seen["daemon"] == catalogue - WAIT_EVENTS
    assert seen["inproc"] == catalogue - DAEMON_ONLY - WAIT_EVENTS


def _crash_and_quit(daemon: paritykit.Daemon, scratch: Path) -> set[str]:
    """step.rescued (a worker killed mid-step), then step.released (SIGQUIT mid-step)."""
    supervisor = daemon.process.proc.pid
    crash, quit_ = scratch / "crash", scratch / "quit"
    crash.mkdir()
    quit_.mkdir()
    meta = paritykit.meta_for(daemon, crash)
    killed = daemon.start("p_cancel", {"order": 1}, meta)
    paritykit.wait_until(lambda: os.path.exists(meta["started"]), "the gate step to start")
    for pid in children(supervisor):
        os.kill(pid, signal.SIGKILL)
    paritykit.wait_until(lambda: "step.rescued" in _kinds(daemon, killed), "the rescue")
    Path(meta["gate"]).touch()  # the rerun (on the quarantine worker) passes the gate
    assert daemon.wait(killed).status.value == "completed"

    meta = paritykit.meta_for(daemon, quit_)
    released = daemon.start("p_cancel", {"order": 2}, meta)
    paritykit.wait_until(lambda: os.path.exists(meta["started"]), "the gate step to start")
    daemon.process.proc.send_signal(signal.SIGQUIT)
    daemon.process.proc.wait(15)
    return _kinds(daemon, killed) | _kinds(daemon, released)


def _kinds(daemon: paritykit.Daemon, iid: str) -> set[str]:
    return {e.event_type for e in daemon.events(iid)}
