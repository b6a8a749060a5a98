"""orchwf: workflow orchestration on PostgreSQL.

A library (builders, an in-process Orchestrator, state stores) and a daemon
(``orchwf-worker``) whose forked workers claim steps from Postgres.
"""

from .builders import (
    RetryPolicyBuilder,
    StepBuilder,
    WorkflowBuilder,
    child_workflow_step,
    sleep_step,
    wait_for_signal,
)
from .errors import (
    InvalidStateError,
    NonRetryableError,
    OrchwfError,
    ScheduleNotFoundError,
    StepFailedError,
    StepNotFoundError,
    StepTimeoutError,
    ValidationError,
    WorkflowCancelledError,
    WorkflowNotFoundError,
)
from .ids import set_business_id, set_correlation_id, set_trace_id
from .orchestrator import Orchestrator
from .stores import InMemoryStateManager, StateManager
from .types import (
    RetryPolicy,
    Schedule,
    StepContext,
    StepDefinition,
    StepInstance,
    StepStatus,
    WorkflowDefinition,
    WorkflowEvent,
    WorkflowInstance,
    WorkflowResult,
    WorkflowStatus,
)

__all__ = [
    "InMemoryStateManager",
    "InvalidStateError",
    "NonRetryableError",
    "Orchestrator",
    "OrchwfError",
    "RetryPolicy",
    "RetryPolicyBuilder",
    "Schedule",
    "ScheduleNotFoundError",
    "StateManager",
    "StepBuilder",
    "StepContext",
    "StepDefinition",
    "StepFailedError",
    "StepInstance",
    "StepNotFoundError",
    "StepStatus",
    "StepTimeoutError",
    "ValidationError",
    "WorkflowBuilder",
    "WorkflowCancelledError",
    "WorkflowDefinition",
    "WorkflowEvent",
    "WorkflowInstance",
    "WorkflowNotFoundError",
    "WorkflowResult",
    "WorkflowStatus",
    "child_workflow_step",
    "set_business_id",
    "set_correlation_id",
    "set_trace_id",
    "sleep_step",
    "wait_for_signal",
]


def __getattr__(name: str):  # lazy: the Postgres parts import psycopg only when used
    if name == "DBStateManager":
        from .stores.postgres import DBStateManager

        return DBStateManager
    if name == "migrate":
        from .db.migrations import migrate

        return migrate
    if name in ("Client", "enqueue"):
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module 'orchwf' has no attribute {name!r}")
