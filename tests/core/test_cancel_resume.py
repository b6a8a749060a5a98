"""cancel_workflow and resume_workflow."""

from __future__ import annotations

import threading

import pytest
from wfkit import GUARD, Recorder, event_types, register, retry, step

from orchwf import (
    InMemoryStateManager,
    InvalidStateError,
    Orchestrator,
    StepStatus,
    WorkflowCancelledError,
    WorkflowNotFoundError,
    WorkflowStatus,
)


class Blocker:
    """A step that signals it started, then waits for ctx.cancelled (or ignores it)."""

    def __init__(self, cooperative: bool = True) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.saw_cancel = threading.Event()
        self.cooperative = cooperative
        self.ctx = None

    def __call__(self, ctx, data):
        self.ctx = ctx
        self.started.set()
        if self.cooperative:
            if ctx.cancelled.wait(GUARD):
                self.saw_cancel.set()
        else:
            self.release.wait(GUARD)
        return {"blocker": "late"}


# -- cancel -------------------------------------------------------------------------------


@pytest.mark.parametrize("cooperative", [True, False])
def test_cancel_from_another_thread_while_a_step_runs(orch, cooperative):
    blocker = Blocker(cooperative)
    rec = Recorder()
    register(orch, "w", step("a", rec.step("a", {"a": 1})), step("b", blocker, ["a"]), step("c", rec.step("c"), ["b"]))
    results = []
    runner = threading.Thread(target=lambda: results.append(orch.start_workflow("w", {})))
    runner.start()
    try:
        assert blocker.started.wait(GUARD)
        orch.cancel_workflow(blocker.ctx.workflow_instance_id)  # returns once the run has ended
        runner.join(GUARD)
        assert not runner.is_alive()
    finally:
        blocker.release.set()
    (result,) = results
    assert result.success is False
    assert isinstance(result.error, WorkflowCancelledError)
    assert result.workflow_inst.status == WorkflowStatus.CANCELLED
    assert blocker.ctx.cancelled.is_set()
    assert rec.calls == ["a"]
    stored = orch.get_workflow_status(result.workflow_inst.id)
    assert stored.status == "cancelled" and stored.completed_at is not None
    assert stored.step("a").status == StepStatus.COMPLETED
    assert stored.step("b").status == StepStatus.CANCELLED
    assert stored.step("c").status == StepStatus.CANCELLED
    assert stored.step("b").output == {}  # the late result is never recorded
    types = event_types(orch, stored.id)
    assert types[-1] == "workflow.cancelled"
    assert "workflow.failed" not in types and "workflow.completed" not in types


def test_cancel_a_background_workflow_and_wait(orch):
    blocker = Blocker()
    register(orch, "w", step("b", blocker))
    inst_id = orch.start_workflow_async("w", {})
    assert blocker.started.wait(GUARD)
    orch.cancel_workflow(inst_id)
    inst = orch.wait(inst_id, timeout=GUARD)
    assert inst.status == WorkflowStatus.CANCELLED
    assert blocker.saw_cancel.wait(GUARD)


def test_cancel_during_a_backoff_wakes_up_at_once(orch):
    calls = []

    def fails(ctx, data):
        calls.append(ctx.attempt)
        raise RuntimeError("down")

    register(orch, "w", step("s", fails, policy=retry(5, initial=60.0)))
    inst_id = orch.start_workflow_async("w", {})
    # wait until the first attempt has failed and the step sleeps its 60 s backoff
    from wfkit import wait_for

    wait_for(lambda: "step.started" in event_types(orch, inst_id) and calls == [1])
    orch.cancel_workflow(inst_id)
    assert orch.wait(inst_id, timeout=GUARD).status == WorkflowStatus.CANCELLED  # not after 60 s
    assert calls == [1]


def test_cancel_twice_is_a_no_op_and_terminal_instances_refuse(orch):
    blocker = Blocker()
    register(orch, "w", step("b", blocker))
    register(orch, "ok", step("a", lambda c, d: {}))
    inst_id = orch.start_workflow_async("w", {})
    assert blocker.started.wait(GUARD)
    orch.cancel_workflow(inst_id)
    orch.cancel_workflow(inst_id)
    assert orch.get_workflow_status(inst_id).status == "cancelled"
    done = orch.start_workflow("ok", {}).workflow_inst.id
    with pytest.raises(InvalidStateError):
        orch.cancel_workflow(done)
    with pytest.raises(WorkflowNotFoundError):
        orch.cancel_workflow("00000000-0000-0000-0000-000000000000")


def test_cancel_a_workflow_still_queued_for_the_background_pool():
    """With the only runner busy, a second workflow waits in the queue; cancel it there."""
    orch = Orchestrator(InMemoryStateManager(), async_workers=1)
    blocker = Blocker()
    rec = Recorder()
    try:
        register(orch, "busy", step("b", blocker))
        register(orch, "queued", step("q", rec.step("q")))
        busy = orch.start_workflow_async("busy", {})
        assert blocker.started.wait(GUARD)
        queued = orch.start_workflow_async("queued", {})
        orch.cancel_workflow(queued)  # must not wait for the busy runner
        assert orch.get_workflow_status(queued).status == "cancelled"
        orch.cancel_workflow(busy)
        assert orch.wait(queued, timeout=GUARD).status == "cancelled"
        orch.shutdown(wait=True)
        assert rec.calls == []  # the queued workflow never ran
        stored = orch.get_workflow_status(queued)
        assert stored.status == "cancelled"
        assert stored.step("q").status == StepStatus.CANCELLED
        assert event_types(orch, queued) == ["workflow.started", "workflow.cancelled"]
    finally:
        blocker.release.set()
        orch.shutdown()


def test_cancel_from_inside_a_step(orch):
    def cancel_self(ctx, data):
        orch.cancel_workflow(ctx.workflow_instance_id)
        return {"after_cancel": True}

    rec = Recorder()
    register(orch, "w", step("a", cancel_self), step("b", rec.step("b"), ["a"]))
    result = orch.start_workflow("w", {})
    assert result.workflow_inst.status == WorkflowStatus.CANCELLED
    assert rec.calls == []


def test_cancel_an_instance_that_is_not_running_in_this_process(sm):
    """E.g. left pending by a process that died: cancel writes the status through the store."""
    first = Orchestrator(sm)
    blocker = Blocker(cooperative=False)
    register(first, "w", step("a", blocker))
    inst_id = first.start_workflow_async("w", {})
    assert blocker.started.wait(GUARD)
    other = Orchestrator(sm)  # knows nothing of the run
    try:
        other.cancel_workflow(inst_id)
        stored = other.get_workflow_status(inst_id)
        assert stored.status == "cancelled"
        assert stored.step("a").status == StepStatus.CANCELLED
        assert "workflow.cancelled" in event_types(other, inst_id)
    finally:
        first.cancel_workflow(inst_id)  # while its step still blocks: the live run ends too
        blocker.release.set()
        first.shutdown()
        other.shutdown()


# -- resume -------------------------------------------------------------------------------


def test_resume_a_failed_instance_reruns_only_what_did_not_complete(orch):
    rec = Recorder()
    broken = {"b": True}

    def b(ctx, data):
        rec.add("b", data)
        if broken["b"]:
            raise RuntimeError("b is down")
        return {"b_out": data["a"]["a_out"] + 1}

    register(
        orch, "w",
        step("a", rec.step("a", {"a_out": 1})),
        step("b", b, ["a"]),
        step("c", rec.step("c", {"c_out": 3}), ["b"]),
    )
    first = orch.start_workflow("w", {"x": 1})
    assert not first.success
    inst_id = first.workflow_inst.id
    a_inst_id = orch.get_workflow_status(inst_id).step("a").id

    broken["b"] = False
    result = orch.resume_workflow(inst_id)
    assert result.success, result.error
    assert rec.count("a") == 1  # completed steps are not re-run
    assert rec.count("b") == 2
    assert rec.count("c") == 1
    assert rec.inputs["b"]["a"] == {"a_out": 1}  # the stored output feeds the dependent
    assert result.output == {"a_out": 1, "b_out": 2, "c_out": 3}
    stored = orch.get_workflow_status(inst_id)
    assert stored.status == "completed" and stored.error is None
    assert stored.retry_count == 1
    assert stored.step("a").id == a_inst_id  # the same step instance
    assert all(s.status == StepStatus.COMPLETED for s in stored.steps)
    assert stored.output == {"a_out": 1, "b_out": 2, "c_out": 3}
    types = event_types(orch, inst_id)
    assert types.count("workflow.resumed") == 1
    assert types[-1] == "workflow.completed"


def test_resume_a_cancelled_instance(orch):
    blocker = Blocker()
    rec = Recorder()
    register(orch, "w", step("a", rec.step("a", {"a": 1})), step("b", blocker, ["a"]))
    inst_id = orch.start_workflow_async("w", {})
    assert blocker.started.wait(GUARD)
    orch.cancel_workflow(inst_id)
    assert orch.get_workflow_status(inst_id).status == "cancelled"

    # on resume, b completes at once (its cancelled flag is a fresh one)
    blocker.cooperative = False
    blocker.release.set()
    result = orch.resume_workflow(inst_id)
    assert result.success
    assert rec.count("a") == 1
    assert result.output == {"a": 1, "blocker": "late"}


def test_resume_in_another_orchestrator_sharing_the_store(sm):
    rec = Recorder()
    flag = {"fail": True}

    def b(ctx, data):
        rec.add("b")
        if flag["fail"]:
            raise RuntimeError("x")
        return {"b": 1}

    def define(orch):
        register(orch, "w", step("a", rec.step("a", {"a": 1})), step("b", b, ["a"]))

    one = Orchestrator(sm)
    define(one)
    inst_id = one.start_workflow("w", {}).workflow_inst.id
    one.shutdown()

    two = Orchestrator(sm)
    define(two)
    flag["fail"] = False
    try:
        assert two.resume_workflow(inst_id).output == {"a": 1, "b": 1}
        assert rec.calls == ["a", "b", "b"]
    finally:
        two.shutdown()


def test_resume_a_completed_instance_runs_nothing(orch):
    rec = Recorder()
    register(orch, "w", step("a", rec.step("a", {"a": 1})))
    inst_id = orch.start_workflow("w", {}).workflow_inst.id
    n_events = len(orch.get_workflow_events(inst_id))
    result = orch.resume_workflow(inst_id)
    assert result.success and result.output == {"a": 1}
    assert rec.calls == ["a"]
    assert len(orch.get_workflow_events(inst_id)) == n_events


def test_resume_errors(orch):
    with pytest.raises(WorkflowNotFoundError, match="workflow not found: 00000000-0000-0000-0000-000000000000"):
        orch.resume_workflow("00000000-0000-0000-0000-000000000000")
    blocker = Blocker()
    register(orch, "w", step("b", blocker))
    inst_id = orch.start_workflow_async("w", {})
    assert blocker.started.wait(GUARD)
    with pytest.raises(InvalidStateError, match="running"):
        orch.resume_workflow(inst_id)
    orch.cancel_workflow(inst_id)


def test_resume_needs_the_definition(sm):
    one = Orchestrator(sm)
    register(one, "w", step("a", lambda c, d: 1 / 0))
    inst_id = one.start_workflow("w", {}).workflow_inst.id
    two = Orchestrator(sm)
    try:
        with pytest.raises(WorkflowNotFoundError, match="workflow not found: w"):
            two.resume_workflow(inst_id)
    finally:
        one.shutdown()
        two.shutdown()


def test_resume_reruns_what_was_compensated(orch):
    """A step compensated when the first run failed (its effect undone) runs again on
    resume, and is compensated again if the resumed run fails too: as in the daemon."""
    undone = []
    runs = {"a": 0, "b": 0}

    def a(ctx, data):
        runs["a"] += 1
        return {"a": runs["a"]}

    def flaky(ctx, data):
        runs["b"] += 1
        raise RuntimeError("still down")

    register(
        orch, "w",
        step("a", a, compensator=lambda c, d: undone.append("a")),
        step("b", flaky, ["a"]),
    )
    inst_id = orch.start_workflow("w", {}).workflow_inst.id
    assert undone == ["a"]
    again = orch.resume_workflow(inst_id)
    assert not again.success
    assert runs == {"a": 2, "b": 2}
    assert undone == ["a", "a"]
