"""The data model: definitions (what to run) and instances (what ran)."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class WorkflowStatus(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    RETRYING = "retrying"

    def __str__(self) -> str:
        return self.value

    @property
    def is_terminal(self) -> bool:
        return self in (WorkflowStatus.COMPLETED, WorkflowStatus.FAILED, WorkflowStatus.CANCELLED)


class StepStatus(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"
    RETRYING = "retrying"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value

    @property
    def is_terminal(self) -> bool:
        return self in (StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.CANCELLED)


JSONDict = dict[str, Any]
StepOutput = Mapping[str, Any] | None
StepExecutor = Callable[["StepContext", JSONDict], StepOutput | Awaitable[StepOutput]]
StepCompensator = Callable[["StepContext", JSONDict], Any]


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how soon a failed step is tried again.

    ``max_attempts`` counts every attempt, the first included.
    """

    max_attempts: int = 3
    initial_interval: float = 1.0
    multiplier: float = 2.0
    max_interval: float = 30.0
    retryable_errors: tuple[str, ...] = ()
    jitter: bool = False

    def backoff(self, retry_number: int) -> float:
        """Seconds to wait before retry ``retry_number`` (1 = the second attempt).

        The Go package's formula: initial × multiplier^(n−1), capped at max_interval.
        With ``jitter``, a uniform draw in [interval/2, interval] ("equal jitter").
        """
        if retry_number < 1 or self.initial_interval <= 0:
            return 0.0
        interval = self.initial_interval * (self.multiplier ** (retry_number - 1))
        if self.max_interval > 0 and interval > self.max_interval:
            interval = self.max_interval
        if self.jitter:
            interval = random.uniform(interval / 2, interval)
        return interval

    def is_retryable(self, exc: BaseException) -> bool:
        """True if the policy allows another attempt after ``exc``.

        Retryable when the list is empty, or a listed string equals the exception's class
        name (or a base class name), or occurs in ``str(exc)``.
        """
        from .errors import NonRetryableError

        if isinstance(exc, NonRetryableError):
            return False
        if not self.retryable_errors:
            return True
        names = {cls.__name__ for cls in type(exc).__mro__}
        text = str(exc)
        return any(item in names or item in text for item in self.retryable_errors)

    def to_json(self) -> JSONDict:
        return {
            "max_attempts": self.max_attempts,
            "initial_interval": self.initial_interval,
            "multiplier": self.multiplier,
            "max_interval": self.max_interval,
            "retryable_errors": list(self.retryable_errors),
            "jitter": self.jitter,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RetryPolicy:
        return cls(
            max_attempts=int(data["max_attempts"]),
            initial_interval=float(data["initial_interval"]),
            multiplier=float(data["multiplier"]),
            max_interval=float(data["max_interval"]),
            retryable_errors=tuple(data.get("retryable_errors", ())),
            jitter=bool(data.get("jitter", False)),
        )


#: The policy of a step that has none: one attempt, as in the Go package.
SINGLE_ATTEMPT = RetryPolicy(max_attempts=1, initial_interval=0.0)


@dataclass(frozen=True)
class Concurrency:
    """A concurrency key (StepBuilder/WorkflowBuilder.with_concurrency): ``key`` is a
    template over the workflow input ("customer:{customer_id}"); at most ``limit`` steps
    (or instances) with the same rendered key run at once, across every host."""

    key: str
    limit: int

    def to_json(self) -> JSONDict:
        return {"key": self.key, "limit": self.limit}


@dataclass(frozen=True)
class StepDefinition:
    id: str
    name: str
    executor: StepExecutor | None
    description: str = ""
    dependencies: tuple[str, ...] = ()
    retry_policy: RetryPolicy | None = None
    timeout: float | None = None
    required: bool = True
    is_async: bool = False
    priority: int = 0
    compensator: StepCompensator | None = None
    transactional: bool = False
    crash_counts_as_attempt: bool = False
    delay: float = 0.0  # seconds between its dependencies completing (or the start) and it becoming ready
    signal: str | None = None            # wait_for_signal: the name it waits for
    signal_timeout: float | None = None  # seconds it waits before it fails (None: forever)
    child_workflow: str | None = None    # child_workflow_step: the workflow it starts
    child_input_from: str | None = None  # the dependency whose output is the child's input (None: the step's input)
    concurrency: Concurrency | None = None  # with_concurrency: a key over the input, and its limit (daemon)

    @property
    def policy(self) -> RetryPolicy:
        return self.retry_policy or SINGLE_ATTEMPT

    def to_json(self) -> JSONDict:
        """The step's graph and policies, without code: what producers need to enqueue."""
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "dependencies": list(self.dependencies),
            "retry_policy": self.retry_policy.to_json() if self.retry_policy else None,
            "timeout": self.timeout,
            "required": self.required,
            "async": self.is_async,
            "priority": self.priority,
            "has_compensator": self.compensator is not None,
            "transactional": self.transactional,
            "crash_counts_as_attempt": self.crash_counts_as_attempt,
        } | ({"delay": self.delay} if self.delay else {}) | (  # absent when unused: unchanged hashes
            {"signal": self.signal, "signal_timeout": self.signal_timeout} if self.signal else {}) | (
            {"child_workflow": self.child_workflow, "child_input_from": self.child_input_from}
            if self.child_workflow else {}) | (
            {"concurrency": self.concurrency.to_json()} if self.concurrency else {})


@dataclass(frozen=True)
class Schedule:
    """A cron schedule of a workflow (WorkflowBuilder.with_schedule, Client.add_schedule):
    the daemon starts an instance with ``input`` at each tick (docs/schedules.md).
    ``misfire``: what to do with ticks missed while no daemon ran: "once" (one run for
    them all, the default), "all" (each), or "skip" (none)."""

    cron: str
    timezone: str = "UTC"
    input: Mapping[str, Any] = field(default_factory=dict)
    name: str = ""
    misfire: str = "once"


@dataclass(frozen=True)
class WorkflowDefinition:
    id: str
    name: str
    steps: tuple[StepDefinition, ...]
    description: str = ""
    version: str = "1.0.0"
    metadata: Mapping[str, Any] = field(default_factory=dict)
    # Not part of the graph (nor of version_hash): registering the definition keeps the
    # database's schedules of this workflow in step with these.
    schedules: tuple[Schedule, ...] = ()
    concurrency: Concurrency | None = None  # workflow-level: at most `limit` running instances per key


    def step(self, step_id: str) -> StepDefinition:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)

    def to_json(self) -> JSONDict:
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "version": self.version,
            "metadata": dict(self.metadata),
            "steps": [s.to_json() for s in self.steps],
        } | ({"concurrency": self.concurrency.to_json()} if self.concurrency else {})

    @property
    def version_hash(self) -> str:
        """A hash of the graph and policies, to tell two registrations apart."""
        blob = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class StepInstance:
    id: str
    step_id: str
    workflow_inst_id: str
    status: StepStatus = StepStatus.PENDING
    input: JSONDict = field(default_factory=dict)
    output: JSONDict = field(default_factory=dict)
    started_at: datetime | None = None
    completed_at: datetime | None = None
    error: str | None = None
    retry_count: int = 0
    last_retry_at: datetime | None = None
    duration_ms: int = 0
    execution_order: int = 0
    priority: int = 0
    attempts: int = 0

    def is_completed(self) -> bool:
        return self.status.is_terminal


@dataclass
class WorkflowInstance:
    id: str
    workflow_id: str
    status: WorkflowStatus = WorkflowStatus.PENDING
    input: JSONDict = field(default_factory=dict)
    output: JSONDict = field(default_factory=dict)
    context: JSONDict = field(default_factory=dict)
    current_step_id: str | None = None
    started_at: datetime = field(default_factory=utcnow)
    completed_at: datetime | None = None
    error: str | None = None
    retry_count: int = 0
    last_retry_at: datetime | None = None
    metadata: JSONDict = field(default_factory=dict)
    trace_id: str = ""
    correlation_id: str = ""
    business_id: str = ""
    steps: list[StepInstance] = field(default_factory=list)
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)
    priority: int = 0
    queue: str = "default"
    idempotency_key: str | None = None
    run_mode: str = "local"

    def is_completed(self) -> bool:
        return self.status.is_terminal

    def step(self, step_id: str) -> StepInstance:
        for s in self.steps:
            if s.step_id == step_id:
                return s
        raise KeyError(step_id)


@dataclass
class WorkflowEvent:
    id: str
    workflow_inst_id: str
    event_type: str
    event_data: JSONDict = field(default_factory=dict)
    step_inst_id: str | None = None
    timestamp: datetime = field(default_factory=utcnow)


@dataclass
class WorkflowResult:
    success: bool
    workflow_inst: WorkflowInstance
    output: JSONDict
    error: BaseException | None
    duration: timedelta


@dataclass
class StepContext:
    """What an executor knows about the attempt it runs.

    ``cancelled`` is set when the attempt times out or the workflow is cancelled;
    long-running code should check it. ``conn`` is set only for transactional daemon
    steps: a connection inside the transaction that commits the step's result.
    """

    workflow_instance_id: str
    step_id: str
    attempt: int
    deadline: datetime | None
    metadata: Mapping[str, Any]
    trace_id: str
    logger: logging.Logger
    cancelled: threading.Event = field(default_factory=threading.Event)
    workflow_id: str = ""
    step_instance_id: str = ""
    step_output: JSONDict | None = None
    conn: psycopg.Connection[Any] | None = None

    def remaining(self) -> float | None:
        """Seconds left before the deadline, or None when the step has no timeout."""
        if self.deadline is None:
            return None
        return max(0.0, (self.deadline - utcnow()).total_seconds())


def sorted_by_priority(steps: Sequence[StepDefinition]) -> list[StepDefinition]:
    """Non-increasing priority, ties in definition order (``sorted`` is stable)."""
    return sorted(steps, key=lambda s: -s.priority)
