"""Version 2 of the workflow "versioned": one more step (tests/daemon/test_versions.py)."""

from __future__ import annotations

import time

from daemonapp import log_execution

from orchwf import StepBuilder, WorkflowBuilder


def step(ctx, data):
    log_execution(ctx, note="v2")
    time.sleep(0.05)
    return {f"{ctx.step_id}_by": "v2"}


versioned = (WorkflowBuilder("versioned", "Versioned").with_version("2")
             .add_step(StepBuilder("a", "A", step).build())
             .add_step(StepBuilder("b", "B", step).with_dependencies("a").build())
             .add_step(StepBuilder("c", "C", step).with_dependencies("b").build())
             .build())
