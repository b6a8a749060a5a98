"""Suspects and the quarantine worker: the steps a dead worker was running come back to
the queue as suspects, which only a quarantine worker claims, one at a time."""

from __future__ import annotations

import time

import psycopg
import pytest
from daemonkit import executions, wait_for
from proctools import children

from orchwf import Client, WorkflowStatus

CLAIM = "SELECT step_inst_id FROM orchwf_claim_steps(%s, '{default}', '{single}', %s, 30, %s)"


def claim(conn: psycopg.Connection, worker: str, limit: int, suspects: bool = False) -> list:
    return [r[0] for r in conn.execute(CLAIM, (worker, limit, suspects)).fetchall()]


def suspects_waiting(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT suspects FROM orchwf_maintain('nobody', false, '{default}', '{single}')").fetchone()
    return bool(row[0])


def test_a_dead_workers_steps_come_back_as_suspects_for_the_quarantine_only(client: Client, app_db: str) -> None:
    client.enqueue_many("single", [{} for _ in range(3)])
    with psycopg.connect(app_db, autocommit=True) as conn:
        held = claim(conn, "host:1:1", 10)
        assert len(held) == 3 and not suspects_waiting(conn)
        rescued = conn.execute("SELECT step_inst_id, outcome FROM orchwf_rescue_steps('host:1:1')").fetchall()
        assert sorted(rescued) == sorted((i, "requeue") for i in held)
        assert conn.execute("SELECT count(*) FILTER (WHERE suspect), count(*) FROM orchwf_ready_steps"
                            ).fetchone() == (3, 3)
        assert suspects_waiting(conn)
        # an ordinary worker passes them by, and still gets new work
        fresh = client.enqueue("single", {})
        got = claim(conn, "host:2:1", 10)
        assert len(got) == 1
        assert conn.execute("SELECT workflow_inst_id::text FROM orchwf_step_instances WHERE id = %s",
                            (got[0],)).fetchone()[0] == fresh
        # the quarantine takes them one at a time (it runs with one slot)
        first = claim(conn, "host:3:1", 1, suspects=True)
        assert len(first) == 1 and first[0] in held
        rest = claim(conn, "host:3:1", 10, suspects=True)
        assert sorted([*first, *rest]) == sorted(held)
        assert not suspects_waiting(conn)
        assert conn.execute("SELECT count(*) FROM orchwf_ready_steps").fetchone()[0] == 0


def test_a_suspect_stays_one_through_a_retry_and_resume_clears_it(client: Client, app_db: str) -> None:
    iid = client.enqueue("single", {})
    with psycopg.connect(app_db, autocommit=True) as conn:
        [sid] = claim(conn, "host:1:1", 1)
        conn.execute("SELECT * FROM orchwf_rescue_steps('host:1:1')")
        [again] = claim(conn, "host:2:1", 1, suspects=True)
        token = conn.execute("SELECT lease_token FROM orchwf_step_instances WHERE id = %s", (sid,)).fetchone()[0]
        # a failed attempt with a backoff: promoted later, still a suspect
        conn.execute("SELECT * FROM orchwf_finish_steps(%s, %s, '{retry}', '{NULL}', '{boom}', '{1}', '{0.01}')",
                     ([again], [token]))
        time.sleep(0.05)
        assert conn.execute("SELECT orchwf_promote_scheduled()").fetchone()[0] == 1
        assert conn.execute("SELECT suspect FROM orchwf_ready_steps WHERE step_inst_id = %s", (sid,)).fetchone()[0]
        assert claim(conn, "host:2:1", 1) == []
        [third] = claim(conn, "host:3:1", 1, suspects=True)
        token = conn.execute("SELECT lease_token FROM orchwf_step_instances WHERE id = %s", (sid,)).fetchone()[0]
        conn.execute("SELECT * FROM orchwf_finish_steps(%s, %s, '{failed}', '{NULL}', '{boom}', '{1}', '{0}')",
                     ([third], [token]))
        assert client.get_workflow(iid).status == WorkflowStatus.FAILED
        # resume starts the step afresh: no crashes, no suspicion
        assert conn.execute("SELECT orchwf_resume_workflow(%s)", (iid,)).fetchone()[0] == "running"
        assert claim(conn, "host:4:1", 1) == [sid]


@pytest.mark.slow
def test_the_supervisor_runs_a_quarantine_worker_while_suspects_wait(client: Client, start_daemon,
                                                                      app_db: str) -> None:
    # suspects left by a worker (of another host) that died
    ids = client.enqueue_many("single", [{} for _ in range(3)])
    with psycopg.connect(app_db, autocommit=True) as conn:
        assert len(claim(conn, "elsewhere:1:1", 10)) == 3
        conn.execute("SELECT * FROM orchwf_rescue_steps('elsewhere:1:1')")
    daemon = start_daemon("--workers", "1", "--concurrency", "4")
    for iid in ids:
        assert client.wait(iid, timeout=30).status == WorkflowStatus.COMPLETED
    [worker] = [p for p in daemon.worker_pids() if p not in
                {pid for iid in ids for _, _, _, pid, _ in executions(app_db, iid)}]
    pids = {pid for iid in ids for _, _, _, pid, _ in executions(app_db, iid)}
    assert len(pids) == 1  # all three ran in the one quarantine process, not in the worker
    quarantine = pids.pop()
    assert quarantine in children(daemon.proc.pid)
    with psycopg.connect(app_db) as conn:
        roles = dict(conn.execute("SELECT pid, role FROM orchwf_workers WHERE pid = ANY(%s)",
                                  ([worker, quarantine],)).fetchall())
    assert roles == {worker: "worker", quarantine: "quarantine"}
    # it leaves once no suspect has come for a while; the ordinary worker stays
    wait_for(lambda: quarantine not in children(daemon.proc.pid), timeout=30, what="the quarantine worker to exit")
    assert daemon.worker_pids(expected=1) == [worker]
    assert "quarantine worker" in daemon.output()
