"""A step's lifecycle, the same in both engines: outcomes, events, retries, compensation.

The in-process ``Orchestrator`` and the daemon's workers both decide here what a failed
attempt leads to, name their events from this catalogue, and order compensation with
``compensation_order``. The daemon's SQL (sql/api/finish.sql) stores the same outcome
and event names; tests/test_lifecycle.py checks that the two agree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import TypeVar

from .types import RetryPolicy

T = TypeVar("T")

#: The daemon's pseudo-step that runs an ended instance's compensators (sql/api/finish.sql).
COMPENSATE_STEP = "$compensate"

#: A crash (the worker died, or its lease expired) has its own budget, max(3, max_attempts),
#: and uses up none of the retry budget unless the step opts in (with_crash_counts_as_attempt).
MIN_CRASH_BUDGET = 3


class Outcome(str, Enum):
    """How one attempt ended: what the finish records (orchwf_finish_steps' p_outcomes)."""

    COMPLETED = "completed"  # the executor returned: the step is done
    FAILED = "failed"        # failed for good: a required step fails its instance
    SKIPPED = "skipped"      # an optional step failed for good: its dependents still run
    RETRY = "retry"          # a failed attempt with budget left: run again after a backoff
    REQUEUE = "requeue"      # the worker died: back to the queue, counted as a crash
    RELEASE = "release"      # given back (shutdown, a lost reply): not counted at all
    WAIT = "wait"            # a child workflow started: the step waits for it (not an attempt)

    def __str__(self) -> str:
        return self.value

    @property
    def is_final(self) -> bool:
        return self in (Outcome.COMPLETED, Outcome.FAILED, Outcome.SKIPPED)


class Event(str, Enum):
    """The catalogue of event types; EVENT_MEANINGS says when each is written."""

    WORKFLOW_STARTED = "workflow.started"
    WORKFLOW_COMPLETED = "workflow.completed"
    WORKFLOW_FAILED = "workflow.failed"
    WORKFLOW_CANCELLED = "workflow.cancelled"
    WORKFLOW_RESUMED = "workflow.resumed"
    STEP_STARTED = "step.started"
    STEP_RETRY = "step.retry"
    STEP_ATTEMPT_FAILED = "step.attempt_failed"
    STEP_COMPLETED = "step.completed"
    STEP_FAILED = "step.failed"
    STEP_SKIPPED = "step.skipped"
    STEP_RESCUED = "step.rescued"
    STEP_RELEASED = "step.released"
    STEP_CHILD_STARTED = "step.child_started"
    STEP_WAITING = "step.waiting"
    STEP_COMPENSATED = "step.compensated"
    STEP_COMPENSATION_FAILED = "step.compensation_failed"

    def __str__(self) -> str:
        return self.value


EVENT_MEANINGS: dict[Event, str] = {
    Event.WORKFLOW_STARTED: "the instance was created (enqueued, or started in-process)",
    Event.WORKFLOW_COMPLETED: "every step completed or was skipped; the instance's output is final",
    Event.WORKFLOW_FAILED: "a required step failed for good; compensators (if any) have run",
    Event.WORKFLOW_CANCELLED: "an operator or the API cancelled the instance; compensators (if any) have run",
    Event.WORKFLOW_RESUMED: "a failed or cancelled instance was resumed, or one of its steps retried",
    Event.STEP_STARTED: "the step's first attempt started",
    Event.STEP_RETRY: "a later attempt started (data: attempt)",
    Event.STEP_ATTEMPT_FAILED: "an attempt failed and another will run (data: error, attempt, retry_in_seconds)",
    Event.STEP_COMPLETED: "the step completed (data: duration_ms)",
    Event.STEP_FAILED: "the step failed for good (data: error, retries)",
    Event.STEP_SKIPPED: "an optional step failed for good; its dependents run anyway",
    Event.STEP_RESCUED: "daemon only: its worker died or its lease expired; it goes back to the queue",
    Event.STEP_RELEASED: "daemon only: its worker gave it back unfinished (shutdown); the attempt does not count",
    Event.STEP_CHILD_STARTED: "daemon only: a child_workflow_step started its child and waits for it "
                              "(data: child_instance_id)",
    Event.STEP_WAITING: "daemon only: a wait_for_signal step found its signal taken by another waiting step "
                        "and waits again (data: none)",
    Event.STEP_COMPENSATED: "the step's compensator ran",
    Event.STEP_COMPENSATION_FAILED: "the step's compensator raised (data: error); the others still run",
}


@dataclass(frozen=True)
class FailureDecision:
    outcome: Outcome  # RETRY, FAILED or SKIPPED
    delay: float = 0.0  # seconds before the next attempt (RETRY)


def decide_failure(policy: RetryPolicy, required: bool, error: BaseException, failures_before: int) -> FailureDecision:
    """What an attempt that raised ``error`` leads to.

    ``failures_before`` counts the failed attempts before this one (the step's
    retry_count). Another attempt runs while the policy retries this error and the
    budget (``max_attempts``, every attempt counted) is not used up; else the step fails
    for good, or is skipped when it is optional.
    """
    failures = failures_before + 1
    if policy.is_retryable(error) and failures < policy.max_attempts:
        return FailureDecision(Outcome.RETRY, policy.backoff(failures))
    return FailureDecision(Outcome.FAILED if required else Outcome.SKIPPED)


def crash_budget(max_attempts: int) -> int:
    """Crashes a step survives before it fails: max(3, max_attempts)."""
    return max(MIN_CRASH_BUDGET, max_attempts)


def compensation_order(steps: Iterable[T], key: Callable[[T], tuple[datetime | None, int]]) -> list[T]:
    """Completed steps in the order their compensators run: the newest completion first
    (ties: the later step in the definition first). ``key`` gives (completed_at,
    execution_order)."""

    def newest_first(step: T) -> tuple[float, int]:
        completed_at, order = key(step)
        return (completed_at.timestamp() if completed_at else float("-inf"), order)

    return sorted(steps, key=newest_first, reverse=True)
