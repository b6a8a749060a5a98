"""Compensation: reverse completion order, events, failures that stop none of the others."""

from __future__ import annotations

import threading

from wfkit import GUARD, Recorder, register, step, wait_for

from orchwf import StepContext


def compensations(orch, inst_id):
    return [
        (e.event_type, e.event_data.get("step_id"))
        for e in orch.get_workflow_events(inst_id)
        if e.event_type.startswith("step.compensat")
    ]


def test_compensators_run_in_reverse_completion_order_before_start_returns(orch):
    undone = []
    comp = lambda name: (lambda ctx, data: undone.append(name))  # noqa: E731
    register(
        orch, "w",
        # definition order a, b, c; priorities make the completion order c, a, b
        step("a", lambda c, d: {"a": 1}, priority=5, compensator=comp("a")),
        step("b", lambda c, d: {"b": 1}, priority=1, compensator=comp("b")),
        step("c", lambda c, d: {"c": 1}, priority=10, compensator=comp("c")),
        step("boom", lambda c, d: 1 / 0, ["a", "b", "c"]),
    )
    result = orch.start_workflow("w", {})
    assert not result.success
    assert undone == ["b", "a", "c"]
    assert compensations(orch, result.workflow_inst.id) == [
        ("step.compensated", "b"), ("step.compensated", "a"), ("step.compensated", "c"),
    ]
    types = [e.event_type for e in orch.get_workflow_events(result.workflow_inst.id)]
    assert types.index("step.compensated") < types.index("workflow.failed")


def test_a_failing_compensator_does_not_stop_the_others(orch):
    undone = []

    def bad_comp(ctx, data):
        undone.append("b")
        raise RuntimeError("cannot undo b")

    register(
        orch, "w",
        step("a", lambda c, d: {}, compensator=lambda c, d: undone.append("a")),
        step("b", lambda c, d: {}, ["a"], compensator=bad_comp),
        step("c", lambda c, d: {}, ["b"], compensator=lambda c, d: undone.append("c")),
        step("boom", lambda c, d: 1 / 0, ["c"]),
    )
    result = orch.start_workflow("w", {})
    assert undone == ["c", "b", "a"]
    events = [e for e in orch.get_workflow_events(result.workflow_inst.id) if e.event_type.startswith("step.compensat")]
    assert [(e.event_type, e.event_data["step_id"]) for e in events] == [
        ("step.compensated", "c"), ("step.compensation_failed", "b"), ("step.compensated", "a"),
    ]
    assert events[1].event_data["error"] == "cannot undo b"
    assert all(e.step_inst_id for e in events)
    assert orch.get_workflow_status(result.workflow_inst.id).status == "failed"


def test_compensator_gets_the_step_input_and_output(orch):
    got = {}

    def comp(ctx: StepContext, data):
        got["ctx"] = ctx
        got["data"] = data

    register(
        orch, "w",
        step("charge", lambda c, d: {"charge_id": "ch_1"}, compensator=comp),
        step("ship", lambda c, d: 1 / 0, ["charge"]),
    )
    result = orch.start_workflow("w", {"amount": 10}, {"trace_id": "t-1"})
    assert got["data"] == {"amount": 10}
    assert got["ctx"].step_output == {"charge_id": "ch_1"}
    assert got["ctx"].step_id == "charge"
    assert got["ctx"].workflow_instance_id == result.workflow_inst.id
    assert got["ctx"].trace_id == "t-1"


def test_no_compensation_on_success(orch):
    rec = Recorder()
    register(orch, "w", step("a", lambda c, d: {}, compensator=rec.step("comp-a")))
    result = orch.start_workflow("w", {})
    assert result.success and rec.calls == []
    assert compensations(orch, result.workflow_inst.id) == []


def test_failed_skipped_and_unrun_steps_are_not_compensated(orch):
    rec = Recorder()
    register(
        orch, "w",
        step("ok", lambda c, d: {}, compensator=rec.step("comp-ok")),
        step("opt", lambda c, d: 1 / 0, required=False, compensator=rec.step("comp-opt")),
        step("bad", lambda c, d: 1 / 0, ["ok", "opt"], compensator=rec.step("comp-bad")),
        step("never", lambda c, d: {}, ["bad"], compensator=rec.step("comp-never")),
    )
    orch.start_workflow("w", {})
    assert rec.calls == ["comp-ok"]


def test_async_def_compensator(orch):
    undone = []

    async def comp(ctx, data):
        undone.append(ctx.step_id)

    register(orch, "w", step("a", lambda c, d: {}, compensator=comp), step("b", lambda c, d: 1 / 0, ["a"]))
    orch.start_workflow("w", {})
    assert undone == ["a"]


def test_compensation_runs_on_cancel(orch):
    undone = []
    started = threading.Event()

    def block(ctx, data):
        started.set()
        ctx.cancelled.wait(GUARD)
        return {}

    register(
        orch, "w",
        step("a", lambda c, d: {}, compensator=lambda c, d: undone.append("a")),
        step("b", block, ["a"], compensator=lambda c, d: undone.append("b")),
    )
    inst_id = orch.start_workflow_async("w", {})
    assert started.wait(GUARD)
    orch.cancel_workflow(inst_id)
    assert orch.get_workflow_status(inst_id).status == "cancelled"
    assert undone == ["a"]  # b never completed
    assert compensations(orch, inst_id) == [("step.compensated", "a")]


def test_compensation_in_reverse_completion_order_of_async_steps(orch):
    order = []

    def run(after=None):
        def f(ctx, data):
            if after:  # finish only once ``after`` is recorded as completed
                wait_for(lambda: orch.get_workflow_status(ctx.workflow_instance_id).step(after).status == "completed")
            return {}
        return f

    register(
        orch, "w",
        # they complete z, x, y although they are defined x, y, z
        step("x", run(after="z"), is_async=True, compensator=lambda c, d: order.append("x")),
        step("y", run(after="x"), is_async=True, compensator=lambda c, d: order.append("y")),
        step("z", run(), is_async=True, compensator=lambda c, d: order.append("z")),
        step("fail", lambda c, d: 1 / 0, ["x", "y", "z"]),
    )
    result = orch.start_workflow("w", {})
    assert not result.success
    assert order == ["y", "x", "z"]


def test_a_compensator_raising_cancelled_error_does_not_stop_the_others(orch):
    import asyncio

    undone = []

    async def cancelled_comp(ctx, data):
        undone.append(ctx.step_id)
        raise asyncio.CancelledError()

    register(
        orch, "w",
        step("a", lambda c, d: {}, compensator=lambda c, d: undone.append("a")),
        step("b", lambda c, d: {}, ["a"], compensator=cancelled_comp),
        step("boom", lambda c, d: 1 / 0, ["b"]),
    )
    result = orch.start_workflow("w", {})
    assert undone == ["b", "a"]
    assert compensations(orch, result.workflow_inst.id) == [("step.compensation_failed", "b"), ("step.compensated", "a")]
    assert orch.get_workflow_status(result.workflow_inst.id).status == "failed"
