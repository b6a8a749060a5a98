"""Background runs (start_workflow_async, wait, shutdown) and ``async def`` executors."""

from __future__ import annotations

import asyncio
import threading

import pytest
from wfkit import GUARD, Recorder, register, step

from orchwf import (
    InMemoryStateManager,
    InvalidStateError,
    Orchestrator,
    ValidationError,
    WorkflowNotFoundError,
    WorkflowStatus,
)


def test_start_async_returns_at_once_and_wait_returns_the_instance(orch):
    release = threading.Event()

    def gated(ctx, data):
        assert release.wait(GUARD)
        return {"v": data["n"] * 2}

    register(orch, "w", step("a", gated))
    inst_id = orch.start_workflow_async("w", {"n": 21})
    status = orch.get_workflow_status(inst_id).status
    assert status in (WorkflowStatus.PENDING, WorkflowStatus.RUNNING)  # it cannot have finished
    with pytest.raises(TimeoutError):
        orch.wait(inst_id, timeout=0.05)
    release.set()
    inst = orch.wait(inst_id, timeout=GUARD)
    assert inst.status == WorkflowStatus.COMPLETED
    assert inst.output == {"v": 42}
    assert [s.status for s in inst.steps] == ["completed"]


def test_wait_on_a_finished_instance_returns_at_once(orch):
    register(orch, "w", step("a", lambda c, d: {"v": 1}))
    inst_id = orch.start_workflow("w", {}).workflow_inst.id
    assert orch.wait(inst_id, timeout=0).output == {"v": 1}


def test_wait_on_an_unknown_instance(orch):
    with pytest.raises(WorkflowNotFoundError):
        orch.wait("00000000-0000-0000-0000-000000000000", timeout=0.05)


def test_background_failure_is_recorded_not_raised(orch):
    register(orch, "w", step("a", lambda c, d: 1 / 0))
    inst_id = orch.start_workflow_async("w", {})
    inst = orch.wait(inst_id, timeout=GUARD)
    assert inst.status == WorkflowStatus.FAILED
    assert inst.error == "step a failed after 1 attempts: division by zero"


def test_start_async_checks_the_call_synchronously(orch, sm):
    register(orch, "w", step("a", lambda c, d: None))
    with pytest.raises(WorkflowNotFoundError, match="workflow not found: nope"):
        orch.start_workflow_async("nope", {})
    with pytest.raises(ValidationError, match="input"):
        orch.start_workflow_async("w", {"bad": float("nan")})
    assert sm.list_workflows() == ([], 0)


def test_shutdown_waits_for_background_workflows():
    orch = Orchestrator(InMemoryStateManager(), async_workers=2)
    finished = []

    def slowish(ctx, data):
        threading.Event().wait(0.05)
        finished.append(data["i"])
        return {}

    register(orch, "w", step("a", slowish))
    ids = [orch.start_workflow_async("w", {"i": i}) for i in range(4)]  # two wait in the queue
    orch.shutdown(wait=True)
    assert sorted(finished) == [0, 1, 2, 3]
    assert all(orch.get_workflow_status(i).status == WorkflowStatus.COMPLETED for i in ids)
    with pytest.raises(InvalidStateError, match="shut down"):
        orch.start_workflow("w", {})
    with pytest.raises(InvalidStateError):
        orch.start_workflow_async("w", {})


def test_context_manager_shuts_down():
    done = []
    with Orchestrator(InMemoryStateManager()) as orch:
        register(orch, "w", step("a", lambda c, d: done.append(1)))
        orch.start_workflow_async("w", {})
    assert done == [1]


def test_background_workflows_run_in_parallel_up_to_async_workers():
    orch = Orchestrator(InMemoryStateManager(), async_workers=3)
    barrier = threading.Barrier(3, timeout=GUARD)
    register(orch, "w", step("a", lambda c, d: {"party": barrier.wait()}))
    try:
        ids = [orch.start_workflow_async("w", {}) for _ in range(3)]
        insts = [orch.wait(i, timeout=GUARD) for i in ids]
        assert all(i.status == WorkflowStatus.COMPLETED for i in insts), [i.error for i in insts]
    finally:
        orch.shutdown()


# -- async def executors ---------------------------------------------------------------------


def test_async_def_executors(orch):
    async def fetch(ctx, data):
        await asyncio.sleep(0)
        return {"fetched": data["id"], "attempt": ctx.attempt}

    async def combine(ctx, data):
        return {"combined": data["fetch"]["fetched"] + 1}

    register(orch, "w", step("fetch", fetch), step("combine", combine, ["fetch"]))
    result = orch.start_workflow("w", {"id": 41})
    assert result.success, result.error
    assert result.output == {"fetched": 41, "attempt": 1, "combined": 42}


def test_async_def_executors_as_async_steps_run_concurrently(orch):
    both = threading.Barrier(2, timeout=GUARD)

    async def meet(ctx, data):
        await asyncio.to_thread(both.wait)
        return {ctx.step_id: True}

    register(orch, "w", step("x", meet, is_async=True), step("y", meet, is_async=True))
    result = orch.start_workflow("w", {})
    assert result.success, result.error
    assert result.output == {"x": True, "y": True}


def test_async_def_executor_raising(orch):
    async def bad(ctx, data):
        raise LookupError("not there")

    register(orch, "w", step("a", bad))
    result = orch.start_workflow("w", {})
    assert str(result.error) == "step a failed after 1 attempts: not there"
    assert isinstance(result.error.__cause__, LookupError)


def test_async_def_executor_returning_none(orch):
    rec = Recorder()

    async def nothing(ctx, data):
        rec.add("n")

    register(orch, "w", step("a", nothing))
    assert orch.start_workflow("w", {}).output == {}
    assert rec.calls == ["n"]
