"""Retry policies: attempts, events, retryable_errors, NonRetryableError, backoff waits."""

from __future__ import annotations

import time

import pytest
from wfkit import register, retry, step

from orchwf import NonRetryableError, StepFailedError, StepStatus


class Flaky:
    """Fails ``failures`` times with ``exc``, then returns ``{"ok": attempt}``."""

    def __init__(self, failures: int, exc: BaseException) -> None:
        self.failures = failures
        self.exc = exc
        self.attempts: list[int] = []
        self.times: list[float] = []

    def __call__(self, ctx, data):
        self.attempts.append(ctx.attempt)
        self.times.append(time.monotonic())
        if len(self.attempts) <= self.failures:
            raise self.exc
        return {"ok": ctx.attempt}


def test_retry_until_success(orch):
    flaky = Flaky(2, RuntimeError("transient"))
    register(orch, "w", step("s", flaky, policy=retry(3)))
    result = orch.start_workflow("w", {})
    assert result.success
    assert flaky.attempts == [1, 2, 3]  # ctx.attempt is 1-based
    assert result.output == {"ok": 3}
    s = orch.get_workflow_status(result.workflow_inst.id).steps[0]
    assert s.status == StepStatus.COMPLETED
    assert s.retry_count == 2
    assert s.last_retry_at is not None
    assert s.error is None
    events = orch.get_workflow_events(result.workflow_inst.id)
    assert [(e.event_type, e.event_data) for e in events if e.event_type == "step.retry"] == [
        ("step.retry", {"attempt": 2}),
        ("step.retry", {"attempt": 3}),
    ]


def test_attempts_exhausted(orch):
    flaky = Flaky(10, RuntimeError("always"))
    register(orch, "w", step("s", flaky, policy=retry(3)))
    result = orch.start_workflow("w", {})
    assert not result.success
    assert isinstance(result.error, StepFailedError)
    assert str(result.error) == "step s failed after 3 attempts: always"
    assert result.error.__cause__ is flaky.exc
    assert flaky.attempts == [1, 2, 3]
    s = orch.get_workflow_status(result.workflow_inst.id).steps[0]
    assert s.status == StepStatus.FAILED and s.retry_count == 2 and s.error == "always"
    failed = [e for e in orch.get_workflow_events(result.workflow_inst.id) if e.event_type == "step.failed"]
    assert [e.event_data for e in failed] == [{"error": "always", "retries": 2}]


def test_no_policy_means_one_attempt(orch):
    flaky = Flaky(1, RuntimeError("once"))
    register(orch, "w", step("s", flaky))
    result = orch.start_workflow("w", {})
    assert flaky.attempts == [1]
    assert str(result.error) == "step s failed after 1 attempts: once"


class NetworkGlitch(ConnectionError):
    pass


@pytest.mark.parametrize(
    "exc, names, retried",
    [
        (RuntimeError("x"), (), True),  # an empty list retries everything
        (NetworkGlitch("x"), ("NetworkGlitch",), True),  # the class name
        (NetworkGlitch("x"), ("ConnectionError",), True),  # a base class name
        (NetworkGlitch("x"), ("OSError",), True),  # a more distant base
        (RuntimeError("upstream said: rate limited, slow down"), ("rate limited",), True),  # substring of str(exc)
        (RuntimeError("bad request"), ("ConnectionError", "rate limited"), False),
        (ValueError("x"), ("ValueErr",), False),  # names match whole, not by prefix
        (KeyError("missing"), ("LookupError",), True),
    ],
)
def test_retryable_errors_matching(orch, exc, names, retried):
    flaky = Flaky(1, exc)
    register(orch, "w", step("s", flaky, policy=retry(3, *names)))
    result = orch.start_workflow("w", {})
    if retried:
        assert result.success and flaky.attempts == [1, 2]
    else:
        assert not result.success and flaky.attempts == [1]
        assert str(result.error).startswith("step s failed after 1 attempts: ")


def test_non_retryable_error_fails_at_once_whatever_the_policy(orch):
    flaky = Flaky(5, NonRetryableError("card declined"))
    register(orch, "w", step("s", flaky, policy=retry(5, "NonRetryableError", "card")))
    result = orch.start_workflow("w", {})
    assert flaky.attempts == [1]
    assert str(result.error) == "step s failed after 1 attempts: card declined"
    assert isinstance(result.error.__cause__, NonRetryableError)


def test_non_retryable_subclass(orch):
    class Declined(NonRetryableError):
        pass

    flaky = Flaky(5, Declined("no"))
    register(orch, "w", step("s", flaky, policy=retry(5)))
    orch.start_workflow("w", {})
    assert flaky.attempts == [1]


def test_retries_of_an_optional_step_then_skip(orch):
    flaky = Flaky(9, RuntimeError("meh"))
    register(orch, "w", step("opt", flaky, policy=retry(2), required=False), step("b", lambda c, d: {"b": 1}, ["opt"]))
    result = orch.start_workflow("w", {})
    assert result.success and result.output == {"b": 1}
    assert flaky.attempts == [1, 2]
    types = [e.event_type for e in orch.get_workflow_events(result.workflow_inst.id)]
    assert types.count("step.retry") == 1 and types.count("step.attempt_failed") == 1
    assert "step.failed" in types and "step.skipped" in types


def test_backoff_waits_between_attempts(orch):
    flaky = Flaky(2, RuntimeError("x"))
    register(orch, "w", step("s", flaky, policy=retry(3, initial=0.03, multiplier=2.0, max_interval=1.0)))
    assert orch.start_workflow("w", {}).success
    gaps = [b - a for a, b in zip(flaky.times, flaky.times[1:], strict=False)]
    assert gaps[0] >= 0.03 * 0.95
    assert gaps[1] >= 0.06 * 0.95


def test_the_input_is_the_same_for_every_attempt(orch):
    seen = []

    def step_fn(ctx, data):
        seen.append(dict(data))
        data["scribble"] = ctx.attempt  # must not leak into the next attempt
        if ctx.attempt < 3:
            raise RuntimeError("again")
        return {}

    register(orch, "w", step("s", step_fn, policy=retry(3)))
    assert orch.start_workflow("w", {"k": 1}).success
    assert seen == [{"k": 1}] * 3
