"""Builders: defaults, fluent setters, and validation at build() and register_workflow()."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from wfkit import step

from orchwf import (
    Orchestrator,
    RetryPolicy,
    RetryPolicyBuilder,
    StepBuilder,
    StepDefinition,
    ValidationError,
    WorkflowBuilder,
    WorkflowDefinition,
)


def noop(ctx, data):
    return None


# -- defaults -----------------------------------------------------------------------------


def test_retry_policy_defaults_are_the_seeds():
    p = RetryPolicyBuilder().build()
    assert (p.max_attempts, p.initial_interval, p.multiplier, p.max_interval) == (3, 1.0, 2.0, 30.0)
    assert p.retryable_errors == ()


def test_step_builder_defaults():
    s = StepBuilder("s", "S", noop).build()
    assert s.required is True
    assert s.is_async is False
    assert s.dependencies == ()
    assert s.priority == 0
    assert s.timeout is None
    assert s.retry_policy is None
    assert s.compensator is None
    assert s.policy.max_attempts == 1  # no policy: a single attempt, as in the seed


def test_workflow_builder_defaults():
    wf = WorkflowBuilder("w", "W").add_step(step("a", noop)).build()
    assert wf.version == "1.0.0"
    assert wf.description == ""
    assert dict(wf.metadata) == {}


def test_fluent_setters():
    policy = RetryPolicyBuilder().with_max_attempts(5).build()
    comp = lambda ctx, data: None  # noqa: E731
    s = (
        StepBuilder("s", "S", noop)
        .with_description("desc")
        .with_dependencies("x", "y")
        .with_retry_policy(policy)
        .with_timeout(2.5)
        .with_required(False)
        .with_async(True)
        .with_priority(-7)
        .with_compensator(comp)
        .build()
    )
    assert s.description == "desc"
    assert s.dependencies == ("x", "y")
    assert s.retry_policy is policy
    assert s.timeout == 2.5
    assert s.required is False and s.is_async is True
    assert s.priority == -7
    assert s.compensator is comp

    wf = (
        WorkflowBuilder("w", "W")
        .with_description("d")
        .with_version("2.0")
        .with_metadata("team", "ops")
        .add_step(StepBuilder("x", "X", noop).build())
        .add_step(StepBuilder("y", "Y", noop).build())
        .add_step(s)
        .build()
    )
    assert (wf.id, wf.name, wf.description, wf.version) == ("w", "W", "d", "2.0")
    assert dict(wf.metadata) == {"team": "ops"}
    assert [x.id for x in wf.steps] == ["x", "y", "s"]


def test_retry_policy_setters():
    p = (
        RetryPolicyBuilder()
        .with_max_attempts(4)
        .with_initial_interval(0.5)
        .with_multiplier(3)
        .with_max_interval(10)
        .with_retryable_errors("ConnectionError", "timeout")
        .build()
    )
    assert p == RetryPolicy(4, 0.5, 3.0, 10.0, ("ConnectionError", "timeout"))


def test_with_dependencies_replaces_the_list_and_accepts_a_list():
    s = StepBuilder("s", "S", noop).with_dependencies("a").with_dependencies(["b", "c"]).build()
    assert s.dependencies == ("b", "c")


def test_timedelta_is_accepted_for_timeouts_and_intervals():
    s = StepBuilder("s", "S", noop).with_timeout(timedelta(milliseconds=1500)).build()
    assert s.timeout == 1.5
    p = RetryPolicyBuilder().with_initial_interval(timedelta(milliseconds=200)).with_max_interval(timedelta(minutes=1)).build()
    assert p.initial_interval == 0.2 and p.max_interval == 60.0


def test_zero_timeout_means_none():
    assert StepBuilder("s", "S", noop).with_timeout(0).build().timeout is None


def test_built_definitions_are_immutable_and_detached_from_the_builder():
    b = WorkflowBuilder("w", "W").with_metadata("k", 1).add_step(step("a", noop))
    wf = b.build()
    b.add_step(step("b", noop)).with_metadata("k", 2)
    assert [s.id for s in wf.steps] == ["a"]
    assert wf.metadata["k"] == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        wf.id = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        wf.steps[0].priority = 3  # type: ignore[misc]


# -- validation at build() ----------------------------------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: StepBuilder("", "S", noop).build(), "step ID is required"),
        (lambda: StepBuilder("s", "", noop).build(), "step name is required"),
        (lambda: StepBuilder("s", "S", None).build(), "step executor is required"),  # type: ignore[arg-type]
        (lambda: StepBuilder("s", "S", noop).with_timeout(-1).build(), "timeout must not be negative"),
        (lambda: StepBuilder("s", "S", noop).with_timeout(timedelta(seconds=-1)).build(), "timeout must not be negative"),
        (lambda: StepBuilder("s", "S", noop).with_timeout("5").build(), "timeout must be seconds"),  # type: ignore[arg-type]
        (lambda: StepBuilder("s", "S", noop).with_priority(1.5).build(), "priority must be an int"),  # type: ignore[arg-type]
        (lambda: StepBuilder("s", "S", noop).with_compensator("x").build(), "compensator must be callable"),  # type: ignore[arg-type]
        (lambda: StepBuilder("s", "S", noop).with_dependencies("a", "a").build(), "duplicate dependency"),
        (lambda: StepBuilder("s", "S", noop).with_dependencies("").build(), "dependency IDs must be non-empty"),
    ],
)
def test_step_build_errors(make, message):
    with pytest.raises(ValidationError, match=message):
        make()


@pytest.mark.parametrize(
    "configure, message",
    [
        (lambda b: b.with_max_attempts(0), "max_attempts must be at least 1, got 0"),
        (lambda b: b.with_max_attempts(-2), "max_attempts must be at least 1, got -2"),
        (lambda b: b.with_initial_interval(-0.1), "intervals must not be negative"),
        (lambda b: b.with_max_interval(-1), "intervals must not be negative"),
        (lambda b: b.with_initial_interval(timedelta(seconds=-1)), "intervals must not be negative"),
        (lambda b: b.with_multiplier(0.5), "multiplier must be at least 1, got 0.5"),
        (lambda b: b.with_multiplier(0), "multiplier must be at least 1"),
    ],
)
def test_retry_policy_build_errors(configure, message):
    with pytest.raises(ValidationError, match=message):
        configure(RetryPolicyBuilder()).build()


def test_retryable_error_names_must_be_strings():
    with pytest.raises(ValidationError):
        RetryPolicyBuilder().with_retryable_errors("ok", 3)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        RetryPolicyBuilder().with_retryable_errors("")


def test_multiplier_of_one_and_max_attempts_of_one_are_valid():
    p = RetryPolicyBuilder().with_multiplier(1).with_max_attempts(1).build()
    assert p.multiplier == 1.0 and p.max_attempts == 1


def test_workflow_requires_id_name_and_steps():
    with pytest.raises(ValidationError, match="workflow ID is required"):
        WorkflowBuilder("", "W").add_step(step("a", noop)).build()
    with pytest.raises(ValidationError, match="workflow name is required"):
        WorkflowBuilder("w", "").add_step(step("a", noop)).build()
    with pytest.raises(ValidationError, match="at least one step"):
        WorkflowBuilder("w", "W").build()


def test_duplicate_step_ids_are_rejected():
    with pytest.raises(ValidationError, match="duplicate step ID 'a'"):
        WorkflowBuilder("w", "W").add_step(step("a", noop)).add_step(step("a", noop)).build()


def test_unknown_dependency_is_rejected_with_the_seeds_message():
    with pytest.raises(ValidationError, match="step b has invalid dependency: zzz"):
        WorkflowBuilder("w", "W").add_step(step("a", noop)).add_step(step("b", noop, ["zzz"])).build()


def test_self_dependency_is_rejected():
    with pytest.raises(ValidationError, match="step a depends on itself"):
        WorkflowBuilder("w", "W").add_step(step("a", noop, ["a"])).build()


def test_cycle_is_rejected_and_named():
    b = (
        WorkflowBuilder("w", "W")
        .add_step(step("start", noop))
        .add_step(step("a", noop, ["start", "c"]))
        .add_step(step("b", noop, ["a"]))
        .add_step(step("c", noop, ["b"]))
    )
    with pytest.raises(ValidationError) as info:
        b.build()
    msg = str(info.value)
    assert "cycle" in msg
    path = msg.split(": ", 1)[1].split(" -> ")
    assert path[0] == path[-1]
    assert sorted(set(path)) == ["a", "b", "c"]  # the cycle, and only it: "start" is not in it


def test_two_step_cycle_is_rejected():
    with pytest.raises(ValidationError, match=r"cycle: (a -> b -> a|b -> a -> b)"):
        WorkflowBuilder("w", "W").add_step(step("a", noop, ["b"])).add_step(step("b", noop, ["a"])).build()


def test_workflow_metadata_must_be_json():
    with pytest.raises(ValidationError, match="workflow metadata"):
        WorkflowBuilder("w", "W").with_metadata("bad", {1, 2}).add_step(step("a", noop)).build()


# -- validation at register_workflow() ------------------------------------------------------


def _direct(*steps: StepDefinition, wid: str = "w") -> WorkflowDefinition:
    """A definition built without the builder, so nothing has been validated yet."""
    return WorkflowDefinition(id=wid, name="W", steps=tuple(steps))


@pytest.mark.parametrize(
    "definition, message",
    [
        (_direct(StepDefinition("a", "A", noop, dependencies=("b",)), StepDefinition("b", "B", noop, dependencies=("a",))), "cycle"),
        (_direct(StepDefinition("a", "A", noop, dependencies=("a",))), "depends on itself"),
        (_direct(StepDefinition("a", "A", noop, dependencies=("nope",))), "invalid dependency: nope"),
        (_direct(StepDefinition("a", "A", noop), StepDefinition("a", "A2", noop)), "duplicate step ID"),
        (_direct(StepDefinition("a", "A", None)), "executor is required"),
        (_direct(StepDefinition("a", "A", noop, retry_policy=RetryPolicy(max_attempts=0))), "max_attempts must be at least 1"),
        (_direct(StepDefinition("a", "A", noop, retry_policy=RetryPolicy(multiplier=0.0))), "multiplier must be at least 1"),
        (_direct(StepDefinition("a", "A", noop, timeout=-1.0)), "timeout must not be negative"),
        (_direct(), "at least one step"),
        (_direct(StepDefinition("a", "A", noop), wid=""), "workflow ID cannot be empty"),
        (None, "workflow cannot be None"),
    ],
)
def test_register_workflow_validates_directly_built_definitions(sm, definition, message):
    orch = Orchestrator(sm)
    try:
        with pytest.raises(ValidationError, match=message):
            orch.register_workflow(definition)
        assert orch.workflows == []
    finally:
        orch.shutdown()


def test_register_workflow_replaces_a_definition_with_the_same_id(orch):
    first = WorkflowBuilder("w", "First").add_step(step("a", lambda c, d: {"v": 1})).build()
    second = WorkflowBuilder("w", "Second").add_step(step("a", lambda c, d: {"v": 2})).build()
    orch.register_workflow(first)
    orch.register_workflow(second)
    assert orch.get_workflow("w") is second
    assert len(orch.workflows) == 1
    assert orch.start_workflow("w", {}).output == {"v": 2}


def test_get_workflow_unknown(orch):
    from orchwf import WorkflowNotFoundError

    with pytest.raises(WorkflowNotFoundError, match="^workflow not found: nope$"):
        orch.get_workflow("nope")


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
def test_async_workers_must_be_a_positive_int(sm, bad):
    with pytest.raises(ValidationError, match="async_workers"):
        Orchestrator(sm, async_workers=bad)
