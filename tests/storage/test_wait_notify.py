"""Client.wait's wake-up: a finish sends orchwf_done only for an instance someone watches
(sql/api/finish.sql, orchwf_notify_done), because a NOTIFY takes a cluster-wide lock
through the commit's WAL flush. A waiter holds its instance's advisory key in share mode;
the finish tries the key exclusively until its commit, so a waiter that comes during the
finish blocks until the commit and then reads the instance finished."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from storagekit import connect

from orchwf import Client
from orchwf.db.queries import ClaimRequest, Queries
from orchwf.db.rows import StepResult

Q = Queries.of("public")
ONE = "one_step"


def _define(conn: psycopg.Connection[Any]) -> None:
    conn.execute("INSERT INTO orchwf_workflow_definitions (workflow_id, name, version_hash, definition)"
                 " VALUES (%s, %s, 'h1', %s) ON CONFLICT DO NOTHING",
                 (ONE, ONE, Jsonb({"steps": [{"id": "a", "dependencies": [], "dependents": []}]})))


def _enqueue(conn: psycopg.Connection[Any], n: int) -> list[str]:
    row = conn.execute("SELECT orchwf_enqueue_many(%s, %s::jsonb[]) AS ids",
                       (ONE, [Jsonb({"n": i}) for i in range(n)])).fetchone()
    assert row is not None
    return [str(i) for i in row[0]]


def _claim(conn: psycopg.Connection[Any], n: int) -> dict[str, Any]:
    """The steps of the ``n`` ready instances, by instance ID."""
    claimed = Q.claim_steps(conn, ClaimRequest("w-notify", ["default"], [ONE], 500, 60))
    assert len(claimed) == n
    return {str(c.workflow_inst_id): c for c in claimed}


def _complete(conn: psycopg.Connection[Any], steps: list[Any]) -> None:
    """Complete these claimed steps in one finish (their instances end)."""
    accepted = Q.finish_steps(conn, [StepResult(c.step_inst_id, c.lease_token, "completed", {}, None, 1)
                                     for c in steps])
    assert len(accepted) == len(steps) and all(accepted.values())


def _finish(conn: psycopg.Connection[Any], instance_ids: list[str]) -> None:
    """Claim and complete the steps of these (the only ready) instances, in one finish."""
    steps = _claim(conn, len(instance_ids))
    _complete(conn, [steps[i] for i in instance_ids])


def _listener(dsn: str) -> psycopg.Connection[Any]:
    listener = connect(dsn)
    Q.listen(listener, "orchwf_done")
    return listener


def _done_notifications(listener: psycopg.Connection[Any], settle: float = 0.5) -> int:
    """How many orchwf_done arrived: waits for a first one (up to 10 s), then ``settle``
    seconds more for any other."""
    count = 0
    for n in listener.notifies(timeout=10.0, stop_after=1):
        count += n.channel == "orchwf_done"
    for n in listener.notifies(timeout=settle):
        count += n.channel == "orchwf_done"
    return count


def test_a_finish_notifies_only_for_a_watched_instance(db_dsn: str) -> None:
    """Two instances finish one after the other: only the watched one's commit notifies.
    (Notifications arrive in commit order, so a notification of the first would be
    counted before the second's.)"""
    with connect(db_dsn) as conn, _listener(db_dsn) as plain, _listener(db_dsn) as watcher:
        _define(conn)
        unwatched, watched = _enqueue(conn, 2)
        Q.watch_instance(watcher, watched)
        steps = _claim(conn, 2)
        _complete(conn, [steps[unwatched]])
        _complete(conn, [steps[watched]])
        assert _done_notifications(plain) == 1
        assert _done_notifications(watcher, settle=0.1) == 1


def test_a_finish_of_many_instances_notifies_without_asking(db_dsn: str) -> None:
    """Over 64 ended instances in one finish, it notifies whether or not anyone watches
    (each key it took would be a lock-table entry until the commit); 64 do not."""
    with connect(db_dsn) as conn, _listener(db_dsn) as plain:
        _define(conn)
        _finish(conn, _enqueue(conn, 64))
        _finish(conn, _enqueue(conn, 65))
        assert _done_notifications(plain) == 1
        held = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()
        assert held == (0,), "the finish's keys are released with its commit"


def test_a_waiter_that_comes_during_the_finish_waits_for_its_commit(db_dsn: str) -> None:
    """A waiter that starts watching while the finish's transaction is open (after the
    finish found no one watching) blocks until the commit, then reads the instance
    finished: no wake-up is lost between the finish's question and its commit."""
    with connect(db_dsn) as conn, _listener(db_dsn) as watcher:
        _define(conn)
        [iid] = _enqueue(conn, 1)
        watched = threading.Event()
        pid = watcher.info.backend_pid

        def watch() -> None:
            Q.watch_instance(watcher, iid)
            watched.set()

        with conn.transaction():
            _finish(conn, [iid])
            thread = threading.Thread(target=watch, daemon=True)
            thread.start()
            with connect(db_dsn) as probe:
                deadline = time.monotonic() + 10
                while probe.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                                    (pid,)).fetchone() != ("Lock",):
                    assert time.monotonic() < deadline, "the waiter did not block on the finish's key"
                    time.sleep(0.02)
            assert not watched.is_set()
        thread.join(10)
        assert watched.is_set()
        row = conn.execute("SELECT status FROM orchwf_workflow_instances WHERE id = %s", (iid,)).fetchone()
        assert row == ("completed",)


def test_client_wait_watches_its_instance_while_it_waits(db_dsn: str) -> None:
    """Client.wait holds its instance's key in share mode while it waits, and returns
    the finished instance once the step is committed."""
    with connect(db_dsn) as conn:
        _define(conn)
        [iid] = _enqueue(conn, 1)
        result: list[Any] = []
        with Client(db_dsn) as client:
            thread = threading.Thread(target=lambda: result.append(client.wait(iid, timeout=30)), daemon=True)
            thread.start()
            deadline = time.monotonic() + 10
            while conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND mode = 'ShareLock'"
                               " AND objsubid = 2 AND objid::bigint = (uuid_hash(%s::uuid)::bigint & 4294967295)",
                               (iid,)).fetchone() != (1,):
                assert time.monotonic() < deadline, "Client.wait does not watch its instance"
                time.sleep(0.02)
            _finish(conn, [iid])
            thread.join(30)
        assert result and result[0].status.value == "completed"


def test_client_wait_outlives_a_finish_held_open_past_its_lock_timeout(db_dsn: str) -> None:
    """A finish held open in a long transaction: Client.wait's watch gives up after its
    lock timeout (2 s) instead of blocking past the wait's own timeout, and the wait
    finds the instance finished by its poll once the transaction commits."""
    with connect(db_dsn) as conn:
        _define(conn)
        [iid] = _enqueue(conn, 1)
        result: list[Any] = []
        errors: list[BaseException] = []

        def wait() -> None:
            try:
                with Client(db_dsn) as client:
                    result.append(client.wait(iid, timeout=30))
            except Exception as exc:  # reported below
                errors.append(exc)

        with conn.transaction():
            _finish(conn, [iid])
            thread = threading.Thread(target=wait, daemon=True)
            thread.start()
            time.sleep(3.0)  # past the watch's lock timeout
            assert thread.is_alive() and not errors
        thread.join(30)
        assert not errors, errors
        assert result and result[0].status.value == "completed"
