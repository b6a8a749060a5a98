"""The workers' wake-up (orchwf_ready) for steps a finish makes ready: a dependent it
releases, a concurrency key's waiter it admits. Each notification wakes every worker of
every supervisor to claim, so a finish that claims in the same transaction
(orchwf_finish_and_claim) announces only the steps its own claim left; a finish without
a claim announces them at once (sql/api/finish.sql, orchwf_announce_ready)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb
from storagekit import WORKFLOW, connect, define_workflow, enqueue

from orchwf.db.queries import ClaimRequest, Queries
from orchwf.db.rows import ClaimedStep, StepResult

Q = Queries.of("public")
KEYED = "keyed_one"  # one step with a concurrency key of limit 1


def _claim(conn: psycopg.Connection[Any], workflow: str, limit: int) -> list[ClaimedStep]:
    return Q.claim_steps(conn, ClaimRequest("w-announce", ["default"], [workflow], limit, 60))


def _done(steps: list[ClaimedStep]) -> list[StepResult]:
    return [StepResult(s.step_inst_id, s.lease_token, "completed", {}, None, 1) for s in steps]


def _listener(dsn: str) -> psycopg.Connection[Any]:
    listener = connect(dsn)
    Q.listen(listener, "orchwf_ready")
    return listener


def _announced(listener: psycopg.Connection[Any], timeout: float = 1.0) -> list[str]:
    """The payloads of the orchwf_ready notifications that arrive within ``timeout``."""
    return [n.payload for n in listener.notifies(timeout=timeout) if n.channel == "orchwf_ready"]


def _ready_count(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT count(*) FROM orchwf_ready_steps").fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize(("limit", "announced", "left"), [(3, [], 0), (1, ["default"], 2)],
                         ids=["the claim takes every released dependent", "the claim leaves some"])
def test_a_finish_announces_only_the_dependents_its_claim_leaves(db_dsn: str, limit: int, announced: list[str],
                                                                 left: int) -> None:
    """Three instances' first steps finish and release three dependents: a claim of 3
    takes them all and wakes nobody; a claim of 1 leaves 2, whose queue is announced."""
    with connect(db_dsn) as conn:
        define_workflow(conn)
        enqueue(conn, 3)
        first = _claim(conn, WORKFLOW, 3)
        with _listener(db_dsn) as listener:
            acks, second = Q.finish_and_claim(conn, _done(first), ClaimRequest("w-announce", ["default"],
                                                                               [WORKFLOW], limit, 60))
            assert all(acks.values()) and {s.step_id for s in second} == {"b"} and len(second) == limit
            assert _announced(listener) == announced
        assert _ready_count(conn) == left


def test_each_queue_is_announced_only_if_the_claim_left_one_of_its_steps(db_dsn: str) -> None:
    """One finish releases a dependent in each of two queues; its claim serves only the
    first: the second queue is announced, the first is not (the decision is per queue)."""
    with connect(db_dsn) as conn:
        define_workflow(conn)
        enqueue(conn, 1, queue="served")
        enqueue(conn, 1, queue="unserved")
        first = Q.claim_steps(conn, ClaimRequest("w-announce", ["served", "unserved"], [WORKFLOW], 2, 60))
        assert len(first) == 2
        with _listener(db_dsn) as listener:
            acks, second = Q.finish_and_claim(conn, _done(first), ClaimRequest("w-announce", ["served"],
                                                                               [WORKFLOW], 5, 60))
            assert all(acks.values()) and [s.step_id for s in second] == ["b"]
            assert _announced(listener) == ["unserved"]
        assert _ready_count(conn) == 1


def test_a_finish_without_a_claim_announces_what_it_released(db_dsn: str) -> None:
    with connect(db_dsn) as conn:
        define_workflow(conn)
        enqueue(conn, 2, queue="other")
        first = Q.claim_steps(conn, ClaimRequest("w-announce", ["other"], [WORKFLOW], 2, 60))
        with _listener(db_dsn) as listener:
            assert all(Q.finish_steps(conn, _done(first)).values())
            assert _announced(listener) == ["other"]
            # and a later finish-and-claim of the same session still defers (the setting
            # is the transaction's, not left behind by an earlier one)
            second = Q.claim_steps(conn, ClaimRequest("w-announce", ["other"], [WORKFLOW], 2, 60))
            Q.finish_and_claim(conn, _done(second), ClaimRequest("w-announce", ["other"], [WORKFLOW], 2, 60))
            assert _announced(listener, timeout=0.5) == []


def test_a_keys_waiter_admitted_by_a_finish_is_announced_only_if_its_claim_leaves_it(db_dsn: str) -> None:
    with connect(db_dsn) as conn:
        conn.execute("INSERT INTO orchwf_workflow_definitions (workflow_id, name, version_hash, definition)"
                     " VALUES (%s, %s, 'h1', %s)",
                     (KEYED, KEYED, Jsonb({"steps": [{"id": "s", "dependencies": [], "dependents": [],
                                                      "concurrency": {"key": "k:{k}", "limit": 1}}]})))
        conn.execute("SELECT orchwf_enqueue_many(%s, %s::jsonb[])", (KEYED, [Jsonb({"k": 1})] * 3))
        assert _ready_count(conn) == 1  # the other two wait for the key's slot
        [running] = _claim(conn, KEYED, 5)
        with _listener(db_dsn) as listener:
            # the finish frees the slot and admits the next waiter; its own claim takes it
            _, claimed = Q.finish_and_claim(conn, _done([running]),
                                            ClaimRequest("w-announce", ["default"], [KEYED], 5, 60))
            assert len(claimed) == 1 and claimed[0].workflow_inst_id != running.workflow_inst_id
            assert _announced(listener) == []
            # a finish with no claim: the last waiter is admitted and announced
            assert all(Q.finish_steps(conn, _done(claimed)).values())
            assert _announced(listener) == ["default"]
        assert _ready_count(conn) == 1
