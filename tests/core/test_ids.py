"""trace, correlation and business IDs: metadata, then the contextvar setters, then defaults."""

from __future__ import annotations

import contextvars
import uuid

from wfkit import register, step

import orchwf


def run_isolated(fn):
    """Run ``fn`` in a fresh contextvars context, so the setters leak into no other test."""
    return contextvars.Context().run(fn)


def test_ids_from_metadata(orch):
    seen = {}
    register(orch, "w", step("a", lambda c, d: seen.update(trace=c.trace_id, meta=dict(c.metadata))))

    def go():
        orchwf.set_trace_id("ctx-trace")  # metadata wins over the contextvar
        return orch.start_workflow("w", {}, {"trace_id": "t1", "correlation_id": "c1", "business_id": "b1", "x": 1})

    inst = run_isolated(go).workflow_inst
    assert (inst.trace_id, inst.correlation_id, inst.business_id) == ("t1", "c1", "b1")
    assert seen["trace"] == "t1"
    assert seen["meta"]["x"] == 1
    stored = orch.get_workflow_status(inst.id)
    assert (stored.trace_id, stored.correlation_id, stored.business_id) == ("t1", "c1", "b1")


def test_ids_from_the_contextvar_setters(orch):
    register(orch, "w", step("a", lambda c, d: None))

    def go():
        orchwf.set_trace_id("ctx-t")
        orchwf.set_correlation_id("ctx-c")
        orchwf.set_business_id("ctx-b")
        sync = orch.start_workflow("w", {}).workflow_inst
        background = orch.wait(orch.start_workflow_async("w", {}), timeout=5)
        return sync, background

    for inst in run_isolated(go):
        assert (inst.trace_id, inst.correlation_id, inst.business_id) == ("ctx-t", "ctx-c", "ctx-b")


def test_defaults_new_uuids_and_empty_business_id(orch):
    register(orch, "w", step("a", lambda c, d: None))
    one = run_isolated(lambda: orch.start_workflow("w", {})).workflow_inst
    two = run_isolated(lambda: orch.start_workflow("w", {})).workflow_inst
    for inst in (one, two):
        uuid.UUID(inst.trace_id)
        uuid.UUID(inst.correlation_id)
        assert inst.business_id == ""
        assert inst.trace_id != inst.correlation_id
    assert one.trace_id != two.trace_id


def test_non_string_metadata_ids_fall_back(orch):
    register(orch, "w", step("a", lambda c, d: None))

    def go():
        orchwf.set_business_id("ctx-b")
        return orch.start_workflow("w", {}, {"trace_id": 123, "business_id": ""}).workflow_inst

    inst = run_isolated(go)
    uuid.UUID(inst.trace_id)
    assert inst.business_id == "ctx-b"
    assert inst.metadata == {"trace_id": 123, "business_id": ""}


def test_setting_none_clears(orch):
    register(orch, "w", step("a", lambda c, d: None))

    def go():
        orchwf.set_business_id("x")
        orchwf.set_business_id(None)
        return orch.start_workflow("w", {}).workflow_inst

    assert run_isolated(go).business_id == ""
