"""Rows of orchwf's statements, as dataclasses built by column name (db/queries.py).

A field per column the statement returns, named as the column: a renamed or reordered
column fails loudly at the first call instead of shifting every value by one.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass
class ClaimedStep:
    """A step a worker now holds the lease of (orchwf_claim_steps)."""

    step_inst_id: uuid.UUID
    workflow_inst_id: uuid.UUID
    workflow_id: str
    step_id: str
    lease_token: int
    attempt: int
    retry_count: int
    workflow_input: dict[str, Any] | None
    metadata: dict[str, Any] | None
    trace_id: str | None
    completed: list[list[Any]] | None  # [[step_id, output], ...] in completion order
    step_input: dict[str, Any] | None


@dataclass
class StepResult:
    """One result for the finish (orchwf_finish_steps), fenced by its lease token.

    ``outcome`` is a lifecycle.Outcome value; ``input`` is what the attempt was given
    (kept for operators).
    """

    step_inst_id: uuid.UUID
    lease_token: int
    outcome: str
    output: dict[str, Any] | None = None
    error: str | None = None
    duration_ms: int | None = None
    delay: float = 0.0
    input: dict[str, Any] | None = None


@dataclass
class MaintainRow:
    """What one orchwf_maintain call did and learnt (maintenance/round.py)."""

    promoted: int
    rescued: int
    next_due: float | None  # seconds until the next scheduled step, None: none
    suspects: bool  # suspects wait in the supervisor's queues: run a quarantine worker


@dataclass
class RescuedStep:
    step_inst_id: uuid.UUID
    outcome: str
    cause: str


@dataclass
class CompensableStep:
    step_inst_id: uuid.UUID
    step_id: str
    input: dict[str, Any] | None
    output: dict[str, Any] | None
    completed_at: datetime | None
    execution_order: int


@dataclass
class ProcessRegistration:
    """A row of orchwf_workers: a supervisor, worker or quarantine process."""

    worker_id: str
    supervisor_id: str
    host: str
    pid: int
    role: str
    queues: list[str]
    workflows: list[str]
    concurrency: int
    versions: list[str] = field(default_factory=list)  # definition versions (hashes) its code has


@dataclass
class ProcessRow:
    worker_id: str
    role: str
    host: str
    pid: int
    supervisor_id: str | None
    queues: list[str]
    workflows: list[str]
    concurrency: int
    started_at: datetime
    heartbeat_at: datetime
    heartbeat_age: float


@dataclass
class RunningClaim:
    lease_owner: str
    workflow_inst_id: uuid.UUID
    workflow_id: str
    step_id: str
    attempt: int
    started_at: datetime | None
    running_for: float | None
    lease_expires_in: float | None


@dataclass
class StepDetails:
    """Budgets, lease and schedule of one step, beside what StepInstance carries."""

    step_inst_id: uuid.UUID
    crashes: int
    max_attempts: int
    required: bool
    lease_owner: str | None
    lease_expires_at: datetime | None
    run_after: datetime | None
    lease_expires_in: float | None
    due_in: float | None


@dataclass
class QueueStats:
    queue: str
    ready: int
    oldest_ready_age: float
    paused: bool = False
    rate_per_second: float | None = None  # None: no rate limit
    burst: int | None = None


@dataclass
class QueueControl:
    """A queue an operator has set something on (orchwf_queues)."""

    name: str
    paused: bool
    paused_at: datetime | None
    rate_per_second: float | None  # None: no rate limit
    burst: int | None


@dataclass
class ConcurrencyKey:
    """A concurrency key in use (orchwf_concurrency_keys): its limit, the slots held
    (steps or instances ready or running under it) and the holders waiting for one."""

    key: str
    concurrency_limit: int
    held: int
    waiting: int
    updated_at: datetime


@dataclass
class Stats:
    """orchwf stats: the whole database, from the runtime tables and indexes."""

    queues: list[QueueStats]
    running_steps: int
    scheduled_steps: int
    pending: int
    running: int
    finished: dict[str, int]
    live_processes: dict[str, int] = field(default_factory=dict)


@dataclass
class DemoSummary:
    outcomes: dict[str, int]
    finished_steps: int
    retries: int
    queue_waits_ms: list[float]
    compensations: int


@dataclass
class ScheduleRow:
    """A cron schedule as stored (orchwf_schedules; docs/schedules.md)."""

    name: str
    workflow_id: str
    cron: str
    timezone: str
    input: dict[str, Any]
    misfire: str      # once | all | skip
    source: str       # client | definition
    paused: bool
    next_run_at: datetime
    last_run_at: datetime | None
    last_instance_id: uuid.UUID | None
    last_error: str | None
