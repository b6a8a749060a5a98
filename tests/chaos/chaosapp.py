"""Workflows run by the chaos suite's daemons (``orchwf worker --app chaosapp``).

Every step records each execution in the side table ``orchwf_chaos_exec`` on its own
connection (never the worker's), at start, and stamps ``ended_at`` when it returns. So
an execution is visible even when the worker dies right after, double execution
shows up as two rows, and two ended rows of one step that overlap in time mean the
step ran twice at once. Each step's output names the side-table row of the execution
that produced it, so the ledger can tell which execution's result was committed.

The side table lives in the database named by ``ORCHWF_CHAOS_SIDE_DSN`` (always a
direct connection as the test's superuser, even when the daemon itself goes through
PgBouncer or runs as a restricted role).
"""

from __future__ import annotations

import os
import random
import resource
import threading
import time
from typing import Any

import psycopg

from orchwf import (
    NonRetryableError,
    RetryPolicyBuilder,
    StepBuilder,
    WorkflowBuilder,
    wait_for_signal,
)

SIDE_DSN = os.environ.get("ORCHWF_CHAOS_SIDE_DSN", "")

SIDE_TABLE = """
CREATE TABLE IF NOT EXISTS orchwf_chaos_exec (
    id          bigserial PRIMARY KEY,
    instance_id uuid NOT NULL,
    step_id     text NOT NULL,
    attempt     integer NOT NULL,
    pid         integer NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    ended_at    timestamptz,
    note        text
);
CREATE INDEX IF NOT EXISTS orchwf_chaos_exec_step_idx ON orchwf_chaos_exec (instance_id, step_id);
"""

_local = threading.local()


def _side() -> psycopg.Connection[Any]:
    """One side connection per executor thread (and per process: never across a fork)."""
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed or getattr(_local, "pid", None) != os.getpid():
        conn = psycopg.connect(SIDE_DSN, autocommit=True, connect_timeout=5, application_name="chaos-side")
        _local.conn = conn
        _local.pid = os.getpid()
    return conn


def _side_execute(query: str, params: tuple[Any, ...]) -> Any:
    try:
        return _side().execute(query, params)
    except psycopg.Error:
        conn = getattr(_local, "conn", None)
        _local.conn = None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - discarding a broken connection
                pass
        raise


def log_start(ctx: Any, note: str | None = None) -> int:
    row = _side_execute(
        "INSERT INTO orchwf_chaos_exec (instance_id, step_id, attempt, pid, note)"
        " VALUES (%s, %s, %s, %s, %s) RETURNING id",
        (ctx.workflow_instance_id, ctx.step_id, ctx.attempt, os.getpid(), note),
    ).fetchone()
    return int(row[0])


def log_end(exec_id: int) -> None:
    _side_execute("UPDATE orchwf_chaos_exec SET ended_at = clock_timestamp() WHERE id = %s", (exec_id,))


def _result(ctx: Any, exec_id: int) -> dict[str, Any]:
    return {ctx.step_id: {"exec": exec_id, "attempt": ctx.attempt, "pid": os.getpid()}}


def work(ctx: Any, data: dict[str, Any]) -> dict[str, Any]:
    """The ordinary step: record, sleep a little (``sleep`` seconds, jittered), record."""
    exec_id = log_start(ctx)
    pause = float(data.get("sleep", 0.0))
    if pause > 0:
        time.sleep(random.uniform(0.5 * pause, 1.5 * pause))
    log_end(exec_id)
    return _result(ctx, exec_id)


def stall(ctx: Any, data: dict[str, Any]) -> dict[str, Any]:
    """Attempt 1 takes ``first`` seconds, later attempts ``later`` seconds."""
    exec_id = log_start(ctx)
    time.sleep(float(data["first"] if ctx.attempt == 1 else data["later"]))
    log_end(exec_id)
    return _result(ctx, exec_id)


def poison_abort(ctx: Any, data: dict[str, Any]) -> dict[str, Any]:
    """Kills its own worker process every time (SIGABRT, as a segfaulting C extension would)."""
    log_start(ctx, "abort")
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file
    os.abort()


def poison_memory(ctx: Any, data: dict[str, Any]) -> dict[str, Any]:
    """Exhausts the memory it is allowed every time.

    Guarded: the soft RLIMIT_AS of the worker process is lowered to its current size
    plus ``budget_mb`` for the duration of the allocation only, so the machine never
    feels it; Python raises MemoryError, the attempt fails, and the limit is restored.
    """
    log_start(ctx, "memory")
    budget = int(data.get("budget_mb", 256)) * 2**20
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        size = int(f.read().split()[0]) * resource.getpagesize()
    hoard: list[bytearray] = []
    resource.setrlimit(resource.RLIMIT_AS, (size + budget, hard))
    try:
        while True:
            hoard.append(bytearray(32 * 2**20))
    finally:
        hoard.clear()
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def refuse(ctx: Any, data: dict[str, Any]) -> dict[str, Any]:
    exec_id = log_start(ctx)
    log_end(exec_id)
    raise NonRetryableError("refused on purpose")


def undo(ctx: Any, data: dict[str, Any]) -> None:
    return None


# Crashes and lost connections are not the step's fault: give every step room for many
# of them (a step fails when its crashes reach max_attempts), and back off briefly.
sturdy = (RetryPolicyBuilder().with_max_attempts(30).with_initial_interval(0.05)
          .with_multiplier(2).with_max_interval(1.0).build())
three = RetryPolicyBuilder().with_max_attempts(3).with_initial_interval(0.05).with_max_interval(0.2).build()


def _dag(workflow_id: str, policy: Any) -> Any:
    """a -> (b, c) -> d -> e: fan-out, fan-in, then a tail."""
    return (
        WorkflowBuilder(workflow_id, "Five-step DAG")
        .add_step(StepBuilder("a", "A", work).with_retry_policy(policy).build())
        .add_step(StepBuilder("b", "B", work).with_dependencies("a").with_retry_policy(policy).build())
        .add_step(StepBuilder("c", "C", work).with_dependencies("a").with_retry_policy(policy).build())
        .add_step(StepBuilder("d", "D", work).with_dependencies("b", "c").with_retry_policy(policy).build())
        .add_step(StepBuilder("e", "E", work).with_dependencies("d").with_retry_policy(policy).build())
        .build()
    )


dag5 = _dag("dag5", sturdy)

stalling = WorkflowBuilder("stalling", "A step that stalls on its first attempt").add_step(
    StepBuilder("slow", "Slow", stall).with_retry_policy(three).build()).build()

poison = WorkflowBuilder("poison", "A step that aborts its worker every time").add_step(
    StepBuilder("boom", "Boom", poison_abort).with_retry_policy(three).build()).build()

hog = WorkflowBuilder("hog", "A step that exhausts its memory every time").add_step(
    StepBuilder("hog", "Hog", poison_memory).with_retry_policy(three).build()).build()

# Priorities at the edge of their range (2**29 each way, so that instance + step +
# the compensation boost stay inside int4).
edge_priority = (
    WorkflowBuilder("edge_priority", "A dependent step with the largest priority")
    .add_step(StepBuilder("first", "First", work).build())
    .add_step(StepBuilder("top", "Top", work).with_dependencies("first").with_priority(2**29).build())
    .build()
)
edge_compensation = (
    WorkflowBuilder("edge_compensation", "Fails after a compensable step")
    .add_step(StepBuilder("book", "Book", work).with_compensator(undo).build())
    .add_step(StepBuilder("pay", "Pay", refuse).with_dependencies("book").build())
    .build()
)

# One step with the default policy: the smallest crash budget.
plain = WorkflowBuilder("plain", "One ordinary step").add_step(StepBuilder("only", "Only", work).build()).build()

# Signals (test_chaos_signals.py): an ordinary step, a wait for "go", an ordinary step.
signalled = (
    WorkflowBuilder("signalled", "Waits for a signal between two steps")
    .add_step(StepBuilder("before", "Before", work).with_retry_policy(sturdy).build())
    .add_step(wait_for_signal("wait", "go").with_dependencies("before").with_retry_policy(sturdy).build())
    .add_step(StepBuilder("after", "After", work).with_dependencies("wait").with_retry_policy(sturdy).build())
    .build()
)

ALL = [dag5, stalling, poison, hog, edge_priority, edge_compensation, plain, signalled]
