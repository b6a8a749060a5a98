"""Workflows of the engine parity suite, run unchanged by the in-process Orchestrator and
by the daemon (``orchwf worker --app parityapp``).

Everything that differs between the two runs of a scenario (the side database, gate and
flag files) comes in the instance's metadata, never in its input: inputs, outputs and
events must be comparable as they are. Output keys never equal a step ID (README,
"Data flow").
"""

from __future__ import annotations

import os
import time

import psycopg

from orchwf import NonRetryableError, RetryPolicyBuilder, StepBuilder, WorkflowBuilder

SIDE_TABLE = """
CREATE TABLE IF NOT EXISTS parity_compensations (
    id bigserial PRIMARY KEY, instance_id text NOT NULL, step_id text NOT NULL, pid int NOT NULL)
"""


def _side(ctx, step_id: str) -> None:
    """Record that ``step_id``'s compensator ran, on a connection of its own."""
    with psycopg.connect(ctx.metadata["side_dsn"], autocommit=True) as conn:
        conn.execute("INSERT INTO parity_compensations (instance_id, step_id, pid) VALUES (%s, %s, %s)",
                     (ctx.workflow_instance_id, step_id, os.getpid()))


def compensate(ctx, data):
    _side(ctx, ctx.step_id)


def compensate_and_fail(ctx, data):
    _side(ctx, ctx.step_id)
    raise RuntimeError(f"cannot undo {ctx.step_id}")


# -- a DAG with outputs: start -> (left, mid, right) -> join -----------------------------


def start(ctx, data):
    return {"doubled": data["seed"] * 2}


def branch(offset: int, key: str):
    def run(ctx, data):
        time.sleep(0.2)  # the three branches all start before any of them completes
        return {key: data["doubled"] + offset, f"{key}_input_keys": sorted(data)}

    run.__name__ = f"branch_{key}"
    return run


def join(ctx, data):
    return {"total": data["l_val"] + data["m_val"] + data["r_val"], "join_saw": sorted(data)}


p_dag = (
    WorkflowBuilder("p_dag", "Fan-out and fan-in")
    .add_step(StepBuilder("start", "Start", start).build())
    .add_step(StepBuilder("left", "Left", branch(1, "l_val")).with_dependencies("start").with_async(True).build())
    .add_step(StepBuilder("mid", "Mid", branch(2, "m_val")).with_dependencies("start").with_async(True).build())
    .add_step(StepBuilder("right", "Right", branch(3, "r_val")).with_dependencies("start").with_async(True).build())
    .add_step(StepBuilder("join", "Join", join).with_dependencies("left", "mid", "right").build())
    .build()
)

# -- retries: fails twice, then succeeds (3 attempts, no backoff) ----------------------


def flaky(ctx, data):
    if ctx.attempt < 3:
        raise RuntimeError(f"transient failure on attempt {ctx.attempt}")
    return {"succeeded_on": ctx.attempt}


def after_flaky(ctx, data):
    return {"after_saw": data["succeeded_on"]}


no_backoff = RetryPolicyBuilder().with_max_attempts(3).with_initial_interval(0).build()

p_retry = (
    WorkflowBuilder("p_retry", "Retries")
    .add_step(StepBuilder("flaky", "Flaky", flaky).with_retry_policy(no_backoff).build())
    .add_step(StepBuilder("after", "After", after_flaky).with_dependencies("flaky").build())
    .build()
)

# -- an optional step fails: skipped, its dependent still runs --------------------------


def metrics_down(ctx, data):
    raise RuntimeError("metrics endpoint down")


def render(ctx, data):
    return {"pages": 3, "metrics_seen": data["metrics"]}


p_optional = (
    WorkflowBuilder("p_optional", "Optional step")
    .add_step(StepBuilder("metrics", "Metrics", metrics_down).with_required(False).build())
    .add_step(StepBuilder("render", "Render", render).with_dependencies("metrics").build())
    .build()
)

# -- a timeout: the step sleeps past its deadline, no retries -----------------------------


def sleeps_past_deadline(ctx, data):
    ctx.cancelled.wait(5)  # cooperative: ends at the deadline, so no thread is left behind
    return {"late": True}


def never(ctx, data):
    return {"never": True}


p_timeout = (
    WorkflowBuilder("p_timeout", "Timeout")
    .add_step(StepBuilder("slow", "Slow", sleeps_past_deadline).with_timeout(0.5).build())
    .add_step(StepBuilder("after", "After", never).with_dependencies("slow").build())
    .build()
)


def ignores_deadline(ctx, data):
    time.sleep(1.5)  # not cooperative: the engine stops waiting and discards what comes later
    return {"late": True}


p_timeout_ignored = (
    WorkflowBuilder("p_timeout_ignored", "Timeout ignored by the step")
    .add_step(StepBuilder("slow", "Slow", ignores_deadline).with_timeout(0.3).build())
    .add_step(StepBuilder("after", "After", never).with_dependencies("slow").build())
    .build()
)

# -- compensation: two completed steps with compensators, then a required step fails -----


def reserve(ctx, data):
    return {"reservation": f"res-{data['order']}"}


def charge(ctx, data):
    return {"charge_id": f"ch-{data['reservation']}"}


def ship(ctx, data):
    raise NonRetryableError("out of stock")


p_compensation = (
    WorkflowBuilder("p_compensation", "Compensation")
    .add_step(StepBuilder("reserve", "Reserve", reserve).with_compensator(compensate).build())
    .add_step(StepBuilder("charge", "Charge", charge).with_dependencies("reserve").with_compensator(compensate).build())
    .add_step(StepBuilder("ship", "Ship", ship).with_dependencies("charge").build())
    .add_step(StepBuilder("notify", "Notify", never).with_dependencies("ship").build())
    .build()
)

# -- compensation where one compensator raises: the others still run ----------------------

p_compensation_failure = (
    WorkflowBuilder("p_compensation_failure", "A failing compensator")
    .add_step(StepBuilder("reserve", "Reserve", reserve).with_compensator(compensate).build())
    .add_step(StepBuilder("charge", "Charge", charge).with_dependencies("reserve")
              .with_compensator(compensate_and_fail).build())
    .add_step(StepBuilder("ship", "Ship", ship).with_dependencies("charge").build())
    .build()
)

# -- cancel: two completed compensable steps, then a step blocks on a gate file -----------


def book(ctx, data):
    return {"booking": f"bk-{data['order']}"}


def hold(ctx, data):
    return {"hold": f"hd-{data['booking']}"}


def wait_for_gate(ctx, data):
    open(ctx.metadata["started"], "w").close()  # tells the test the step is running
    while not os.path.exists(ctx.metadata["gate"]):
        time.sleep(0.02)
    return {"gated": True}


p_cancel = (
    WorkflowBuilder("p_cancel", "Cancel")
    .add_step(StepBuilder("book", "Book", book).with_compensator(compensate).build())
    .add_step(StepBuilder("hold", "Hold", hold).with_dependencies("book").with_compensator(compensate).build())
    .add_step(StepBuilder("gate", "Gate", wait_for_gate).with_dependencies("hold").build())
    .add_step(StepBuilder("after", "After", never).with_dependencies("gate").build())
    .build()
)

# -- resume: fails until a flag file exists ----------------------------------------------


def extract(ctx, data):
    return {"rows": data["batch"] * 10}


def load(ctx, data):
    if not os.path.exists(ctx.metadata["fix_flag"]):
        raise RuntimeError("warehouse unavailable")
    return {"loaded": data["rows"]}


p_resume = (
    WorkflowBuilder("p_resume", "Resume")
    .add_step(StepBuilder("extract", "Extract", extract).build())
    .add_step(StepBuilder("load", "Load", load).with_dependencies("extract").build())
    .build()
)

# The same, with a compensator on the completed step: the failure compensates it before
# the resume.
p_resume_compensated = (
    WorkflowBuilder("p_resume_compensated", "Resume after compensation")
    .add_step(StepBuilder("extract", "Extract", extract).with_compensator(compensate).build())
    .add_step(StepBuilder("load", "Load", load).with_dependencies("extract").build())
    .build()
)
