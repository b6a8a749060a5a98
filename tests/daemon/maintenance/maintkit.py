"""Helpers of the maintenance-service tests: play a worker (claim, finish) through the
public data-access layer (orchwf.db.queries.Queries), never the tables."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import proctools
import psycopg

from orchwf.db.connect import connect
from orchwf.db.queries import ClaimRequest, Queries
from orchwf.db.rows import ClaimedStep, ProcessRegistration, StepDetails, StepResult
from orchwf.lifecycle import Outcome

SCHEMA = "public"
Q = Queries.of(SCHEMA)

#: A defect found by these tests (test_scheduler.py, test_maintenance_round.py).
NEXT_DUE_SNAPSHOT = (
    "Scheduler.run_once's next_due still counts the steps it has just promoted: the named query "
    "promote_scheduled (sql/queries/daemon.sql) computes min(run_after) in the same SELECT as "
    "orchwf_promote_scheduled(), so it reads the statement's snapshot taken before the promotion and "
    "reports the promoted step's (past) due time, e.g. -0.02 s, instead of None or the next step's; "
    "orchwf_maintain (sql/api/maintain.sql) reads it in a later statement and is right"
)



def connection(dsn: str) -> psycopg.Connection[Any]:
    """An autocommit connection, as the daemon's processes use."""
    return connect(dsn, application_name="orchwf-test")


def claim(conn: psycopg.Connection[Any], worker_id: str, *, workflows: tuple[str, ...] = ("single",),
          limit: int = 1, lease: float = 30.0, suspects: bool = False) -> list[ClaimedStep]:
    """Claim as ``worker_id`` would (the daemon's own statement)."""
    return Q.claim_steps(conn, ClaimRequest(worker_id, ["default"], list(workflows), limit, lease, suspects))


def finish(conn: psycopg.Connection[Any], step: ClaimedStep, outcome: Outcome, *, delay: float = 0.0,
           error: str | None = None, output: dict[str, Any] | None = None) -> bool:
    """Commit one result as a worker would; whether the fence accepted it."""
    acks = Q.finish_steps(conn, [StepResult(step.step_inst_id, step.lease_token, outcome.value, output, error,
                                            1, delay, {})])
    return acks[step.step_inst_id]


def register(conn: psycopg.Connection[Any], worker_id: str, supervisor_id: str = "host:1:0") -> None:
    Q.register_process(conn, ProcessRegistration(worker_id=worker_id, supervisor_id=supervisor_id, host="host",
                                                 pid=1, role="worker", queues=["default"], workflows=["single"],
                                                 concurrency=1))


def details(conn: psycopg.Connection[Any], step: ClaimedStep) -> StepDetails:
    [row] = [d for d in Q.step_details(conn, str(step.workflow_inst_id)) if d.step_inst_id == step.step_inst_id]
    return row


def ready(conn: psycopg.Connection[Any]) -> int:
    """Steps in the ready queue 'default' (suspects included)."""
    stats = Q.stats(conn, 1000, 60.0, 60.0)
    return sum(q.ready for q in stats.queues if q.queue == "default")


def step_events(client: Any, step: ClaimedStep) -> list[tuple[str, dict[str, Any]]]:
    return [(e.event_type, e.event_data) for e in client.get_workflow_events(str(step.workflow_inst_id))
            if e.step_inst_id == str(step.step_inst_id)]


def wait_until(predicate: Callable[[], object], what: str, timeout: float = 10.0) -> Any:
    return proctools.wait_for(predicate, timeout, what, poll=0.02)


def worker_id() -> str:
    return f"host:{uuid.uuid4().hex[:8]}:1"
