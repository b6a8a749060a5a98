"""opsapp's workflows plus a few that make the rarer metrics and log lines happen.

Run by ``orchwf worker --app obsapp`` in the observability tests (real Prometheus, the
Grafana dashboard, JSON logs): a retry, a timeout, a step that holds its slot until it
is cancelled or released, and a step that logs through ``ctx.logger``.
"""

from __future__ import annotations

from typing import Any

from opsapp import chain, failing, optional, slow  # noqa: F401 - served by the same daemon

from orchwf import RetryPolicyBuilder, StepBuilder, WorkflowBuilder

_retry = RetryPolicyBuilder().with_max_attempts(3).with_initial_interval(0.05).build()
_once = RetryPolicyBuilder().with_max_attempts(1).build()


def _flaky(ctx: Any, data: dict[str, Any]) -> dict[str, Any]:
    """Fails its first attempt: one retry, then a completion."""
    if ctx.attempt == 1:
        raise RuntimeError("first attempts fail")
    return {"flaky": ctx.attempt}


def _hold(ctx: Any, data: dict[str, Any]) -> dict[str, Any]:
    """Keeps its slot until cancelled (lease lost, shutdown, timeout) or ``hold`` seconds pass."""
    ctx.cancelled.wait(float(data.get("hold", 30)))
    return {"held": True}


def _chatty(ctx: Any, data: dict[str, Any]) -> dict[str, Any]:
    """Logs as step code does: a line, and an error with its traceback."""
    ctx.logger.info("step says hello")
    try:
        raise ValueError("a handled error")
    except ValueError:
        ctx.logger.exception("step caught an error")
    return {"chatty": True}


flaky = (
    WorkflowBuilder("ops_flaky", "Ops flaky")
    .add_step(StepBuilder("try", "Try", _flaky).with_retry_policy(_retry).build())
    .build()
)

late = (
    WorkflowBuilder("ops_timeout", "Ops timeout")
    .add_step(StepBuilder("late", "Late", _hold).with_timeout(0.3).with_retry_policy(_once).build())
    .build()
)

hold = (
    WorkflowBuilder("ops_hold", "Ops hold")
    .add_step(StepBuilder("hold", "Hold", _hold).with_retry_policy(_retry).build())
    .build()
)

chatty = (
    WorkflowBuilder("ops_log", "Ops log")
    .add_step(StepBuilder("talk", "Talk", _chatty).build())
    .build()
)
