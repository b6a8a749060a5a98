"""A claimed step in a worker process, and the result of running it."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..db.rows import ClaimedStep, StepResult
from ..lifecycle import Outcome
from ..types import StepContext


@dataclass
class Claim:
    """A step this process holds the lease of, from the claim until its result commits."""

    row: ClaimedStep
    claimed_at: float = field(default_factory=time.monotonic)
    renewed_at: float = field(default_factory=time.monotonic)
    ctx: StepContext | None = None
    timed: bool = False  # it has a timeout (a thread that ignores it taints the process)
    input: dict[str, Any] | None = None  # what the executor was given

    @property
    def key(self) -> str:
        return str(self.row.step_inst_id)

    @property
    def step_uuid(self) -> uuid.UUID:
        return self.row.step_inst_id

    @property
    def instance_id(self) -> str:
        return str(self.row.workflow_inst_id)

    @property
    def workflow_id(self) -> str:
        return self.row.workflow_id

    @property
    def step_id(self) -> str:
        return self.row.step_id


@dataclass
class Result:
    claim: Claim
    outcome: Outcome
    output: dict[str, Any] | None = None
    error: str | None = None
    duration_ms: int = 0
    delay: float = 0.0
    committed: bool = False  # a transactional step already wrote its own result (or lost its lease)
    stale: bool = False      # the lease was lost: the result was discarded
    exception: BaseException | None = field(default=None, repr=False)  # what failed the attempt (for its span)

    def row(self) -> StepResult:
        """The finish's row, fenced by the claim's lease token."""
        c = self.claim
        return StepResult(c.step_uuid, c.row.lease_token, self.outcome.value, self.output, self.error,
                          self.duration_ms, self.delay, c.input)
