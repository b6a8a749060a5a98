"""Event names, payloads, and order (oldest first, ties in emission order)."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

from wfkit import event_types, register, retry, step

from orchwf import InMemoryStateManager, WorkflowEvent, WorkflowInstance


def test_success_sequence_and_payloads(orch):
    register(orch, "w", step("a", lambda c, d: {"a": 1}), step("b", lambda c, d: None, ["a"]))
    result = orch.start_workflow("w", {})
    inst = orch.get_workflow_status(result.workflow_inst.id)
    events = orch.get_workflow_events(inst.id)
    assert [e.event_type for e in events] == [
        "workflow.started",
        "step.started", "step.completed",
        "step.started", "step.completed",
        "workflow.completed",
    ]
    step_ids = {s.id: s.step_id for s in inst.steps}
    started, a_started, a_done, b_started, b_done, completed = events
    assert started.event_data == {"workflow_id": "w"} and started.step_inst_id is None
    assert a_started.event_data == {"step_id": "a"} and step_ids[a_started.step_inst_id] == "a"
    assert set(a_done.event_data) == {"duration_ms"} and isinstance(a_done.event_data["duration_ms"], int)
    assert step_ids[a_done.step_inst_id] == "a"
    assert b_started.event_data == {"step_id": "b"} and step_ids[b_done.step_inst_id] == "b"
    assert set(completed.event_data) == {"duration_ms"} and completed.step_inst_id is None
    assert all(e.workflow_inst_id == inst.id for e in events)
    assert len({e.id for e in events}) == len(events)
    assert all(e.timestamp.tzinfo is not None for e in events)
    assert [e.timestamp for e in events] == sorted(e.timestamp for e in events)


def test_failure_and_retry_sequence(orch):
    def bad(ctx, data):
        raise RuntimeError("nope")

    register(orch, "w", step("a", bad, policy=retry(3)))
    result = orch.start_workflow("w", {})
    events = orch.get_workflow_events(result.workflow_inst.id)
    assert [(e.event_type, e.event_data) for e in events] == [
        ("workflow.started", {"workflow_id": "w"}),
        ("step.started", {"step_id": "a"}),
        ("step.attempt_failed", {"error": "nope", "attempt": 1, "retry_in_seconds": 0.0}),
        ("step.retry", {"attempt": 2}),
        ("step.attempt_failed", {"error": "nope", "attempt": 2, "retry_in_seconds": 0.0}),
        ("step.retry", {"attempt": 3}),
        ("step.failed", {"error": "nope", "retries": 2}),
        ("workflow.failed", {"error": "step a failed after 3 attempts: nope"}),
    ]


def test_skip_event_for_optional_failures(orch):
    register(orch, "w", step("a", lambda c, d: 1 / 0, required=False))
    result = orch.start_workflow("w", {})
    events = orch.get_workflow_events(result.workflow_inst.id)
    assert [e.event_type for e in events] == [
        "workflow.started", "step.started", "step.failed", "step.skipped", "workflow.completed",
    ]
    assert events[3].event_data == {"error": "division by zero"}
    assert events[2].step_inst_id == events[3].step_inst_id


def test_resume_event(orch):
    register(orch, "w", step("a", lambda c, d: 1 / 0))
    inst_id = orch.start_workflow("w", {}).workflow_inst.id
    orch.resume_workflow(inst_id)
    types = event_types(orch, inst_id)
    assert types.count("workflow.resumed") == 1
    assert types[types.index("workflow.resumed") + 1] == "step.started"
    resumed = [e for e in orch.get_workflow_events(inst_id) if e.event_type == "workflow.resumed"][0]
    assert resumed.event_data == {"retry_count": 1}


def test_ties_are_returned_in_emission_order():
    sm = InMemoryStateManager()
    inst = WorkflowInstance(id=str(uuid.uuid4()), workflow_id="w")
    sm.save_workflow(inst)
    same = datetime(2024, 1, 1, tzinfo=timezone.utc)
    earlier = datetime(2023, 1, 1, tzinfo=timezone.utc)
    names = [f"e{i}" for i in range(20)]
    for n in names:
        sm.save_event(WorkflowEvent(id=str(uuid.uuid4()), workflow_inst_id=inst.id, event_type=n, timestamp=same))
    sm.save_event(WorkflowEvent(id=str(uuid.uuid4()), workflow_inst_id=inst.id, event_type="old", timestamp=earlier))
    assert [e.event_type for e in sm.get_workflow_events(inst.id)] == ["old"] + names


def test_events_of_an_unknown_instance(orch):
    import pytest

    from orchwf import WorkflowNotFoundError

    with pytest.raises(WorkflowNotFoundError):
        orch.get_workflow_events(str(uuid.uuid4()))
