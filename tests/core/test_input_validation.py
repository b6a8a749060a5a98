"""Bad input and metadata are refused before anything is stored; bad outputs fail the step."""

from __future__ import annotations

import decimal

import pytest
from wfkit import register, retry, step

from orchwf import StepStatus, ValidationError


@pytest.fixture
def registered(orch):
    register(orch, "w", step("a", lambda c, d: {"ok": True}))
    return orch


@pytest.mark.parametrize(
    "value, fragments",
    [
        ({"amount": float("nan")}, ["'amount'", "NaN"]),
        ({"amount": float("inf")}, ["'amount'", "inf"]),
        ({"tags": {"a", "b"}}, ["'tags'", "set"]),
        ({"name": "nul\x00byte"}, ["'name'", "NUL"]),
        ({"bad\x00key": 1}, ["NUL"]),
        ({1: "int key"}, ["key 1", "not a string"]),
        ({"outer": {"inner": object()}}, ["'outer'", "'inner'", "object"]),
        ({"when": decimal.Decimal("1.5")}, ["'when'", "Decimal"]),
        ({"lst": [1, {"deep": float("nan")}]}, ["'lst'", "'deep'"]),
        ({"s": "\ud800"}, ["'s'", "surrogate"]),
    ],
)
@pytest.mark.parametrize("where", ["input", "metadata"])
def test_invalid_values_are_refused_naming_the_key(registered, sm, value, fragments, where):
    args = (value, None) if where == "input" else ({}, value)
    with pytest.raises(ValidationError) as info:
        registered.start_workflow("w", *args)
    message = str(info.value)
    assert message.startswith(where)
    for f in fragments:
        assert f in message, message
    assert sm.list_workflows() == ([], 0)  # nothing stored


@pytest.mark.parametrize("value", [[1, 2], "text", 3, ("a", 1)])
def test_input_must_be_an_object(registered, sm, value):
    with pytest.raises(ValidationError, match="input must be a JSON object"):
        registered.start_workflow("w", value)
    with pytest.raises(ValidationError, match="metadata must be a JSON object"):
        registered.start_workflow("w", {}, value)
    assert sm.list_workflows()[1] == 0


def test_none_input_and_metadata_are_empty_objects(registered):
    inst = registered.start_workflow("w", None, None).workflow_inst
    assert inst.input == {} and inst.metadata == {}


def test_input_is_copied_and_tuples_become_lists(registered):
    data = {"nested": {"k": [1, 2]}, "t": (1, 2)}
    inst_id = registered.start_workflow("w", data).workflow_inst.id
    data["nested"]["k"].append(3)
    stored = registered.get_workflow_status(inst_id)
    assert stored.input == {"nested": {"k": [1, 2]}, "t": [1, 2]}


def test_unknown_workflow(registered):
    from orchwf import WorkflowNotFoundError

    with pytest.raises(WorkflowNotFoundError, match="^workflow not found: missing$"):
        registered.start_workflow("missing", {})


def test_non_serialisable_output_fails_the_step_clearly(orch):
    register(orch, "w", step("a", lambda c, d: {"when": {1, 2}}, policy=retry(2)))
    result = orch.start_workflow("w", {})
    assert not result.success
    message = str(result.error)
    assert message.startswith("step a failed after 2 attempts: output of step a")
    assert "'when'" in message and "set" in message and "not JSON-serialisable" in message
    assert isinstance(result.error.__cause__, ValidationError)
    s = orch.get_workflow_status(result.workflow_inst.id).step("a")
    assert s.status == StepStatus.FAILED and s.output == {}


@pytest.mark.parametrize("bad", [[1, 2], "text", 7])
def test_output_that_is_not_a_dict_fails_the_step(orch, bad):
    register(orch, "w", step("a", lambda c, d: bad))
    result = orch.start_workflow("w", {})
    assert "an executor must return a dict or None" in str(result.error)


def test_nan_output_fails_the_step(orch):
    register(orch, "w", step("a", lambda c, d: {"x": float("nan")}, required=False), step("b", lambda c, d: {"b": 1}, ["a"]))
    result = orch.start_workflow("w", {})
    assert result.success and result.output == {"b": 1}
    assert "NaN" in result.workflow_inst.step("a").error
