"""A database restart mid-run: workers and the supervisor reconnect and lose nothing."""

from __future__ import annotations

import os
import time

import daemonapp
import psycopg
import psycopg.sql
import pytest
from daemonkit import SIDE_TABLES, Daemon, executions, wait_for

from orchwf import Client, WorkflowStatus
from orchwf.db.migrations import migrate

pytestmark = pytest.mark.slow


def _chains_on_a_new_database(server, name: str, n: int, sleep: float) -> tuple[str, list[str], Daemon]:  # type: ignore[no-untyped-def]
    """A migrated database ``name`` on ``server`` with ``n`` chain instances enqueued, and
    the daemon (2 workers of 4 slots) started on it."""
    dsn = server.dsn_for(name)
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
    migrate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SIDE_TABLES)
    with Client(dsn) as client:
        client.register_workflow(daemonapp.chain)
        ids = client.enqueue_many("chain", [{"sleep": sleep} for _ in range(n)])
    return dsn, ids, Daemon(dsn, ["--workers", "2", "--concurrency", "4"])


def test_database_restart_mid_run(embedded_server) -> None:
    dsn, ids, daemon = _chains_on_a_new_database(embedded_server, "orchwf", 120, 0.01)
    try:
        wait_for(lambda: len(executions(dsn, ids)) > 40, timeout=30, what="progress before the restart")
        embedded_server.stop()
        time.sleep(1.0)  # workers see the database go away mid-claim and mid-commit
        embedded_server.start()
        client = Client(dsn)
        for iid in ids:
            assert client.wait(iid, timeout=90).status == WorkflowStatus.COMPLETED
        kinds = [e.event_type for iid in ids for e in client.get_workflow_events(iid)]
        assert kinds.count("step.completed") == 360  # exactly one committed result per step
        # every step that completed was executed at least once, and at most once per attempt
        runs = executions(dsn, ids)
        ran, expected = {(i, s) for i, s, *_ in runs}, {(i, s) for i in ids for s in "abc"}
        assert ran == expected, (sorted(ran - expected)[:5], sorted(expected - ran)[:5],
                                 [r for r in runs if (r[0], r[1]) not in expected][:5])
        client.close()
        assert daemon.proc.poll() is None  # the daemon rode it out
    finally:
        daemon.stop()


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_database_outage_leaves_the_daemon_idle_not_spinning(embedded_server) -> None:
    """While the database is down, the supervisor and the workers wait for their next
    reconnect attempt (backed off), holding results they could not commit: they do not
    spin. (The supervisor once did: its overdue maintenance round set its wait to zero,
    a core busy for the whole outage.)"""
    dsn, ids, daemon = _chains_on_a_new_database(embedded_server, "orchwf_outage", 200, 0.05)
    try:
        wait_for(lambda: len(executions(dsn, ids)) > 20, timeout=30, what="progress before the outage")
        embedded_server.stop()
        time.sleep(1.0)  # every process has met the outage
        pids = [daemon.proc.pid, *daemon.worker_pids()]
        before = {pid: _cpu_seconds(pid) for pid in pids}
        time.sleep(4.0)
        used = {pid: _cpu_seconds(pid) - before[pid] for pid in pids}
        embedded_server.start()
        assert all(seconds < 0.5 for seconds in used.values()), (used, daemon.output()[-3000:])
        client = Client(dsn)
        for iid in ids:
            assert client.wait(iid, timeout=90).status == WorkflowStatus.COMPLETED
        client.close()
    finally:
        daemon.stop()
