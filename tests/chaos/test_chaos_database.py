"""Scenarios 3, 4 and 7: the database restarts, drops connections, turns read-only."""

from __future__ import annotations

import random
import re
import threading
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest
from harness import PROFILE, connect, record_figures, wait_for, wait_until_done
from ledger import check_ledger
from psycopg import sql
from world import Chaos, prepare

from orchwf.db.migrations import migrate

pytestmark = [pytest.mark.slow, pytest.mark.timeout(PROFILE.timeout)]


def _executions(dsn: str) -> int:
    try:
        with connect(dsn) as conn:
            return int(conn.execute("SELECT count(*) FROM orchwf_chaos_exec").fetchone()[0])
    except psycopg.OperationalError:
        return 0


def test_database_restart_twice(embedded_server, tmp_path: Path) -> None:
    """3. The server is stopped and started twice mid-run: once cleanly (fast shutdown),
    once as a crash (immediate shutdown, crash recovery). Workers and the supervisor
    reconnect and finish the work."""
    dsn = embedded_server.dsn_for("chaos")
    with psycopg.connect(embedded_server.dsn, autocommit=True) as conn:
        conn.execute("CREATE DATABASE chaos")
        # the fixture's server trades durability for speed; orchwf's guarantees assume a
        # durable commit, which a crash must not take back
        conn.execute("ALTER DATABASE chaos SET synchronous_commit = on")
    migrate(dsn)
    prepare(dsn)
    world = Chaos(dsn, tmp_path)
    n = PROFILE.restart_workflows
    try:
        ids = world.enqueue("dag5", n, {"sleep": 0.01})
        daemon = world.start("--workers", "2", "--concurrency", "4", "--lease-seconds", "5")
        downtime = []
        for i, mode in enumerate(("fast", "immediate")):
            wait_for(lambda i=i: _executions(dsn) > (i + 1) * n * 5 // 3, timeout=60, what=f"progress before restart {i + 1}")
            t0 = time.monotonic()
            if mode == "fast":
                embedded_server.stop()
            else:
                pid = embedded_server.pid()
                import os
                import signal

                os.kill(pid, signal.SIGQUIT)  # immediate shutdown: no checkpoint, crash recovery at start
                wait_for(lambda: not embedded_server.is_running(), timeout=30, what="the server to die")
            time.sleep(1.0)  # workers meet the dead server mid-claim and mid-commit
            embedded_server.start()
            downtime.append(round(time.monotonic() - t0, 1))
        elapsed = wait_until_done(dsn, ids, timeout=120, daemons=[daemon])
        assert daemon.alive(), "the daemon did not ride out the restarts"
        daemon.stop()
        led = check_ledger(dsn, ids)
        assert led.instance_status == {"completed": n}
        log = daemon.log_text()
        record_figures("3 database restart x2", {
            "workflows": n, "restarts": 2, "downtime_s": downtime, "seconds_after_last_restart": round(elapsed, 1),
            "db_errors_logged": log.count("database error"), **led.figures()})
    finally:
        world.close()


def test_connection_loss_during_claims_and_commits(chaos) -> None:
    """4. Backends of workers are killed with pg_terminate_backend while they claim and
    commit (and now and then while idle, and the supervisor's and listener's)."""
    n = PROFILE.connloss_workflows
    ids = chaos.enqueue("dag5", n, {"sleep": 0.003})
    daemon = chaos.start("--workers", "3", "--concurrency", "4", "--lease-seconds", "3")
    daemon.wait_workers(3)
    killed: Counter[str] = Counter()
    waits: Counter[str] = Counter()
    stop = threading.Event()

    def terminator() -> None:
        """Three ways to lose a connection, in turn:
        - opportunistic: any worker backend seen running a claim or a commit is terminated;
        - pinned: row locks on a few ready steps and on the instances of running steps make
          the claims and commits that touch them wait mid-statement (a claim waits in its
          UPDATE of the step, after it deleted the ready row); the waiting backends are
          terminated;
        - idle: now and then a random orchwf backend (worker, supervisor or listener)."""
        rng = random.Random(3)
        deadline = time.monotonic() + PROFILE.connloss_seconds
        next_pin = next_idle = time.monotonic() + 0.3
        kind = ("CASE WHEN query LIKE '%%orchwf_finish_and_claim%%' THEN 'commit+claim'"
                " WHEN query LIKE '%%orchwf_claim%%' THEN 'claim'"
                " WHEN query LIKE '%%orchwf_finish%%' THEN 'commit' ELSE 'other' END")
        busy = (" FROM pg_stat_activity WHERE datname = current_database() AND state = 'active'"
                " AND application_name LIKE 'orchwf-worker%%'"
                " AND (query LIKE '%%orchwf_claim%%' OR query LIKE '%%orchwf_finish%%')")
        with psycopg.connect(chaos.dsn, autocommit=True, application_name="chaos-terminator") as conn, \
                psycopg.connect(chaos.dsn, application_name="chaos-pinner") as pinner:
            while not stop.is_set() and time.monotonic() < deadline:
                rows = conn.execute("SELECT pg_terminate_backend(pid), " + kind + busy).fetchall()
                killed.update(k for ok, k in rows if ok)
                now = time.monotonic()
                if now >= next_pin:
                    next_pin = now + rng.uniform(0.2, 0.5)
                    # ready steps' rows: a claim that picked one waits in its UPDATE, after it
                    # deleted the ready row; running steps' instances: their commit waits
                    pinner.execute("SELECT 1 FROM orchwf_step_instances s JOIN orchwf_ready_steps r"
                                   " ON r.step_inst_id = s.id ORDER BY r.priority DESC, r.ready_at, r.step_inst_id"
                                   " LIMIT 8 FOR UPDATE OF s SKIP LOCKED")
                    pinner.execute("SELECT 1 FROM orchwf_workflow_instances WHERE id IN (SELECT workflow_inst_id"
                                   " FROM orchwf_step_instances WHERE status = 'running' LIMIT 20)"
                                   " FOR UPDATE SKIP LOCKED")
                    time.sleep(0.15)
                    rows = conn.execute("SELECT pg_terminate_backend(pid), 'waiting ' || " + kind + busy
                                        + " AND wait_event_type = 'Lock'").fetchall()
                    killed.update(k for ok, k in rows if ok)
                    waits.update(w for (w,) in conn.execute(
                        "SELECT coalesce(wait_event_type, '-') || ' ' || coalesce(left(query, 40), '')"
                        " FROM pg_stat_activity WHERE datname = current_database()"
                        " AND application_name LIKE 'orchwf-worker%%'").fetchall())
                    pinner.rollback()
                if now >= next_idle:
                    next_idle = now + rng.uniform(0.3, 0.8)
                    rows = conn.execute(
                        "SELECT pg_terminate_backend(pid), application_name FROM pg_stat_activity"
                        " WHERE datname = current_database() AND application_name LIKE 'orchwf-%%'"
                        " ORDER BY random() LIMIT 1").fetchall()
                    killed.update(("any " + name.split()[0]) for ok, name in rows if ok)
                time.sleep(0.003)

    thread = threading.Thread(target=terminator, daemon=True)
    thread.start()
    try:
        elapsed = wait_until_done(chaos.dsn, ids, timeout=PROFILE.timeout - 60, daemons=[daemon])
    finally:
        stop.set()
        thread.join(10)
    assert daemon.alive()
    daemon.stop()
    led = check_ledger(chaos.dsn, ids)
    assert led.instance_status == {"completed": n}
    claims = sum(n for k, n in killed.items() if "claim" in k and not k.startswith("any"))
    commits = sum(n for k, n in killed.items() if "commit" in k)
    assert claims > 0 and commits > 0, (killed, waits)
    record_figures("4 connection loss", {"workflows": n, "terminated": dict(killed), "seconds": round(elapsed, 1),
                                         **led.figures()})


def _measure_idle_cost(world: Chaos, daemon, settle: float, window: float) -> dict[str, float]:
    """Log lines, new sessions and transactions per second of the daemon's database while
    it cannot work: after ``settle`` seconds (backoffs ramp up), over ``window`` seconds."""
    time.sleep(settle)
    before = _db_counters(world.dsn)
    records_before = len(_records(daemon.log_text()))
    t0 = time.monotonic()
    time.sleep(window)
    records = _records(daemon.log_text())[records_before:]
    elapsed = time.monotonic() - t0
    after = _db_counters(world.dsn)
    return {"log_records_per_s": round(len(records) / elapsed, 2),
            "sessions_per_s": round((after[0] - before[0] - 1) / elapsed, 2),  # -1: our own
            # (transactions include autovacuum's and ours: a figure, not a bound)
            "transactions_per_s": round((after[1] - before[1]) / elapsed, 2)}


# Three processes (a supervisor, two workers) that back off exponentially (workers to 5s,
# the supervisor to 10s) settle at about 0.5 attempts per second between them, each
# attempt one log record and one or two sessions; a single process that retries at its
# first backoff step (0.1-0.5s) forever exceeds these bounds on its own.
MAX_LOG_RECORDS_PER_S = 1.5
MAX_SESSIONS_PER_S = 2.0


def test_read_only_database(least_privilege) -> None:
    """7. The runtime role turns read-only (default_transaction_read_only, as a full disk or a
    failover to a replica would): clear errors in the log, no busy loop, and recovery
    once it is lifted."""
    roles, world = least_privilege
    role = sql.Identifier(roles.runtime)
    ids = world.enqueue("dag5", 40, {"sleep": 0.005})
    daemon = world.start("--workers", "2", "--concurrency", "4", "--lease-seconds", "3",
                         dsn=roles.runtime_dsn, metrics=True)
    wait_for(lambda: _executions(world.dsn) > 20, timeout=30, what="progress before read-only")
    with connect(world.dsn) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(role))
        # sessions started before keep writing: end them, as a failover would
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (roles.runtime,))
    more = world.enqueue("dag5", 20, {"sleep": 0.005})  # producers elsewhere keep enqueueing
    cost = _measure_idle_cost(world, daemon, settle=4.0, window=PROFILE.readonly_seconds)
    stuck = _unfinished(world.dsn, ids + more)
    with connect(world.dsn) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} RESET default_transaction_read_only").format(role))
    t0 = time.monotonic()
    wait_until_done(world.dsn, ids + more, timeout=60, daemons=[daemon])
    recovery = time.monotonic() - t0
    live = check_ledger(world.dsn, ids + more, final=False, metrics_url=daemon.metrics_url, metrics_exact=False)
    daemon.stop()
    led = check_ledger(world.dsn, ids + more)
    led.metrics = live.metrics
    text = daemon.log_text()
    record_figures("7 read-only database", {"read_only_seconds": 4.0 + PROFILE.readonly_seconds, **cost,
                                            "unfinished_while_read_only": stuck, "recovery_s": round(recovery, 1),
                                            **led.figures()})
    assert stuck > 0, "nothing was held up: the role was not read-only"
    assert "cannot execute INSERT in a read-only transaction" in text, "the log does not say why workers cannot work"
    assert re.search(r"supervisor: database error \(cannot execute \w+ in a read-only transaction", text)
    assert cost["log_records_per_s"] <= MAX_LOG_RECORDS_PER_S, cost
    assert cost["sessions_per_s"] <= MAX_SESSIONS_PER_S, cost
    assert recovery < 30


def test_missing_privilege_is_clear_and_backed_off(least_privilege) -> None:
    """7b. A runtime role that can connect and register but not claim (a grant forgotten):
    the error names the privilege, the workers back off, and a GRANT heals it."""
    roles, world = least_privilege
    ids = world.enqueue("dag5", 20, {"sleep": 0.002})
    table = sql.SQL("orchwf.orchwf_ready_steps")
    role = sql.Identifier(roles.runtime)
    with connect(roles.migrator_dsn) as conn:
        conn.execute(sql.SQL("REVOKE DELETE ON {} FROM {}").format(table, role))
    daemon = world.start("--workers", "2", "--concurrency", "4", dsn=roles.runtime_dsn)
    cost = _measure_idle_cost(world, daemon, settle=4.0, window=PROFILE.readonly_seconds)
    stuck = _unfinished(world.dsn, ids)
    with connect(roles.migrator_dsn) as conn:
        conn.execute(sql.SQL("GRANT DELETE ON {} TO {}").format(table, role))
    t0 = time.monotonic()
    wait_until_done(world.dsn, ids, timeout=60, daemons=[daemon])
    recovery = time.monotonic() - t0
    daemon.stop()
    led = check_ledger(world.dsn, ids)
    record_figures("7b missing privilege", {**cost, "unfinished_while_denied": stuck,
                                            "recovery_s": round(recovery, 1), **led.figures()})
    assert stuck == 20
    assert "permission denied for table orchwf_ready_steps" in daemon.log_text()
    assert cost["log_records_per_s"] <= MAX_LOG_RECORDS_PER_S, cost
    assert cost["sessions_per_s"] <= MAX_SESSIONS_PER_S, cost
    assert recovery < 30


def test_least_privilege_runtime_role_runs_the_daemon(least_privilege) -> None:
    """The runtime role of docs/reliability.md (exact grants, no ownership, no CREATE) can
    run the daemon, register, enqueue, list, cancel, resume and prune."""
    roles, world = least_privilege
    with connect(roles.runtime_dsn) as conn:
        can_create = conn.execute("SELECT has_schema_privilege('orchwf', 'CREATE')").fetchone()[0]
        owns = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'orchwf' AND tableowner = current_user"
                            ).fetchone()[0]
    assert not can_create and owns == 0
    from orchwf import Client

    producer = Client(roles.runtime_dsn, schema="orchwf")
    try:
        for definition in __import__("chaosapp").ALL:
            producer.register_workflow(definition)
        ids = producer.enqueue_many("dag5", [{"sleep": 0.002} for _ in range(30)])
        failing = producer.enqueue("edge_compensation", {})
        daemon = world.start("--workers", "2", "--concurrency", "4", "--retention", "1", dsn=roles.runtime_dsn,
                             metrics=True)
        wait_until_done(world.dsn, ids + [failing], timeout=60, daemons=[daemon])
        led = check_ledger(world.dsn, ids + [failing], final=False, metrics_url=daemon.metrics_url)
        # enqueued on an idle daemon, so that the 5 s attempt is still running when polled
        # (enqueued first, it ran and completed while the others drained)
        cancelled = producer.enqueue("stalling", {"first": 5, "later": 5})
        wait_for(lambda: producer.get_workflow(cancelled).step("slow").status.value == "running", timeout=30,
                 what="the stalling step to start")
        assert producer.cancel_workflow(cancelled) == "cancelled"
        assert producer.get_workflow(failing).status.value == "failed"
        assert producer.resume_workflow(failing) == "running"
        wait_until_done(world.dsn, [failing], timeout=30, daemons=[daemon])
        page, total = producer.list_workflows({"workflow_id": "dag5"}, limit=5)
        assert total == 30 and len(page) == 5
        live = check_ledger(world.dsn, ids + [failing, cancelled], final=False)
        assert live.instance_status == {"completed": 30, "failed": 1, "cancelled": 1}  # pay refuses again
        # history of two days ago (its own partition), saved by the in-process store as this role
        old = _old_finished_instances(roles.runtime_dsn, 10, days=2)
        assert _count(world.dsn, old) == 10
        # the supervisor prunes on its first maintenance round; restart it to prune now
        daemon.stop()
        daemon = world.start("--workers", "1", "--retention", "60", dsn=roles.runtime_dsn)
        wait_for(lambda: _count(world.dsn, old) == 0, timeout=30, what="prune as the runtime role")
        assert _count(world.dsn, ids) == 30  # today's history stays
        daemon.stop()
        text = "\n".join(d.log_text() for d in world.daemons)
        assert "permission denied" not in text, text[-3000:]
        record_figures("least-privilege runtime role", {"grants": len(roles.grants), "workflows": 32,
                                                        **led.figures()})
    finally:
        producer.close()


def test_least_privilege_runtime_role_admits_and_releases_concurrency_keys(least_privilege) -> None:
    """The documented grants cover concurrency keys: the runtime role's enqueue admits
    and parks keyed steps (the trigger on the ready queue writes the key tables), and its
    finish releases a slot and admits the next waiter."""
    from orchwf import Client, StepBuilder, WorkflowBuilder

    roles, _ = least_privilege
    keyed = (WorkflowBuilder("lp_keyed", "Keyed")
             .add_step(StepBuilder("s", "S", lambda ctx, data: {}).with_concurrency("k:{k}", 1).build()).build())
    with Client(roles.runtime_dsn, schema="orchwf") as producer:
        producer.register_workflow(keyed)
        producer.enqueue("lp_keyed", {"k": 1})
        producer.enqueue("lp_keyed", {"k": 1})
        assert [(k.key, k.held, k.waiting) for k in producer.list_concurrency_keys()] == [("k:1", 1, 1)]
    with connect(roles.runtime_dsn) as conn:
        for _ in range(2):
            [(sid, token)] = conn.execute(
                "SELECT step_inst_id, lease_token FROM orchwf.orchwf_claim_steps('lp', '{default}', '{lp_keyed}', "
                "10, 30, false, NULL)").fetchall()
            [(accepted,)] = conn.execute(
                "SELECT accepted FROM orchwf.orchwf_finish_steps(ARRAY[%s]::uuid[], ARRAY[%s]::bigint[], "
                "'{completed}', '{NULL}'::jsonb[], '{NULL}', '{1}', '{0}')", (sid, token)).fetchall()
            assert accepted
        assert conn.execute("SELECT held FROM orchwf.orchwf_concurrency_keys").fetchall() == [(0,)]


def _records(log: str) -> list[str]:
    """Log records (a record's continuation lines, e.g. an error's CONTEXT, are not counted)."""
    return re.findall(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ .*$", log, re.MULTILINE)


def _db_counters(dsn: str) -> tuple[int, int]:
    """(sessions, transactions) of this database so far; statistics are flushed ~1/s."""
    time.sleep(1.1)  # let the backends flush their statistics
    with connect(dsn) as conn:
        row = conn.execute("SELECT sessions, xact_commit + xact_rollback FROM pg_stat_database"
                           " WHERE datname = current_database()").fetchone()
    return int(row[0]), int(row[1])


def _unfinished(dsn: str, ids: list[str]) -> int:
    with connect(dsn) as conn:
        return int(conn.execute("SELECT count(*) FROM orchwf_workflow_instances WHERE id = ANY(%s::uuid[])"
                                " AND status NOT IN ('completed', 'failed', 'cancelled')", (ids,)).fetchone()[0])


def _old_finished_instances(dsn: str, n: int, days: int) -> list[str]:
    """``n`` completed instances created ``days`` ago, through the in-process store."""
    from datetime import datetime, timedelta, timezone

    from orchwf import DBStateManager, WorkflowInstance, WorkflowStatus
    from orchwf.ids import new_id

    at = datetime.now(timezone.utc) - timedelta(days=days)
    with DBStateManager(dsn, schema="orchwf") as store:
        instances = [WorkflowInstance(id=new_id(at), workflow_id="dag5", status=WorkflowStatus.COMPLETED,
                                      created_at=at, started_at=at, completed_at=at) for _ in range(n)]
        for inst in instances:
            store.save_workflow(inst)
    return [i.id for i in instances]


def _count(dsn: str, ids: list[str]) -> int:
    with connect(dsn) as conn:
        return int(conn.execute("SELECT count(*) FROM orchwf_workflow_instances WHERE id = ANY(%s::uuid[])",
                                (ids,)).fetchone()[0])
