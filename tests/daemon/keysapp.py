"""Workflows for the concurrency-key tests. Every run writes its start and end into a
ledger (orchwf_test_key_ledger) on a connection of its own process, so the intervals
show how many steps of a key ran at any instant."""

from __future__ import annotations

import os
import threading
import time

import psycopg

from orchwf import StepBuilder, WorkflowBuilder

DSN = os.environ.get("ORCHWF_TEST_APP_DSN", "")

LEDGER = """
CREATE TABLE IF NOT EXISTS orchwf_test_key_ledger (
    id bigserial PRIMARY KEY, instance_id uuid, step_id text, key text, pid int,
    started double precision NOT NULL, finished double precision);
"""

_lock = threading.Lock()
_conn: tuple[int, psycopg.Connection] | None = None


def _ledger(sql: str, args: tuple) -> int:
    """One autocommit connection per worker process (made after the fork), shared by its threads."""
    global _conn
    with _lock:
        if _conn is None or _conn[0] != os.getpid():
            _conn = (os.getpid(), psycopg.connect(DSN, autocommit=True))
        row = _conn[1].execute(sql, args).fetchone()
        return int(row[0]) if row else 0


def timed(ctx, data):
    """Sleeps data["ms"] (the ledger holds its interval), or until data["gate"] exists."""
    key = str(data.get("k"))
    row = _ledger("INSERT INTO orchwf_test_key_ledger (instance_id, step_id, key, pid, started) "
                  "VALUES (%s, %s, %s, %s, %s) RETURNING id",
                  (ctx.workflow_instance_id, ctx.step_id, key, os.getpid(), time.time()))
    gate = data.get("gate")
    if gate:
        while not os.path.exists(gate):
            time.sleep(0.01)
    else:
        time.sleep(float(data.get("ms", 10)) / 1000)
    _ledger("UPDATE orchwf_test_key_ledger SET finished = %s WHERE id = %s RETURNING id", (time.time(), row))
    return {}


keyed = (
    WorkflowBuilder("keyed", "One keyed step")
    .add_step(StepBuilder("work", "Work", timed).with_concurrency("k:{k}", 2).build())
    .build()
)

# A keyed step after an unkeyed one, and a third unkeyed: keys apply per step.
keyed_chain = (
    WorkflowBuilder("keyed_chain", "Keyed middle step")
    .add_step(StepBuilder("a", "A", timed).build())
    .add_step(StepBuilder("b", "B", timed).with_dependencies("a").with_concurrency("chain:{k}", 1).build())
    .add_step(StepBuilder("c", "C", timed).with_dependencies("b").build())
    .build()
)

# Workflow-level: at most one running instance per key.
keyed_instances = (
    WorkflowBuilder("keyed_instances", "One instance per key at a time")
    .with_concurrency("inst:{k}", 1)
    .add_step(StepBuilder("first", "First", timed).build())
    .add_step(StepBuilder("second", "Second", timed).with_dependencies("first").build())
    .build()
)

unkeyed = (
    WorkflowBuilder("unkeyed", "No key")
    .add_step(StepBuilder("work", "Work", timed).build())
    .build()
)
