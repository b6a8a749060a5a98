"""The StateManager contract (the 15 operations of the Go ORCHWF package's StateManager) and the shared argument checks."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar, runtime_checkable

from ..errors import ValidationError
from ..types import StepInstance, StepStatus, WorkflowEvent, WorkflowInstance, WorkflowStatus

T = TypeVar("T")

#: The only keys ``list_workflows`` accepts; anything else is a ValidationError.
FILTER_KEYS = ("workflow_id", "status", "trace_id", "correlation_id", "business_id")
MAX_LIST_LIMIT = 10_000


@runtime_checkable
class StateManager(Protocol):
    """Persistence for workflow instances, step instances and events.

    ``save_workflow`` and ``save_step`` are upserts: they persist the whole record,
    so every field the orchestrator changes (output, context, retry counts, step
    input, durations) reaches the store. Updates of an unknown ID raise
    WorkflowNotFoundError / StepNotFoundError. Inside ``with_transaction(fn)`` every
    write joins one transaction; an exception rolls all of them back.
    """

    def save_workflow(self, workflow: WorkflowInstance) -> None: ...
    def get_workflow(self, workflow_inst_id: str) -> WorkflowInstance: ...
    def update_workflow_status(self, workflow_inst_id: str, status: WorkflowStatus) -> None: ...
    def update_workflow_output(self, workflow_inst_id: str, output: Mapping[str, Any]) -> None: ...
    def update_workflow_error(self, workflow_inst_id: str, error: BaseException | str) -> None: ...
    def list_workflows(
        self, filters: Mapping[str, Any] | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[list[WorkflowInstance], int]: ...
    def save_step(self, step: StepInstance) -> None: ...
    def get_step(self, step_inst_id: str) -> StepInstance: ...
    def get_workflow_steps(self, workflow_inst_id: str) -> list[StepInstance]: ...
    def update_step_status(self, step_inst_id: str, status: StepStatus) -> None: ...
    def update_step_output(self, step_inst_id: str, output: Mapping[str, Any]) -> None: ...
    def update_step_error(self, step_inst_id: str, error: BaseException | str) -> None: ...
    def save_event(self, event: WorkflowEvent) -> None: ...
    def get_workflow_events(self, workflow_inst_id: str) -> list[WorkflowEvent]: ...
    def with_transaction(self, fn: Callable[[], T]) -> T: ...


def normalize_filters(filters: Mapping[str, Any] | None) -> dict[str, str]:
    """Check list filters against the allow-list; return them as plain strings."""
    if filters is None:
        return {}
    if not isinstance(filters, Mapping):
        raise ValidationError(f"filters must be a mapping, got {type(filters).__name__}")
    out: dict[str, str] = {}
    for key, value in filters.items():
        if key not in FILTER_KEYS:
            raise ValidationError(
                f"unknown filter {key!r}; allowed filters: {', '.join(FILTER_KEYS)}"
            )
        if key == "status":
            try:
                value = WorkflowStatus(value).value
            except ValueError:
                allowed = ", ".join(s.value for s in WorkflowStatus)
                raise ValidationError(f"unknown status {value!r}; allowed: {allowed}") from None
        elif not isinstance(value, str):
            raise ValidationError(f"filter {key!r} must be a string, got {type(value).__name__}")
        if "\x00" in value:
            raise ValidationError(f"filter {key!r} contains a NUL character")
        out[key] = value
    return out


def check_page(limit: int, offset: int) -> None:
    for name, value in (("limit", limit), ("offset", offset)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError(f"{name} must be an int, got {value!r}")
        if value < 0:
            raise ValidationError(f"{name} must not be negative, got {value}")
    if limit > MAX_LIST_LIMIT:
        raise ValidationError(f"limit must be at most {MAX_LIST_LIMIT}, got {limit}")
    if offset > 2**62:
        raise ValidationError(f"offset {offset} is out of range")


def is_uuid(value: object) -> bool:
    """Instance and step IDs are UUIDs; anything else cannot exist in any store."""
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def error_text(error: BaseException | str) -> str:
    if isinstance(error, BaseException):
        return str(error) or type(error).__name__
    return str(error)
