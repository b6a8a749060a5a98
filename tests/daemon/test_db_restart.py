"""A database restart mid-run: workers and the supervisor reconnect and lose nothing."""

from __future__ import annotations

import os
import time

import psycopg
import pytest

import daemonapp
from orchwf import Client, WorkflowStatus
from orchwf.db.migrations import migrate

from daemonkit import SIDE_TABLES, Daemon, executions, wait_for

pytestmark = pytest.mark.slow


def test_database_restart_mid_run(embedded_server) -> None:
    dsn = embedded_server.dsn_for("orchwf")
    with psycopg.connect(embedded_server.dsn, autocommit=True) as conn:
        conn.execute("CREATE DATABASE orchwf")
    migrate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SIDE_TABLES)
    client = Client(dsn)
    client.register_workflow(daemonapp.chain)
    ids = client.enqueue_many("chain", [{"sleep": 0.01} for _ in range(120)])
    client.close()
    daemon = Daemon(dsn, ["--workers", "2", "--concurrency", "4"])
    try:
        wait_for(lambda: len(executions(dsn)) > 40, timeout=30, what="progress before the restart")
        embedded_server.stop()
        time.sleep(1.0)  # workers see the database go away mid-claim and mid-commit
        embedded_server.start()
        client = Client(dsn)
        for iid in ids:
            assert client.wait(iid, timeout=90).status == WorkflowStatus.COMPLETED
        kinds = [e.event_type for iid in ids for e in client.get_workflow_events(iid)]
        assert kinds.count("step.completed") == 360  # exactly one committed result per step
        # every step that completed was executed at least once, and at most once per attempt
        runs = executions(dsn)
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
    dsn = embedded_server.dsn_for("orchwf_outage")
    with psycopg.connect(embedded_server.dsn, autocommit=True) as conn:
        conn.execute("CREATE DATABASE orchwf_outage")
    migrate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SIDE_TABLES)
    client = Client(dsn)
    client.register_workflow(daemonapp.chain)
    ids = client.enqueue_many("chain", [{"sleep": 0.05} for _ in range(200)])
    client.close()
    daemon = Daemon(dsn, ["--workers", "2", "--concurrency", "4"])
    try:
        wait_for(lambda: len(executions(dsn)) > 20, timeout=30, what="progress before the outage")
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
