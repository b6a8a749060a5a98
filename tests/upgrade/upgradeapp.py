"""Workflows both releases can run (only API that release 2 already had).

Every execution is logged on its own connection in ``upgrade_exec`` with the worker's
orchwf version, so a test sees which release ran each step, and how often.
"""

from __future__ import annotations

import os
import time

import psycopg

from orchwf import RetryPolicyBuilder, StepBuilder, WorkflowBuilder

DSN = os.environ.get("ORCHWF_TEST_APP_DSN", "")
RELEASE = os.environ.get("UPGRADE_RELEASE", "?")  # "old" or "new", set by the test



def _log(ctx) -> None:
    with psycopg.connect(DSN, autocommit=True) as conn:
        conn.execute("INSERT INTO upgrade_exec (instance_id, step_id, attempt, release, pid) "
                     "VALUES (%s, %s, %s, %s, %s)",
                     (ctx.workflow_instance_id, ctx.step_id, ctx.attempt, RELEASE, os.getpid()))


def step(ctx, data):
    _log(ctx)
    time.sleep(float(data.get("sleep", 0.01)))
    return {f"{ctx.step_id}_by": RELEASE}


def flaky(ctx, data):
    _log(ctx)
    if ctx.attempt < 2:
        raise RuntimeError("first attempt fails")
    return {"flaky_by": RELEASE}


def undo(ctx, data):
    _log(ctx)


chain = (
    WorkflowBuilder("upgrade_chain", "Upgrade chain")
    .add_step(StepBuilder("a", "A", step).build())
    .add_step(StepBuilder("b", "B", step).with_dependencies("a").build())
    .add_step(StepBuilder("c", "C", flaky).with_dependencies("b")
              .with_retry_policy(RetryPolicyBuilder().with_max_attempts(3).with_initial_interval(0.05).build())
              .build())
    .build()
)

fan = (
    WorkflowBuilder("upgrade_fan", "Upgrade fan-out")
    .add_step(StepBuilder("root", "Root", step).with_compensator(undo).build())
    .add_step(StepBuilder("left", "Left", step).with_dependencies("root").build())
    .add_step(StepBuilder("right", "Right", step).with_dependencies("root").build())
    .add_step(StepBuilder("join", "Join", step).with_dependencies("left", "right").build())
    .build()
)
