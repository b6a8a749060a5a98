"""InMemoryStateManager: for tests and single-process use; real rollback, deep copies."""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from ..errors import StepNotFoundError, ValidationError, WorkflowNotFoundError
from ..jsonvalue import check_json_object
from ..types import (
    StepInstance,
    StepStatus,
    WorkflowEvent,
    WorkflowInstance,
    WorkflowStatus,
    utcnow,
)
from .base import check_page, error_text, is_uuid, normalize_filters

T = TypeVar("T")

_TERMINAL_WF = (WorkflowStatus.COMPLETED, WorkflowStatus.FAILED, WorkflowStatus.CANCELLED)
_TERMINAL_STEP = (StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.SKIPPED, StepStatus.CANCELLED)


class InMemoryStateManager:
    """Dicts behind one re-entrant lock.

    A transaction holds the lock for its whole duration (so it is serialisable) and keeps
    an undo journal; an exception replays the journal backwards. Records are deep-copied
    in and out, so callers never share mutable state with the store.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._workflows: dict[str, WorkflowInstance] = {}
        self._steps: dict[str, StepInstance] = {}
        self._steps_by_workflow: dict[str, list[str]] = {}
        self._events: dict[str, list[WorkflowEvent]] = {}
        self._event_ids: dict[str, str] = {}
        self._local = threading.local()

    # -- transactions -------------------------------------------------------------------

    def with_transaction(self, fn: Callable[[], T]) -> T:
        with self._lock:
            journal: list[Callable[[], None]] | None = getattr(self._local, "journal", None)
            outer = journal is None
            mine: list[Callable[[], None]] = []
            self._local.journal = mine
            try:
                result = fn()
            except BaseException:
                for undo in reversed(mine):
                    undo()
                self._local.journal = journal
                raise
            self._local.journal = journal
            if not outer and journal is not None:
                journal.extend(mine)  # a nested transaction commits into its parent
            return result

    def _record(self, undo: Callable[[], None]) -> None:
        journal = getattr(self._local, "journal", None)
        if journal is not None:
            journal.append(undo)

    def _put(self, table: dict[str, Any], key: str, value: Any) -> None:
        missing = object()
        old = table.get(key, missing)

        def undo() -> None:
            if old is missing:
                table.pop(key, None)
            else:
                table[key] = old

        self._record(undo)
        table[key] = value

    # -- workflows ----------------------------------------------------------------------

    def save_workflow(self, workflow: WorkflowInstance) -> None:
        # Refuse what DBStateManager refuses, so code tested on memory works on Postgres.
        _check_id(workflow.id, "workflow id")
        json_fields = {
            name: check_json_object(getattr(workflow, name), f"workflow {name}")
            for name in ("input", "output", "context", "metadata")
        }
        shallow = copy.copy(workflow)
        shallow.steps = []  # steps are stored by save_step, not here
        stored = copy.deepcopy(shallow)
        for name, value in json_fields.items():
            setattr(stored, name, value)
        stored.updated_at = utcnow()
        with self._lock:
            self._put(self._workflows, stored.id, stored)
            if stored.id not in self._steps_by_workflow:
                self._put(self._steps_by_workflow, stored.id, [])
                self._put(self._events, stored.id, [])

    def _workflow(self, workflow_inst_id: str) -> WorkflowInstance:
        try:
            return self._workflows[workflow_inst_id]
        except (KeyError, TypeError):
            raise WorkflowNotFoundError(str(workflow_inst_id)) from None

    def get_workflow(self, workflow_inst_id: str) -> WorkflowInstance:
        with self._lock:
            wf = copy.deepcopy(self._workflow(workflow_inst_id))
            wf.steps = self.get_workflow_steps(workflow_inst_id)
            return wf

    def _update_workflow(self, workflow_inst_id: str, change: Callable[[WorkflowInstance], None]) -> None:
        with self._lock:
            wf = copy.deepcopy(self._workflow(workflow_inst_id))
            change(wf)
            wf.updated_at = utcnow()
            self._put(self._workflows, wf.id, wf)

    def update_workflow_status(self, workflow_inst_id: str, status: WorkflowStatus) -> None:
        status = WorkflowStatus(status)

        def change(wf: WorkflowInstance) -> None:
            wf.status = status
            if status in _TERMINAL_WF:
                wf.completed_at = utcnow()

        self._update_workflow(workflow_inst_id, change)

    def update_workflow_output(self, workflow_inst_id: str, output: Mapping[str, Any]) -> None:
        value = check_json_object(dict(output) if output is not None else None, "workflow output")
        self._update_workflow(workflow_inst_id, lambda wf: setattr(wf, "output", value))

    def update_workflow_error(self, workflow_inst_id: str, error: BaseException | str) -> None:
        text = error_text(error)

        def change(wf: WorkflowInstance) -> None:
            wf.error = text
            wf.status = WorkflowStatus.FAILED
            wf.completed_at = utcnow()

        self._update_workflow(workflow_inst_id, change)

    def list_workflows(
        self, filters: Mapping[str, Any] | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[list[WorkflowInstance], int]:
        wanted = normalize_filters(filters)
        check_page(limit, offset)
        with self._lock:
            rows = [
                wf
                for wf in self._workflows.values()
                if all(_field(wf, key) == value for key, value in wanted.items())
            ]
            # created_at DESC, then id DESC: two sorts, the second stable
            rows.sort(key=lambda wf: wf.id, reverse=True)
            rows.sort(key=lambda wf: wf.created_at, reverse=True)
            page = [copy.deepcopy(wf) for wf in rows[offset : offset + limit]]
            return page, len(rows)

    # -- steps --------------------------------------------------------------------------

    def save_step(self, step: StepInstance) -> None:
        _check_id(step.id, "step id")
        stored = copy.deepcopy(step)
        stored.input = check_json_object(step.input, "step input")
        stored.output = check_json_object(step.output, "step output")
        with self._lock:
            self._workflow(stored.workflow_inst_id)
            is_new = stored.id not in self._steps
            self._put(self._steps, stored.id, stored)
            if is_new:
                ids = list(self._steps_by_workflow[stored.workflow_inst_id])
                ids.append(stored.id)
                self._put(self._steps_by_workflow, stored.workflow_inst_id, ids)

    def _step(self, step_inst_id: str) -> StepInstance:
        try:
            return self._steps[step_inst_id]
        except (KeyError, TypeError):
            raise StepNotFoundError(str(step_inst_id)) from None

    def get_step(self, step_inst_id: str) -> StepInstance:
        with self._lock:
            return copy.deepcopy(self._step(step_inst_id))

    def get_workflow_steps(self, workflow_inst_id: str) -> list[StepInstance]:
        with self._lock:
            self._workflow(workflow_inst_id)
            steps = [copy.deepcopy(self._steps[i]) for i in self._steps_by_workflow[workflow_inst_id]]
        steps.sort(key=lambda s: s.execution_order)
        return steps

    def _update_step(self, step_inst_id: str, change: Callable[[StepInstance], None]) -> None:
        with self._lock:
            step = copy.deepcopy(self._step(step_inst_id))
            change(step)
            self._put(self._steps, step.id, step)

    def update_step_status(self, step_inst_id: str, status: StepStatus) -> None:
        status = StepStatus(status)

        def change(step: StepInstance) -> None:
            step.status = status
            if status == StepStatus.RUNNING and step.started_at is None:
                step.started_at = utcnow()
            if status in _TERMINAL_STEP:
                step.completed_at = utcnow()

        self._update_step(step_inst_id, change)

    def update_step_output(self, step_inst_id: str, output: Mapping[str, Any]) -> None:
        value = check_json_object(dict(output) if output is not None else None, "step output")
        self._update_step(step_inst_id, lambda s: setattr(s, "output", value))

    def update_step_error(self, step_inst_id: str, error: BaseException | str) -> None:
        text = error_text(error)

        def change(step: StepInstance) -> None:
            step.error = text
            step.status = StepStatus.FAILED
            step.completed_at = utcnow()

        self._update_step(step_inst_id, change)

    # -- events -------------------------------------------------------------------------

    def save_event(self, event: WorkflowEvent) -> None:
        """Append an event; saving one with an ID already stored is a no-op."""
        _check_id(event.id, "event id")
        stored = copy.deepcopy(event)
        stored.event_data = check_json_object(event.event_data, "event data")
        with self._lock:
            self._workflow(stored.workflow_inst_id)
            if stored.step_inst_id is not None:
                self._step(stored.step_inst_id)
            if stored.id in self._event_ids:
                return
            self._put(self._event_ids, stored.id, stored.workflow_inst_id)
            events = list(self._events[stored.workflow_inst_id])
            events.append(stored)
            self._put(self._events, stored.workflow_inst_id, events)

    def get_workflow_events(self, workflow_inst_id: str) -> list[WorkflowEvent]:
        with self._lock:
            self._workflow(workflow_inst_id)
            events = [copy.deepcopy(e) for e in self._events[workflow_inst_id]]
        events.sort(key=lambda e: e.timestamp)  # stable: ties keep emission order
        return events


def _check_id(value: object, what: str) -> None:
    if not is_uuid(value):
        raise ValidationError(f"{what} must be a UUID, got {value!r}")


def _field(wf: WorkflowInstance, key: str) -> str:
    value = getattr(wf, key)
    return value.value if isinstance(value, WorkflowStatus) else (value or "")
