"""get_workflow_status and list_workflows."""

from __future__ import annotations

import time

import pytest
from wfkit import register, retry, step

from orchwf import StepStatus, ValidationError, WorkflowNotFoundError, WorkflowStatus


def test_status_returns_the_instance_with_its_steps(orch):
    def flaky(ctx, data):
        if ctx.attempt == 1:
            raise RuntimeError("first")
        return {"f": 1}

    register(
        orch, "w",
        step("a", lambda c, d: {"x": 1}),
        step("b", flaky, ["a"], policy=retry(2)),
        step("c", lambda c, d: 1 / 0, ["b"], required=False),
    )
    result = orch.start_workflow("w", {"in": 1}, {"m": "v"})
    inst = orch.get_workflow_status(result.workflow_inst.id)
    assert inst.workflow_id == "w"
    assert inst.status == WorkflowStatus.COMPLETED
    assert inst.input == {"in": 1} and inst.metadata == {"m": "v"}
    assert inst.output == {"x": 1, "f": 1}
    assert inst.context == {"a": {"x": 1}, "x": 1, "b": {"f": 1}, "f": 1}
    assert inst.started_at <= inst.completed_at
    assert inst.started_at.tzinfo is not None
    assert [s.step_id for s in inst.steps] == ["a", "b", "c"]
    assert [s.execution_order for s in inst.steps] == [0, 1, 2]
    a, b, c = inst.steps
    assert (a.status, b.status, c.status) == (StepStatus.COMPLETED, StepStatus.COMPLETED, StepStatus.SKIPPED)
    assert b.retry_count == 1 and b.output == {"f": 1}
    assert b.input == {"in": 1, "x": 1, "a": {"x": 1}}
    for s in inst.steps:
        assert s.workflow_inst_id == inst.id
        assert s.started_at is not None and s.completed_at is not None
        assert s.started_at <= s.completed_at
        assert s.duration_ms >= 0
    assert c.error == "division by zero"
    # the result's instance is the stored one
    assert result.workflow_inst.output == inst.output
    assert [s.status for s in result.workflow_inst.steps] == [s.status for s in inst.steps]


def test_duration_is_persisted(orch):
    register(orch, "w", step("a", lambda c, d: time.sleep(0.02)))
    inst = orch.get_workflow_status(orch.start_workflow("w", {}).workflow_inst.id)
    assert inst.steps[0].duration_ms >= 15


@pytest.mark.parametrize("bad", ["00000000-0000-0000-0000-000000000000", "not-a-uuid", ""])
def test_status_of_an_unknown_instance(orch, bad):
    with pytest.raises(WorkflowNotFoundError) as info:
        orch.get_workflow_status(bad)
    assert str(info.value) == f"workflow not found: {bad}"


@pytest.fixture
def populated(orch):
    register(orch, "ok", step("a", lambda c, d: None))
    register(orch, "bad", step("a", lambda c, d: 1 / 0))
    ids = []
    for i, (wid, meta) in enumerate([
        ("ok", {"trace_id": "t1", "correlation_id": "c1", "business_id": "order-1"}),
        ("bad", {"trace_id": "t1", "correlation_id": "c2", "business_id": "order-2"}),
        ("ok", {"trace_id": "t2", "correlation_id": "c2", "business_id": "order-1"}),
        ("ok", {"trace_id": "t3"}),
        ("bad", {"trace_id": "t3"}),
    ]):
        ids.append(orch.start_workflow(wid, {"i": i}, meta).workflow_inst.id)
    return orch, ids


def test_list_orders_by_created_at_desc(populated):
    orch, ids = populated
    items, total = orch.list_workflows()
    assert total == 5
    assert [w.id for w in items] == list(reversed(ids))
    assert all(w.created_at >= v.created_at for w, v in zip(items, items[1:], strict=False))


@pytest.mark.parametrize(
    "filters, expected",
    [
        ({"workflow_id": "ok"}, [0, 2, 3]),
        ({"status": WorkflowStatus.FAILED}, [1, 4]),
        ({"status": "failed"}, [1, 4]),
        ({"status": "completed"}, [0, 2, 3]),
        ({"status": "running"}, []),
        ({"trace_id": "t1"}, [0, 1]),
        ({"correlation_id": "c2"}, [1, 2]),
        ({"business_id": "order-1"}, [0, 2]),
        ({"workflow_id": "ok", "trace_id": "t3"}, [3]),
        ({"workflow_id": "nope"}, []),
        ({}, [0, 1, 2, 3, 4]),
        (None, [0, 1, 2, 3, 4]),
    ],
)
def test_list_filters(populated, filters, expected):
    orch, ids = populated
    items, total = orch.list_workflows(filters)
    assert [w.id for w in items] == [ids[i] for i in reversed(expected)]
    assert total == len(expected)


def test_list_pagination(populated):
    orch, ids = populated
    newest_first = list(reversed(ids))
    assert [w.id for w in orch.list_workflows(limit=2)[0]] == newest_first[:2]
    page, total = orch.list_workflows(limit=2, offset=2)
    assert [w.id for w in page] == newest_first[2:4] and total == 5
    page, total = orch.list_workflows({"workflow_id": "ok"}, limit=2, offset=1)
    assert [w.id for w in page] == [ids[2], ids[0]] and total == 3
    assert orch.list_workflows(limit=2, offset=10) == ([], 5)
    assert orch.list_workflows(limit=0) == ([], 5)


@pytest.mark.parametrize(
    "filters, message",
    [
        ({"name": "x"}, "unknown filter 'name'"),
        ({"status": "bogus"}, "unknown status 'bogus'"),
        ({"workflow_id": 3}, "must be a string"),
        ({"trace_id": "a\x00b"}, "NUL"),
        ("status=completed", "filters must be a mapping"),
    ],
)
def test_list_rejects_bad_filters(populated, filters, message):
    orch, _ = populated
    with pytest.raises(ValidationError, match=message):
        orch.list_workflows(filters)


@pytest.mark.parametrize("limit, offset", [(-1, 0), (10, -1), ("10", 0), (10, 1.5), (True, 0)])
def test_list_rejects_bad_pages(populated, limit, offset):
    orch, _ = populated
    with pytest.raises(ValidationError):
        orch.list_workflows(None, limit, offset)
