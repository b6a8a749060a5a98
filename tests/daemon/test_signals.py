"""Signals (orchwf.wait_for_signal, Client.signal, orchwf_signal in SQL) in the daemon: a
waiting step holds nothing and completes with the payload; a signal sent early is kept;
one sent in a rolled-back transaction never arrives; each is received exactly once, with
workers killed meanwhile; a timeout fails the step; bad input changes nothing."""

from __future__ import annotations

import os
import signal as signals
import time
import uuid

import psycopg
import pytest
from daemonkit import executions, wait_for

from orchwf import (
    Client,
    InvalidStateError,
    ValidationError,
    WorkflowNotFoundError,
    wait_for_signal,
)
from orchwf.client import signal

pytestmark = pytest.mark.slow


def _status(dsn: str, ids: list[str]) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT id::text, status FROM orchwf_workflow_instances WHERE id = ANY(%s::uuid[])",
                                 (ids,)).fetchall())


def _step(dsn: str, instance: str, step_id: str) -> tuple:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT status, output, error FROM orchwf_step_instances"
                            " WHERE workflow_inst_id = %s AND step_id = %s", (instance, step_id)).fetchone()


def _waiting(dsn: str, ids: list[str]) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM orchwf_live_steps WHERE workflow_inst_id = ANY(%s::uuid[])"
                            " AND step_id = 'approve' AND status = 'pending' AND pending_deps = 0",
                            (ids,)).fetchone()[0]


def test_a_waiting_step_holds_nothing_and_completes_with_the_payload(client: Client, app_db: str,
                                                                     start_daemon) -> None:
    start_daemon("--workers", "1", "--concurrency", "4")
    ids = [client.enqueue("approval", {}) for _ in range(30)]
    wait_for(lambda: _waiting(app_db, ids) == 30, 30, "every instance to wait for its approval")
    time.sleep(0.5)
    with psycopg.connect(app_db) as conn:
        ready = conn.execute("SELECT count(*) FROM orchwf_ready_steps").fetchone()[0]
        running = conn.execute("SELECT count(*) FROM orchwf_running_steps").fetchone()[0]
        in_tx = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                             " AND state LIKE 'idle in transaction%%'").fetchone()[0]
    assert (ready, running, in_tx) == (0, 0, 0)
    assert set(_status(app_db, ids).values()) == {"running"}
    from orchwf.dashboard import pages
    from orchwf.dashboard.queries import Queries as DashboardQueries
    from orchwf.dashboard.server import make_pool

    with make_pool(app_db, max_size=1) as pool:  # the step shows what it waits for
        page = pages.instance_page(DashboardQueries(pool, "public").instance(ids[0]), pages.View(csrf_token="t"))
    assert '<span class="waits">signal <code>approval</code></span>' in page
    for n, instance in enumerate(ids):
        client.signal(instance, "approval", {"approved_by": f"user{n}"})
    wait_for(lambda: set(_status(app_db, ids).values()) == {"completed"}, 30, "the approvals")
    for n, instance in enumerate(ids):
        assert _step(app_db, instance, "approve")[:2] == ("completed", {"approved_by": f"user{n}"})
    assert sum(1 for row in executions(app_db) if row[1] == "b") == 30


def test_a_signal_sent_before_the_step_waits_is_kept(client: Client, app_db: str, start_daemon) -> None:
    instance = client.enqueue("approval", {})  # no daemon yet: step a has not run
    client.signal(instance, "approval", {"early": True})
    start_daemon("--workers", "1")
    wait_for(lambda: _status(app_db, [instance]) == {instance: "completed"}, 30, "the early approval")
    assert _step(app_db, instance, "approve")[1] == {"early": True}


def test_a_signal_in_a_rolled_back_transaction_never_arrives(client: Client, app_db: str, start_daemon) -> None:
    start_daemon("--workers", "1")
    instance = client.enqueue("approval", {})
    wait_for(lambda: _waiting(app_db, [instance]) == 1, 30, "the wait")
    with psycopg.connect(app_db) as conn:  # the app's own transaction
        signal(conn, instance, "approval", {"n": 1})
        conn.rollback()
    time.sleep(1.5)
    assert _status(app_db, [instance]) == {instance: "running"}
    with psycopg.connect(app_db) as conn:
        assert conn.execute("SELECT count(*) FROM orchwf_signals").fetchone()[0] == 0
        signal(conn, instance, "approval", {"n": 2})
        conn.commit()
    wait_for(lambda: _status(app_db, [instance]) == {instance: "completed"}, 30, "the committed signal")
    assert _step(app_db, instance, "approve")[1] == {"n": 2}


def test_a_waiting_step_completes_in_the_signals_own_transaction(client: Client, app_db: str) -> None:
    """No worker runs: the signal claims the waiting step under a fresh lease token and
    finishes it as a worker would (output, events, the dependent released), consuming the
    signal in the same transaction. A second signal of the name is kept."""
    instance = client.enqueue("signal_first", {"x": 1})
    with psycopg.connect(app_db) as conn:
        assert conn.execute("SELECT count(*) FROM orchwf_ready_steps").fetchone()[0] == 0  # it waits
    first, second = client.signal_many([(instance, "go", {"ok": 1}), (instance, "go", {"ok": 2})])
    assert second > first
    assert _step(app_db, instance, "wait")[:2] == ("completed", {"ok": 1})
    with psycopg.connect(app_db) as conn:
        ready = conn.execute("SELECT s.step_id FROM orchwf_ready_steps r JOIN orchwf_live_steps s"
                             " ON s.id = r.step_inst_id WHERE r.workflow_inst_id = %s", (instance,)).fetchall()
        events = [r[0] for r in conn.execute(
            "SELECT e.event_type FROM orchwf_workflow_events e JOIN orchwf_step_instances s ON s.id = e.step_inst_id"
            " WHERE e.workflow_inst_id = %s AND s.step_id = 'wait' ORDER BY e.id", (instance,)).fetchall()]
        attempts, lease = conn.execute("SELECT attempts, lease_token FROM orchwf_live_steps"
                                       " WHERE workflow_inst_id = %s AND step_id = 'wait'", (instance,)).fetchone()
        kept = conn.execute("SELECT id, consumed_by IS NOT NULL FROM orchwf_signals WHERE workflow_inst_id = %s"
                            " ORDER BY id", (instance,)).fetchall()
        running = conn.execute("SELECT count(*) FROM orchwf_running_steps").fetchone()[0]
    assert ready == [("after",)]
    assert events == ["step.started", "step.completed"]
    assert (attempts, lease, running) == (1, None, 0)
    assert kept == [(first, True), (second, False)]


def test_a_batch_of_signals_is_all_or_nothing(client: Client, app_db: str) -> None:
    """signal_many: one refused signal (a finished instance here) refuses the batch, and
    nothing of it is stored or completed; a reserved name is refused."""
    live = client.enqueue_many("signal_first", [{}, {}])
    done = client.enqueue("signal_first", {})
    client.signal(done, "go")
    client.cancel_workflow(done)
    with pytest.raises(InvalidStateError):
        client.signal_many([(live[0], "go", {}), (done, "go", {}), (live[1], "go", {})])
    with pytest.raises(ValidationError, match="reserved"):
        client.signal(live[0], "orchwf:child:x")
    with psycopg.connect(app_db) as conn:
        assert conn.execute("SELECT count(*) FROM orchwf_signals WHERE workflow_inst_id = ANY(%s::uuid[])",
                            (live,)).fetchone()[0] == 0
    assert {_step(app_db, i, "wait")[0] for i in live} == {"pending"}
    assert client.signal_many([]) == []


def test_signals_are_received_exactly_once_while_workers_are_killed(client: Client, app_db: str,
                                                                      start_daemon) -> None:
    """Two signals for each of 300 instances (one step waits for each): every instance
    takes exactly one, its first, whatever kill -9 does to the workers meanwhile."""
    daemon = start_daemon("--workers", "2", "--concurrency", "8", "--lease-seconds", "2")
    ids = client.enqueue_many("approval", [{} for _ in range(300)])
    wait_for(lambda: _waiting(app_db, ids) >= 250, 60, "most instances to wait")
    with psycopg.connect(app_db, autocommit=True) as conn:
        for instance in ids:
            conn.execute("SELECT orchwf_signal(%s, 'approval', %s::jsonb)", (instance, '{"first": true}'))
    for _ in range(3):  # kill workers while the waits complete
        time.sleep(0.3)
        for pid in daemon.worker_pids():
            os.kill(pid, signals.SIGKILL)
    with psycopg.connect(app_db, autocommit=True) as conn:
        for instance in ids:
            if _status(app_db, [instance])[instance] == "running":
                try:
                    conn.execute("SELECT orchwf_signal(%s, 'approval', %s::jsonb)", (instance, '{"first": false}'))
                except psycopg.Error as exc:  # it finished since: its wait took the first signal
                    assert exc.sqlstate == "OW409", exc
    wait_for(lambda: set(_status(app_db, ids).values()) == {"completed"}, 120, "every instance")
    with psycopg.connect(app_db) as conn:
        outputs = dict(conn.execute("SELECT workflow_inst_id::text, output FROM orchwf_step_instances"
                                    " WHERE workflow_inst_id = ANY(%s::uuid[]) AND step_id = 'approve'",
                                    (ids,)).fetchall())
        left = conn.execute("SELECT count(*) FROM orchwf_signals").fetchone()[0]
    assert all(out == {"first": True} for out in outputs.values()), "a step took a later signal than its first"
    assert len(outputs) == 300 and left == 0  # the signals went with their finished instances


def test_a_wait_that_times_out_fails_and_retries(client: Client, app_db: str, start_daemon) -> None:
    start_daemon("--workers", "1")
    t0 = time.monotonic()
    instance = client.enqueue("impatient", {})
    wait_for(lambda: _status(app_db, [instance]) == {instance: "failed"}, 30, "the timeout")
    status, _, error = _step(app_db, instance, "wait")
    assert status == "failed" and "no signal 'go' within 1s" in error
    assert time.monotonic() - t0 >= 1.0


def test_bad_signals_are_refused_and_change_nothing(client: Client, app_db: str, start_daemon) -> None:
    start_daemon("--workers", "1")
    running = client.enqueue("approval", {})
    done = client.enqueue("single", {})
    wait_for(lambda: _waiting(app_db, [running]) == 1 and _status(app_db, [done]) == {done: "completed"}, 30,
             "one waiting, one finished")
    with pytest.raises(WorkflowNotFoundError):
        client.signal(str(uuid.uuid4()), "approval")
    with pytest.raises(WorkflowNotFoundError):
        client.signal("not-a-uuid", "approval")
    with pytest.raises(InvalidStateError, match="has finished"):
        client.signal(done, "approval")
    with pytest.raises(ValidationError, match="waits for a signal named 'nobody'"):
        client.signal(running, "nobody")
    with pytest.raises(ValidationError, match="signal payload"):
        client.signal(running, "approval", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="signal name"):
        client.signal(running, "")
    with psycopg.connect(app_db) as conn:
        assert conn.execute("SELECT count(*) FROM orchwf_signals").fetchone()[0] == 0
    assert _status(app_db, [running]) == {running: "running"}


def test_a_bad_wait_is_refused_at_definition() -> None:
    with pytest.raises(ValidationError, match="signal name"):
        wait_for_signal("w", "")
    with pytest.raises(ValidationError, match="signal timeout"):
        wait_for_signal("w", "go", timeout=-1)
    with pytest.raises(ValidationError, match="cannot also have a delay"):
        wait_for_signal("w", "go").with_delay(5).build()


def test_two_steps_waiting_for_one_name_take_one_signal_each(client: Client, app_db: str, start_daemon) -> None:
    """One signal (sent early), two steps released together that wait for its name: both
    are ready, one takes it, the other finds it taken and waits again (it does not fail);
    a second signal completes it."""
    instance = client.enqueue("two_waiters", {})
    client.signal(instance, "go", {"n": 1})
    start_daemon("--workers", "1", "--concurrency", "4")
    wait_for(lambda: sorted(_step(app_db, instance, s)[0] for s in ("first", "second")) == ["completed", "pending"],
             30, "one of the two to take the signal")
    time.sleep(1.0)
    assert _status(app_db, [instance]) == {instance: "running"}
    client.signal(instance, "go", {"n": 2})
    wait_for(lambda: _status(app_db, [instance]) == {instance: "completed"}, 30, "the second signal")
    outputs = sorted(_step(app_db, instance, s)[1]["n"] for s in ("first", "second"))
    assert outputs == [1, 2]
    with psycopg.connect(app_db) as conn:
        kinds = [r[0] for r in conn.execute("SELECT event_type FROM orchwf_workflow_events WHERE workflow_inst_id = %s",
                                            (instance,)).fetchall()]
    assert "step.waiting" in kinds  # the one that found its signal taken waited again


def _commits(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        return int(conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
                                ).fetchone()[0])


def test_ten_thousand_waiting_instances_hold_nothing_and_cost_an_idle_host_nothing(
        client: Client, app_db: str, start_daemon) -> None:
    start_daemon("--workers", "2", "--concurrency", "8")
    time.sleep(2.0)  # started and registered

    def idle_rate(seconds: float = 6.0) -> float:
        before = _commits(app_db)
        time.sleep(seconds)
        return (_commits(app_db) - before - 2) / seconds  # minus this measurement's own two

    quiet = idle_rate()
    for _ in range(10):
        client.enqueue_many("waits_first", [{} for _ in range(1000)])
    time.sleep(2.0)
    waiting = idle_rate()
    with psycopg.connect(app_db) as conn:
        parked = conn.execute("SELECT count(*) FROM orchwf_live_steps WHERE step_id = 'wait' AND status = 'pending'"
                              " AND pending_deps = 0").fetchone()[0]
        ready = conn.execute("SELECT count(*) FROM orchwf_ready_steps").fetchone()[0]
        running = conn.execute("SELECT count(*) FROM orchwf_running_steps").fetchone()[0]
        in_tx = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                             " AND state LIKE 'idle in transaction%%'").fetchone()[0]
    assert (parked, ready, running, in_tx) == (10_000, 0, 0, 0)
    # the daemon's own rate (heartbeats, maintenance rounds, polls): the same with 10,000 waiting
    assert waiting <= quiet * 1.5 + 1.0, (quiet, waiting)


def test_an_approval_that_times_out_is_compensated(client: Client, app_db: str, start_daemon) -> None:
    """The README's approval workflow: no approval in time, the wait fails, and the
    reservation's compensator runs; pay never does."""
    start_daemon("--workers", "1")
    instance = client.enqueue("approval_timeout", {})
    wait_for(lambda: _status(app_db, [instance]) == {instance: "failed"}, 30, "the timeout")
    wait_for(lambda: any(r[1] == "reserve" and r[4] == "compensated" for r in executions(app_db)
                         if r[0] == instance), 30, "the compensation")
    ran = [(r[1], r[4]) for r in executions(app_db) if r[0] == instance]
    assert not any(step == "pay" for step, _ in ran) and ran[0] == ("reserve", "")
    assert "no signal 'approved' within 1s" in _step(app_db, instance, "approval")[2]
