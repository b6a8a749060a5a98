"""A database restart mid-run: workers and the supervisor reconnect and lose nothing."""

from __future__ import annotations

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
