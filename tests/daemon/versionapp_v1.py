"""Version 1 of the workflow "versioned" (tests/daemon/test_versions.py)."""

from __future__ import annotations

import time

from daemonapp import log_execution

from orchwf import StepBuilder, WorkflowBuilder


def step(ctx, data):
    log_execution(ctx, note="v1")
    time.sleep(0.05)
    return {f"{ctx.step_id}_by": "v1"}


versioned = (WorkflowBuilder("versioned", "Versioned").with_version("1")
             .add_step(StepBuilder("a", "A", step).build())
             .add_step(StepBuilder("b", "B", step).with_dependencies("a").build())
             .build())
