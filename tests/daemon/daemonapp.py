"""Workflows for the daemon tests. Every execution is logged in a side table
(orchwf_test_exec) on its own connection, so double execution is visible."""

from __future__ import annotations

import gc
import os
import time

import psycopg

from orchwf import (
    NonRetryableError,
    RetryPolicyBuilder,
    StepBuilder,
    WorkflowBuilder,
    child_workflow_step,
    sleep_step,
    wait_for_signal,
)

DSN = os.environ.get("ORCHWF_TEST_APP_DSN", "")


def log_execution(ctx, note: str = "") -> None:
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO orchwf_test_exec (instance_id, step_id, attempt, pid, note) VALUES (%s, %s, %s, %s, %s)",
            (ctx.workflow_instance_id, ctx.step_id, ctx.attempt, os.getpid(), note),
        )


def record(ctx, data):
    log_execution(ctx)
    if data.get("sleep"):
        time.sleep(float(data["sleep"]))
    return {f"{ctx.step_id}_done": True, f"{ctx.step_id}_pid": os.getpid()}


def sleepy_until_file(ctx, data):
    """Runs until a file appears (so a test can kill the worker mid-step)."""
    log_execution(ctx)
    path = data["gate"]
    while not os.path.exists(path):
        time.sleep(0.02)
    return {"gated": True}


def flaky(ctx, data):
    log_execution(ctx)
    if ctx.attempt < int(data.get("succeed_on", 3)):
        raise RuntimeError(f"transient failure on attempt {ctx.attempt}")
    return {"flaky_attempt": ctx.attempt}


def always_fails(ctx, data):
    log_execution(ctx)
    raise RuntimeError("boom")


def fatal(ctx, data):
    log_execution(ctx)
    raise NonRetryableError("do not retry me")


def ignores_timeout(ctx, data):
    log_execution(ctx)
    time.sleep(float(data.get("hang", 5)))
    return {"late": True}


def compensate(ctx, data):
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO orchwf_test_exec (instance_id, step_id, attempt, pid, note) VALUES (%s, %s, 0, %s, 'compensated')",
            (ctx.workflow_instance_id, ctx.step_id, os.getpid()),
        )


def transactional_write(ctx, data):
    ctx.conn.execute(
        "INSERT INTO orchwf_test_effects (instance_id, value) VALUES (%s, %s)",
        (ctx.workflow_instance_id, data.get("value", 1)),
    )
    if data.get("fail"):
        raise RuntimeError("fail after the write")
    return {"written": True, "backend": ctx.conn.info.backend_pid}


def join(ctx, data):
    log_execution(ctx)
    return {"total": sum(data[f"fan{i}"]["fan"] for i in range(4))}


def fan(i):
    def run(ctx, data):
        log_execution(ctx)
        return {"fan": i * 10}
    run.__name__ = f"fan{i}"
    return run


fast_retry = RetryPolicyBuilder().with_max_attempts(3).with_initial_interval(0.05).with_multiplier(2).build()
# The chain's steps write to the database themselves: let them outlast a database restart.
patient = RetryPolicyBuilder().with_max_attempts(8).with_initial_interval(0.25).with_max_interval(2).build()

single = WorkflowBuilder("single", "One step").add_step(StepBuilder("only", "Only", record).build()).build()

chain = (
    WorkflowBuilder("chain", "Three steps")
    .add_step(StepBuilder("a", "A", record).with_retry_policy(patient).build())
    .add_step(StepBuilder("b", "B", record).with_dependencies("a").with_retry_policy(patient).build())
    .add_step(StepBuilder("c", "C", record).with_dependencies("b").with_retry_policy(patient).build())
    .build()
)

_dag = WorkflowBuilder("fanin", "Fan-out and fan-in").add_step(StepBuilder("start", "Start", record).build())
for _i in range(4):
    _dag.add_step(StepBuilder(f"fan{_i}", f"Fan {_i}", fan(_i)).with_dependencies("start").build())
_dag.add_step(StepBuilder("join", "Join", join).with_dependencies(*[f"fan{i}" for i in range(4)]).build())
fanin = _dag.build()

gated = WorkflowBuilder("gated", "Waits for a file").add_step(
    StepBuilder("wait", "Wait", sleepy_until_file).with_retry_policy(fast_retry).build()).build()

retrying = WorkflowBuilder("retrying", "Succeeds on the third attempt").add_step(
    StepBuilder("flaky", "Flaky", flaky).with_retry_policy(fast_retry).build()).build()

failing = (
    WorkflowBuilder("failing", "Fails after a compensable step")
    .add_step(StepBuilder("book", "Book", record).with_compensator(compensate).build())
    .add_step(StepBuilder("optional", "Optional", always_fails).with_required(False).build())
    .add_step(StepBuilder("pay", "Pay", always_fails).with_dependencies("book").with_retry_policy(fast_retry).build())
    .add_step(StepBuilder("ship", "Ship", record).with_dependencies("pay").build())
    .build()
)

optional = (
    WorkflowBuilder("optional", "An optional step fails, its dependent still runs")
    .add_step(StepBuilder("maybe", "Maybe", always_fails).with_required(False).build())
    .add_step(StepBuilder("after", "After", record).with_dependencies("maybe").build())
    .build()
)

nonretryable = WorkflowBuilder("nonretryable", "Fails at once").add_step(
    StepBuilder("fatal", "Fatal", fatal).with_retry_policy(fast_retry).build()).build()

timeout = WorkflowBuilder("timeout", "Ignores its timeout").add_step(
    StepBuilder("hang", "Hang", ignores_timeout).with_timeout(0.3).build()).build()

transactional = WorkflowBuilder("transactional", "Writes in the result's transaction").add_step(
    StepBuilder("write", "Write", transactional_write).with_transaction(True).build()).build()


async def async_step(ctx, data):
    import asyncio

    await asyncio.sleep(float(data.get("async_sleep", 0.01)))
    return {"async": True, "loop": id(asyncio.get_running_loop())}


async def async_hang(ctx, data):
    import asyncio

    await asyncio.sleep(10)
    return {"never": True}


async_flow = (
    WorkflowBuilder("async_flow", "async def steps")
    .add_step(StepBuilder("one", "One", async_step).build())
    .add_step(StepBuilder("two", "Two", async_step).build())
    .add_step(StepBuilder("hang", "Hang", async_hang).with_timeout(0.2).with_required(False).build())
    .build()
)


def exits(ctx, data):
    log_execution(ctx)
    raise SystemExit(3)


def aborts(ctx, data):
    log_execution(ctx)
    os.abort()


gated_once = WorkflowBuilder("gated_once", "Waits for a file, no retry policy").add_step(
    StepBuilder("wait", "Wait", sleepy_until_file).build()).build()

exiting = WorkflowBuilder("exiting", "A step raises SystemExit").add_step(
    StepBuilder("exit", "Exit", exits).build()).build()

poison = WorkflowBuilder("poison", "Kills its worker every time").add_step(
    StepBuilder("abort", "Abort", aborts).with_retry_policy(fast_retry).build()).build()

# A workflow with a schedule of its own (tests/daemon/test_cron_daemon.py).
scheduled = (WorkflowBuilder("scheduled", "Started by its schedule")
             .add_step(StepBuilder("only", "Only", record).build())
             .with_schedule("* * * * *", input={"from": "schedule"}, name="scheduled-every-minute")
             .build())

# Durable sleep (tests/daemon/test_sleep.py): a, then a nap, then b; and a late first step.
NAP = float(os.environ.get("ORCHWF_TEST_NAP", "1.5"))
sleeper = (WorkflowBuilder("sleeper", "Naps between two steps")
           .add_step(StepBuilder("a", "A", record).build())
           .add_step(sleep_step("nap", NAP).with_dependencies("a").build())
           .add_step(StepBuilder("b", "B", record).with_dependencies("nap").build())
           .build())
late_start = (WorkflowBuilder("late_start", "Its first step waits")
              .add_step(StepBuilder("first", "First", record).with_delay(1.0).build())
              .build())

# Signals (tests/daemon/test_signals.py): a, wait for "approval", then b (sees the payload).
approval = (WorkflowBuilder("approval", "Waits for an approval")
            .add_step(StepBuilder("a", "A", record).build())
            .add_step(wait_for_signal("approve", "approval").with_dependencies("a").build())
            .add_step(StepBuilder("b", "B", record).with_dependencies("approve").build())
            .build())
impatient = (WorkflowBuilder("impatient", "Waits one second for a signal, twice")
             .add_step(wait_for_signal("wait", "go", timeout=1.0)
                       .with_retry_policy(RetryPolicyBuilder().with_max_attempts(2).with_initial_interval(0.1).build())
                       .build())
             .build())

# Child workflows (tests/daemon/test_child_workflows.py).
def child_work(ctx, data):
    log_execution(ctx, note=str(ctx.metadata.get("orchwf_parent", "")))
    if data.get("gate"):
        while not os.path.exists(data["gate"]):
            time.sleep(0.02)
    return {"doubled": 2 * int(data.get("n", 0))}


def child_flaky(ctx, data):
    """Fails in the first child of each parent, succeeds in the next."""
    parent = str(ctx.metadata.get("orchwf_parent", ""))
    log_execution(ctx, note=parent)
    with psycopg.connect(DSN) as conn:
        runs = conn.execute("SELECT count(*) FROM orchwf_test_exec WHERE step_id = 'flaky_work' AND note = %s",
                            (parent,)).fetchone()[0]
    if runs == 1:
        raise RuntimeError("the first child fails")
    return {"second": True}


child = WorkflowBuilder("child", "A child").add_step(StepBuilder("work", "Work", child_work).build()).build()
flaky_child = (WorkflowBuilder("flaky_child", "Fails once per parent")
               .add_step(StepBuilder("flaky_work", "Work", child_flaky).build()).build())
parent = (WorkflowBuilder("parent", "Starts a child")
          .add_step(StepBuilder("prep", "Prep", lambda ctx, data: {"n": data.get("n", 1), "gate": data.get("gate")})
                    .build())
          .add_step(child_workflow_step("run_child", "child", input_from="prep").with_dependencies("prep").build())
          .add_step(StepBuilder("after", "After", record).with_dependencies("run_child").build())
          .build())
retrying_parent = (WorkflowBuilder("retrying_parent", "Its child fails once")
                   .add_step(child_workflow_step("run_child", "flaky_child")
                             .with_retry_policy(RetryPolicyBuilder().with_max_attempts(2)
                                                .with_initial_interval(0.05).build())
                             .build())
                   .build())
failing_parent = (WorkflowBuilder("failing_parent", "Its child always fails")
                  .add_step(child_workflow_step("run_child", "failing").build())
                  .build())
two_waiters = (WorkflowBuilder("two_waiters", "Two steps wait for the same signal name, after a")
               .add_step(StepBuilder("a", "A", record).build())
               .add_step(wait_for_signal("first", "go").with_dependencies("a").build())
               .add_step(wait_for_signal("second", "go").with_dependencies("a").build())
               .build())
waits_first = (WorkflowBuilder("waits_first", "Waits for a signal, then records")
               .add_step(wait_for_signal("wait", "go").build())
               .add_step(StepBuilder("after", "After", record).with_dependencies("wait").build())
               .build())
approval_timeout = (WorkflowBuilder("approval_timeout", "The README's approval, with a one-second timeout")
                    .add_step(StepBuilder("reserve", "Reserve", record).with_compensator(compensate).build())
                    .add_step(wait_for_signal("approval", "approved", timeout=1.0).with_dependencies("reserve").build())
                    .add_step(StepBuilder("pay", "Pay", record).with_dependencies("approval").build())
                    .build())

# A first step that waits for "go", then an ordinary one (test_signals.py: a signal
# completes the wait in its own transaction, with no worker running).
signal_first = (WorkflowBuilder("signal_first", "Waits for go, then works")
                .add_step(wait_for_signal("wait", "go").build())
                .add_step(StepBuilder("after", "After", record).with_dependencies("wait").build())
                .build())


def collector_state(ctx, data):
    """What the worker's garbage collector sees: frozen (never traversed) and tracked objects."""
    return {"frozen": gc.get_freeze_count(), "tracked": len(gc.get_objects())}


# The worker's heap as the collector sees it (test_daemon.py).
collector = (WorkflowBuilder("collector", "Reports the worker's collector state")
             .add_step(StepBuilder("look", "Look", collector_state).build())
             .build())
