"""Workflows for the operations tests: run by a real `orchwf worker --app opsapp`.

Small and fast on purpose; ``sleep`` in the input slows a step down when a test needs
something in flight (e.g. to kill a worker while it runs steps).
"""

from __future__ import annotations

import os
import time
from typing import Any

from orchwf import RetryPolicyBuilder, StepBuilder, WorkflowBuilder


def _work(name: str):
    def run(ctx: Any, data: dict[str, Any]) -> dict[str, Any]:
        delay = float(data.get("sleep", 0) or 0)
        if delay:
            time.sleep(delay)
        return {name: True}

    return run


def _boom(ctx: Any, data: dict[str, Any]) -> dict[str, Any]:
    """Fails while the file named by ``fail_while`` exists (a test removes it to "fix" it)."""
    marker = data.get("fail_while")
    if marker is None or os.path.exists(marker):
        raise RuntimeError("boom")
    return {"boom": "fixed"}


chain = (
    WorkflowBuilder("ops_chain", "Ops chain")
    .add_step(StepBuilder("a", "A", _work("a")).build())
    .add_step(StepBuilder("b", "B", _work("b")).with_dependencies("a").build())
    .add_step(StepBuilder("c", "C", _work("c")).with_dependencies("a").build())
    .build()
)

failing = (
    WorkflowBuilder("ops_fail", "Ops fail")
    .add_step(StepBuilder("first", "First", _work("first")).build())
    .add_step(
        StepBuilder("boom", "Boom", _boom)
        .with_dependencies("first")
        .with_retry_policy(RetryPolicyBuilder().with_max_attempts(1).build())
        .build()
    )
    .add_step(StepBuilder("after", "After", _work("after")).with_dependencies("boom").build())
    .build()
)

# Steps that take a while and survive a crash of their worker (3 attempts).
_survive = RetryPolicyBuilder().with_max_attempts(3).with_initial_interval(0.05).build()
slow = (
    WorkflowBuilder("ops_slow", "Ops slow")
    .add_step(StepBuilder("nap", "Nap", _work("nap")).with_retry_policy(_survive).build())
    .add_step(StepBuilder("done", "Done", _work("done")).with_dependencies("nap").with_retry_policy(_survive).build())
    .build()
)

# An optional step that fails: skipped, and the instance completes without it.
optional = (
    WorkflowBuilder("ops_optional", "Ops optional")
    .add_step(StepBuilder("maybe", "Maybe", _boom).with_required(False)
              .with_retry_policy(RetryPolicyBuilder().with_max_attempts(1).build()).build())
    .add_step(StepBuilder("after", "After", _work("after")).with_dependencies("maybe").build())
    .build()
)
