"""Per-attempt timeouts: abandoning a stuck attempt, discarding its late result."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta

from wfkit import GUARD, register, retry, step, wait_for

from orchwf import StepStatus, StepTimeoutError


class Stuck:
    """An executor that ignores its deadline until released, then returns a late result."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.returned = threading.Event()
        self.contexts = []

    def __call__(self, ctx, data):
        self.contexts.append(ctx)
        self.release.wait(GUARD)
        self.returned.set()
        return {"late": True}


def test_a_step_ignoring_its_deadline_is_abandoned_and_its_late_result_discarded(orch):
    stuck = Stuck()
    after = []
    register(orch, "w", step("s", stuck, timeout=0.05), step("t", lambda c, d: after.append(1), ["s"]))
    try:
        result = orch.start_workflow("w", {})
        assert not result.success
        assert isinstance(result.error.__cause__, StepTimeoutError)
        assert str(result.error) == "step s failed after 1 attempts: step s timed out after 0.05s"
        assert stuck.contexts[0].cancelled.is_set()
        assert not stuck.returned.is_set()  # the orchestrator did not wait for it
        assert after == []
    finally:
        stuck.release.set()
    assert stuck.returned.wait(GUARD)
    inst_id = result.workflow_inst.id
    events_before = orch.get_workflow_events(inst_id)
    stored = orch.get_workflow_status(inst_id)
    s = stored.step("s")
    assert s.status == StepStatus.FAILED
    assert s.output == {}
    assert "late" not in stored.output and "late" not in stored.context
    # give a late write every chance to land, then check nothing changed
    threading.Event().wait(0.05)
    assert orch.get_workflow_status(inst_id).step("s").output == {}
    assert len(orch.get_workflow_events(inst_id)) == len(events_before)


def test_cancelled_flag_lets_cooperative_code_stop_at_the_deadline(orch):
    observed = []

    def cooperative(ctx, data):
        observed.append(ctx.cancelled.wait(GUARD))
        return {"should_not": "count"}

    register(orch, "w", step("s", cooperative, timeout=0.05, required=False))
    result = orch.start_workflow("w", {})
    assert result.success  # optional step: skipped
    assert result.output == {}
    assert result.workflow_inst.step("s").status == StepStatus.SKIPPED
    assert "timed out" in result.workflow_inst.step("s").error
    wait_for(lambda: observed == [True])  # the executor saw ctx.cancelled set


def test_timeouts_apply_per_attempt_and_are_retried(orch):
    """The seed shares one deadline across attempts; here each attempt has its own."""
    release = threading.Event()
    contexts = []

    def slow_then_fast(ctx, data):
        contexts.append(ctx)
        if ctx.attempt < 3:
            release.wait(GUARD)
            return {"late": ctx.attempt}
        return {"on_time": ctx.attempt}

    register(orch, "w", step("s", slow_then_fast, timeout=0.2, policy=retry(3)))
    try:
        result = orch.start_workflow("w", {})
    finally:
        release.set()
    assert result.success, result.error
    assert result.output == {"on_time": 3}
    assert [c.attempt for c in contexts] == [1, 2, 3]
    assert contexts[0].deadline < contexts[1].deadline < contexts[2].deadline
    assert contexts[0].cancelled.is_set() and contexts[1].cancelled.is_set()
    assert not contexts[2].cancelled.is_set()
    s = orch.get_workflow_status(result.workflow_inst.id).step("s")
    assert s.output == {"on_time": 3} and s.retry_count == 2


def test_timeout_not_retried_when_the_policy_excludes_it(orch):
    stuck = Stuck()
    register(orch, "w", step("s", stuck, timeout=0.05, policy=retry(3, "ConnectionError")))
    try:
        result = orch.start_workflow("w", {})
    finally:
        stuck.release.set()
    assert len(stuck.contexts) == 1
    assert str(result.error).startswith("step s failed after 1 attempts: step s timed out")


def test_timeout_retried_when_listed_by_its_base_class(orch):
    stuck = Stuck()
    register(orch, "w", step("s", stuck, timeout=0.05, policy=retry(2, "TimeoutError")))
    try:
        result = orch.start_workflow("w", {})
    finally:
        stuck.release.set()
    assert len(stuck.contexts) == 2
    assert str(result.error).startswith("step s failed after 2 attempts: ")


def test_deadline_and_remaining(orch):
    seen = {}

    def look(ctx, data):
        seen["deadline"] = ctx.deadline
        seen["remaining"] = ctx.remaining()
        return {}

    register(orch, "w", step("s", look, timeout=timedelta(seconds=5)), step("n", look, ["s"]))
    orch.start_workflow("w", {})
    # "n" has no timeout: it ran last and overwrote the values
    assert seen == {"deadline": None, "remaining": None}

    register(orch, "w2", step("s", look, timeout=timedelta(seconds=5)))
    orch.start_workflow("w2", {})
    assert seen["deadline"] is not None and seen["deadline"].tzinfo is not None
    assert 0 < seen["remaining"] <= 5


def test_async_def_executor_is_cancelled_at_its_timeout(orch):
    state = {}

    async def sleepy(ctx, data):
        try:
            await asyncio.sleep(GUARD)
        except asyncio.CancelledError:
            state["cancelled"] = True
            raise
        return {"late": True}

    register(orch, "w", step("s", sleepy, timeout=0.05))
    result = orch.start_workflow("w", {})
    assert isinstance(result.error.__cause__, StepTimeoutError)
    assert result.output == {}
    wait_for(lambda: state.get("cancelled", False))  # the coroutine itself was cancelled


def test_a_step_finishing_within_its_timeout_succeeds(orch):
    register(orch, "w", step("s", lambda c, d: {"v": 1}, timeout=5))
    assert orch.start_workflow("w", {}).output == {"v": 1}


def test_abandoned_async_steps_do_not_block_the_wave(orch):
    stuck = Stuck()
    register(
        orch, "w",
        step("stuck", stuck, timeout=0.05, is_async=True, required=False),
        step("ok", lambda c, d: {"ok": 1}, is_async=True),
        step("after", lambda c, d: {"after": 1}, ["stuck", "ok"]),
    )
    try:
        result = orch.start_workflow("w", {})
    finally:
        stuck.release.set()
    assert result.success
    assert result.output == {"ok": 1, "after": 1}
