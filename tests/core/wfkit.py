"""Small helpers shared by the core tests: builders in one line, call recorders."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from orchwf import (
    Orchestrator,
    RetryPolicy,
    RetryPolicyBuilder,
    StepBuilder,
    StepDefinition,
    WorkflowBuilder,
    WorkflowDefinition,
)

GUARD = 10.0  # seconds: an upper bound for waits that should end far sooner


class Recorder:
    """Thread-safe log of what executors did."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[str] = []
        self.inputs: dict[str, dict[str, Any]] = {}
        self.contexts: dict[str, Any] = {}

    def add(self, name: str, data: dict[str, Any] | None = None, ctx: Any = None) -> None:
        with self.lock:
            self.calls.append(name)
            if data is not None:
                self.inputs[name] = dict(data)
            if ctx is not None:
                self.contexts[name] = ctx

    def count(self, name: str) -> int:
        with self.lock:
            return self.calls.count(name)

    def step(self, name: str, output: dict[str, Any] | None = None, fail: BaseException | None = None) -> Callable[..., Any]:
        """An executor that records its call, then raises ``fail`` or returns ``output``."""

        def run(ctx: Any, data: dict[str, Any]) -> dict[str, Any] | None:
            self.add(name, data, ctx)
            if fail is not None:
                raise fail
            return {name: True} if output is None else output

        return run


def retry(max_attempts: int = 3, *errors: str, initial: float = 0.0, multiplier: float = 2.0, max_interval: float = 30.0) -> RetryPolicy:
    return (
        RetryPolicyBuilder()
        .with_max_attempts(max_attempts)
        .with_initial_interval(initial)
        .with_multiplier(multiplier)
        .with_max_interval(max_interval)
        .with_retryable_errors(*errors)
        .build()
    )


def step(
    step_id: str,
    executor: Callable[..., Any],
    deps: Iterable[str] = (),
    *,
    priority: int = 0,
    is_async: bool = False,
    required: bool = True,
    policy: RetryPolicy | None = None,
    timeout: float | None = None,
    compensator: Callable[..., Any] | None = None,
) -> StepDefinition:
    b = StepBuilder(step_id, step_id.upper(), executor).with_priority(priority).with_async(is_async).with_required(required)
    deps = tuple(deps)
    if deps:
        b = b.with_dependencies(*deps)
    if policy is not None:
        b = b.with_retry_policy(policy)
    if timeout is not None:
        b = b.with_timeout(timeout)
    if compensator is not None:
        b = b.with_compensator(compensator)
    return b.build()


def workflow(workflow_id: str, *steps: StepDefinition) -> WorkflowDefinition:
    b = WorkflowBuilder(workflow_id, workflow_id.title())
    for s in steps:
        b = b.add_step(s)
    return b.build()


def register(orch: Orchestrator, workflow_id: str, *steps: StepDefinition) -> WorkflowDefinition:
    definition = workflow(workflow_id, *steps)
    orch.register_workflow(definition)
    return definition


def event_types(orch: Orchestrator, instance_id: str) -> list[str]:
    return [e.event_type for e in orch.get_workflow_events(instance_id)]


def wait_for(predicate: Callable[[], bool], timeout: float = GUARD, interval: float = 0.002) -> None:
    """Poll until ``predicate()`` holds; fail the test if it never does."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(interval)
