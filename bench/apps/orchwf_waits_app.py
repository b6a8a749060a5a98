"""The workflows of ``python -m bench.waits``: one that waits for a signal first, one
that sleeps 2 s between two steps."""

from __future__ import annotations

from typing import Any

from orchwf import StepBuilder, StepContext, WorkflowBuilder, sleep_step, wait_for_signal


def _noop(ctx: StepContext, data: dict[str, Any]) -> dict[str, Any]:
    return {}


signal_first = (WorkflowBuilder("bench_waits_signal", "bench: waits for a signal")
                .add_step(wait_for_signal("wait", "go").build())
                .build())
sleeper = (WorkflowBuilder("bench_waits_sleep", "bench: sleeps 2 s between two steps")
           .add_step(StepBuilder("first", "first", _noop).build())
           .add_step(sleep_step("nap", 2.0).with_dependencies("first").build())
           .build())
