"""Waves, priorities, sync-then-async, the bounded pool, and the seed's data flow."""

from __future__ import annotations

import threading

import pytest
from wfkit import GUARD, Recorder, register, step

from orchwf import InMemoryStateManager, Orchestrator, StepStatus

# -- the seed's worked priority orders (SEMANTICS.md §2.3) --------------------------------


def test_priority_within_a_wave_not_across_waves(orch):
    rec = Recorder()
    register(
        orch, "w",
        step("A", rec.step("A"), priority=5),
        step("B", rec.step("B"), priority=1),
        step("C", rec.step("C"), ["A"], priority=10),
    )
    assert orch.start_workflow("w", {}).success
    assert rec.calls == ["A", "B", "C"]  # a greedy ready queue would give A, C, B


def test_priority_with_a_diamond(orch):
    rec = Recorder()
    register(
        orch, "w",
        step("A", rec.step("A"), priority=5),
        step("B", rec.step("B"), priority=1),
        step("C", rec.step("C"), ["A"], priority=10),
        step("D", rec.step("D"), ["B"], priority=8),
        step("E", rec.step("E"), ["C", "D"], priority=15),
    )
    assert orch.start_workflow("w", {}).success
    assert rec.calls == ["A", "B", "C", "D", "E"]


def test_high_normal_low(orch):
    rec = Recorder()
    register(
        orch, "w",
        step("low", rec.step("low"), priority=-10),
        step("normal", rec.step("normal"), priority=0),
        step("high", rec.step("high"), priority=10),
    )
    orch.start_workflow("w", {})
    assert rec.calls == ["high", "normal", "low"]


def test_negative_priorities(orch):
    rec = Recorder()
    register(
        orch, "w",
        step("m20", rec.step("m20"), priority=-20),
        step("m5", rec.step("m5"), priority=-5),
        step("p10", rec.step("p10"), priority=10),
    )
    orch.start_workflow("w", {})
    assert rec.calls == ["p10", "m5", "m20"]


def test_ties_keep_definition_order_in_large_waves(orch):
    """The seed's sort.Slice is unstable beyond 12 elements; ours is stable."""
    rec = Recorder()
    prios = [(i * 7) % 3 for i in range(40)]  # 0, 1, 2 mixed, many ties
    register(orch, "w", *[step(f"s{i:02d}", rec.step(f"s{i:02d}"), priority=p) for i, p in enumerate(prios)])
    orch.start_workflow("w", {})
    expected = [f"s{i:02d}" for i in sorted(range(40), key=lambda i: -prios[i])]
    assert rec.calls == expected


def test_sync_steps_of_a_wave_run_before_its_async_steps(orch):
    rec = Recorder()
    register(
        orch, "w",
        step("async_high", rec.step("async_high"), priority=100, is_async=True),
        step("sync_low", rec.step("sync_low"), priority=-100),
        step("sync_mid", rec.step("sync_mid"), priority=0),
    )
    assert orch.start_workflow("w", {}).success
    assert rec.calls == ["sync_mid", "sync_low", "async_high"]


def test_next_wave_waits_for_the_whole_wave(orch):
    """Wave barrier: 'next' depends only on 'fast' but still waits for the slow async sibling."""
    rec = Recorder()
    slow_done = threading.Event()

    def slow(ctx, data):
        rec.add("slow")
        threading.Event().wait(0.05)
        slow_done.set()
        return {}

    def nxt(ctx, data):
        rec.add(f"next:slow_done={slow_done.is_set()}")
        return {}

    register(
        orch, "w",
        step("fast", rec.step("fast"), is_async=True),
        step("slow", slow, is_async=True),
        step("next", nxt, ["fast"]),
    )
    orch.start_workflow("w", {})
    assert "next:slow_done=True" in rec.calls


def test_async_steps_of_a_wave_run_concurrently(orch):
    barrier = threading.Barrier(3, timeout=GUARD)

    def meet(ctx, data):
        barrier.wait()  # breaks (and fails the step) unless all three run at once
        return {ctx.step_id: True}

    register(orch, "w", *[step(f"a{i}", meet, is_async=True) for i in range(3)])
    result = orch.start_workflow("w", {})
    assert result.success, result.error
    assert result.output == {"a0": True, "a1": True, "a2": True}


def test_async_pool_is_bounded_by_async_workers():
    orch = Orchestrator(InMemoryStateManager(), async_workers=2)
    lock = threading.Lock()
    running = 0
    peak = 0
    both_running = threading.Event()

    def work(ctx, data):
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            if running == 2:
                both_running.set()
        both_running.wait(GUARD)  # make sure two overlap, so a bound of 1 would be caught too
        threading.Event().wait(0.01)
        with lock:
            running -= 1
        return {}

    try:
        register(orch, "w", *[step(f"a{i}", work, is_async=True) for i in range(5)])
        result = orch.start_workflow("w", {})
        assert result.success, result.error
        assert peak == 2
    finally:
        orch.shutdown()


def test_steps_that_depend_on_everything_run_last_and_see_all_outputs(orch):
    rec = Recorder()
    register(
        orch, "w",
        step("a", rec.step("a", {"x": 1}), is_async=True),
        step("b", rec.step("b", {"y": 2}), is_async=True),
        step("c", rec.step("c", {"z": 3})),
        step("join", rec.step("join", {}), ["a", "b", "c"]),
    )
    orch.start_workflow("w", {})
    assert rec.calls[-1] == "join"
    joined = rec.inputs["join"]
    assert joined["a"] == {"x": 1} and joined["b"] == {"y": 2} and joined["c"] == {"z": 3}
    assert (joined["x"], joined["y"], joined["z"]) == (1, 2, 3)


# -- data flow (SEMANTICS.md §2.7-2.8) ------------------------------------------------------


def test_input_precedence_and_namespacing(orch):
    rec = Recorder()
    register(
        orch, "w",
        step("d1", rec.step("d1", {"k": "d1", "only_d1": 1, "shared": "d1"})),
        step("d2", rec.step("d2", {"k": "d2", "shared": "d2"}), ["d1"]),
        step("s", rec.step("s", {}), ["d2", "d1"]),
    )
    orch.start_workflow("w", {"k": "input", "inp": True})
    d1_in = rec.inputs["d1"]
    assert d1_in == {"k": "input", "inp": True}  # workflow input only
    s_in = rec.inputs["s"]
    # namespaced outputs of each dependency
    assert s_in["d1"] == {"k": "d1", "only_d1": 1, "shared": "d1"}
    assert s_in["d2"] == {"k": "d2", "shared": "d2"}
    # dependency outputs override the workflow input; the context (completion order:
    # d1 then d2) overrides dependency order (d2 then d1)
    assert s_in["k"] == "d2"
    assert s_in["shared"] == "d2"
    assert s_in["inp"] is True and s_in["only_d1"] == 1


def test_context_overrides_dependency_outputs_and_leaks_non_dependencies(orch):
    """The seed's context: a step sees outputs of earlier steps it does not depend on."""
    rec = Recorder()
    register(
        orch, "w",
        step("first", rec.step("first", {"v": "first", "leak": 1}), priority=10),
        step("dep", rec.step("dep", {"v": "dep"}), priority=0),
        step("later", rec.step("later", {"v": "later"}), ["first"]),
        step("s", rec.step("s", {}), ["dep", "later"]),
    )
    orch.start_workflow("w", {})
    s_in = rec.inputs["s"]
    assert s_in["first"] == {"v": "first", "leak": 1}  # not a dependency, still visible
    assert s_in["leak"] == 1
    assert s_in["v"] == "later"  # the last completed step wins through the context


def test_flat_output_merge_last_writer_wins_in_completion_order(orch):
    register(
        orch, "w",
        step("a", lambda c, d: {"k": "a", "a_only": 1}, priority=1),
        step("b", lambda c, d: {"k": "b"}, priority=0),
        step("c", lambda c, d: None, ["a"]),
    )
    result = orch.start_workflow("w", {"k": "input"})
    assert result.output == {"k": "b", "a_only": 1}  # no step-ID keys, no input keys
    stored = orch.get_workflow_status(result.workflow_inst.id)
    assert stored.output == {"k": "b", "a_only": 1}
    assert stored.context["a"] == {"k": "a", "a_only": 1}
    assert stored.context["b"] == {"k": "b"}
    assert stored.context["c"] == {}
    assert stored.context["k"] == "b"


def test_executor_returning_none_gives_an_empty_output(orch):
    register(orch, "w", step("a", lambda c, d: None))
    result = orch.start_workflow("w", {"x": 1})
    assert result.success and result.output == {}
    assert result.workflow_inst.steps[0].output == {}


def test_step_input_is_persisted(orch):
    register(orch, "w", step("a", lambda c, d: {"o": 1}), step("b", lambda c, d: None, ["a"]))
    result = orch.start_workflow("w", {"i": 1})
    steps = {s.step_id: s for s in orch.get_workflow_status(result.workflow_inst.id).steps}
    assert steps["a"].input == {"i": 1}
    assert steps["b"].input == {"i": 1, "o": 1, "a": {"o": 1}}


def test_executor_mutating_its_input_does_not_change_other_steps(orch):
    def mutate(ctx, data):
        data["a"]["nested"] = "changed"
        data["x"] = "changed"
        return {}

    rec = Recorder()
    register(
        orch, "w",
        step("a", lambda c, d: {"nested": "orig"}),
        step("m", mutate, ["a"]),
        step("z", rec.step("z", {}), ["m"]),
    )
    result = orch.start_workflow("w", {"x": "orig"})
    assert result.success
    assert rec.inputs["z"]["a"] == {"nested": "orig"}
    assert rec.inputs["z"]["x"] == "orig"
    stored = orch.get_workflow_status(result.workflow_inst.id)
    assert stored.context["a"] == {"nested": "orig"}


# -- failures ------------------------------------------------------------------------------


def test_non_required_failure_is_skipped_and_dependents_still_run(orch):
    rec = Recorder()
    register(
        orch, "w",
        step("opt", rec.step("opt", fail=RuntimeError("optional broke")), required=False),
        step("after", rec.step("after", {"after": 1}), ["opt"]),
    )
    result = orch.start_workflow("w", {})
    assert result.success and result.error is None
    assert rec.calls == ["opt", "after"]
    assert rec.inputs["after"]["opt"] == {}  # a skipped dependency contributes an empty output
    steps = {s.step_id: s for s in orch.get_workflow_status(result.workflow_inst.id).steps}
    assert steps["opt"].status == StepStatus.SKIPPED
    assert steps["opt"].error == "optional broke"
    assert steps["after"].status == StepStatus.COMPLETED
    assert result.workflow_inst.status == "completed"


def test_required_failure_halts_with_step_failed_error(orch):
    rec = Recorder()
    cause = RuntimeError("step failed")
    register(
        orch, "w",
        step("ok", rec.step("ok", {"partial": 1}), priority=5),
        step("bad", rec.step("bad", fail=cause)),
        step("same_wave_later", rec.step("same_wave_later"), priority=-5),
        step("next_wave", rec.step("next_wave"), ["ok"]),
    )
    result = orch.start_workflow("w", {})
    assert result.success is False
    assert str(result.error) == "step bad failed after 1 attempts: step failed"
    assert result.error.__cause__ is cause
    assert rec.calls == ["ok", "bad"]
    assert result.output == {"partial": 1}  # a failed result carries the partial output
    stored = orch.get_workflow_status(result.workflow_inst.id)
    assert stored.status == "failed"
    assert stored.error == "step bad failed after 1 attempts: step failed"
    assert stored.completed_at is not None
    assert stored.output == {"partial": 1}
    steps = {s.step_id: s for s in stored.steps}
    assert steps["bad"].status == StepStatus.FAILED and steps["bad"].error == "step failed"
    assert steps["same_wave_later"].status == StepStatus.CANCELLED
    assert steps["next_wave"].status == StepStatus.CANCELLED
    assert steps["ok"].status == StepStatus.COMPLETED


def test_async_sibling_failure_lets_the_others_finish_and_reports_the_failure(orch):
    rec = Recorder()
    register(
        orch, "w",
        step("good1", rec.step("good1", {"g1": 1}), is_async=True),
        step("bad", rec.step("bad", fail=ValueError("nope")), is_async=True),
        step("good2", rec.step("good2", {"g2": 1}), is_async=True),
        step("after", rec.step("after"), ["good1"]),
    )
    result = orch.start_workflow("w", {})
    assert not result.success
    assert str(result.error) == "step bad failed after 1 attempts: nope"
    assert result.output == {"g1": 1, "g2": 1}
    assert "after" not in rec.calls


def test_a_raising_executor_of_any_exception_type_fails_the_step(orch):
    class Weird(Exception):
        def __str__(self):
            return ""

    register(orch, "w", step("a", lambda c, d: (_ for _ in ()).throw(Weird())))
    result = orch.start_workflow("w", {})
    assert str(result.error) == "step a failed after 1 attempts: Weird"


@pytest.mark.parametrize("n", [1, 2, 5])
def test_many_independent_workflows_in_parallel_threads(orch, n):
    register(orch, "w", step("a", lambda c, d: {"i": d["i"]}, is_async=True), step("b", lambda c, d: {"j": d["i"] * 2}, ["a"]))
    results = [None] * (n * 4)

    def go(i):
        results[i] = orch.start_workflow("w", {"i": i})

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(results))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(GUARD)
    assert [r.output for r in results] == [{"i": i, "j": 2 * i} for i in range(len(results))]
    assert orch.list_workflows()[1] == len(results)


@pytest.mark.parametrize(
    "raiser, text",
    [
        (lambda: (_ for _ in ()).throw(SystemExit(3)), "step s raised SystemExit: 3"),
        (lambda: (_ for _ in ()).throw(KeyboardInterrupt()), "step s raised KeyboardInterrupt"),
    ],
)
def test_base_exceptions_from_an_executor_fail_the_step_not_the_caller(orch, raiser, text):
    """They are raised on the step's own thread; the instance must not stay 'running'."""
    register(orch, "w", step("s", lambda c, d: raiser()))
    result = orch.start_workflow("w", {})
    assert str(result.error) == f"step s failed after 1 attempts: {text}"
    assert orch.get_workflow_status(result.workflow_inst.id).status == "failed"


def test_cancelled_error_from_an_async_executor_fails_the_step(orch):
    import asyncio

    async def cancelled(ctx, data):
        fut = asyncio.get_running_loop().create_future()
        fut.cancel()
        await fut

    register(orch, "w", step("s", cancelled))
    result = orch.start_workflow("w", {})
    assert str(result.error) == "step s failed after 1 attempts: step s raised CancelledError"
    assert isinstance(result.error.__cause__.__cause__, asyncio.CancelledError)
    assert orch.get_workflow_status(result.workflow_inst.id).status == "failed"


def test_a_one_thread_pool_runs_async_steps_in_priority_order():
    orch = Orchestrator(InMemoryStateManager(), async_workers=1)
    rec = Recorder()
    prios = {"p1": 1, "p3a": 3, "p2": 2, "p3b": 3}
    try:
        register(orch, "w", *[step(name, rec.step(name), priority=p, is_async=True) for name, p in prios.items()])
        assert orch.start_workflow("w", {}).success
    finally:
        orch.shutdown()
    assert rec.calls == ["p3a", "p3b", "p2", "p1"]


def test_a_delayed_step_waits_in_the_in_process_engine() -> None:
    """with_delay / sleep_step: the in-process engine waits in memory before the step."""
    import time

    from orchwf import InMemoryStateManager, Orchestrator, StepBuilder, WorkflowBuilder, sleep_step

    seen: list[float] = []
    wf = (WorkflowBuilder("napping", "Napping")
          .add_step(StepBuilder("a", "A", lambda ctx, data: seen.append(time.monotonic()) or {}).build())
          .add_step(sleep_step("nap", 0.3).with_dependencies("a").build())
          .add_step(StepBuilder("b", "B", lambda ctx, data: seen.append(time.monotonic()) or {})
                    .with_dependencies("nap").build())
          .build())
    assert wf.step("nap").to_json()["delay"] == 0.3 and "delay" not in wf.step("a").to_json()
    with Orchestrator(InMemoryStateManager()) as orch:
        orch.register_workflow(wf)
        assert orch.start_workflow("napping", {}).success
    assert seen[1] - seen[0] >= 0.3
