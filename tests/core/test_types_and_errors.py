"""Enums, the public API surface and the error hierarchy."""

from __future__ import annotations

import pytest

import orchwf
from orchwf import (
    NonRetryableError,
    OrchwfError,
    StepFailedError,
    StepStatus,
    StepTimeoutError,
    ValidationError,
    WorkflowNotFoundError,
    WorkflowStatus,
)


def test_workflow_status_values_are_the_seeds_strings():
    assert WorkflowStatus.COMPLETED == "completed"
    assert {s.value for s in WorkflowStatus} == {"pending", "running", "completed", "failed", "cancelled", "retrying"}
    assert str(WorkflowStatus.FAILED) == "failed"
    assert WorkflowStatus("cancelled") is WorkflowStatus.CANCELLED


def test_step_status_values_include_cancelled():
    assert StepStatus.SKIPPED == "skipped"
    assert {s.value for s in StepStatus} == {
        "pending", "running", "completed", "failed", "skipped", "retrying", "cancelled",
    }


@pytest.mark.parametrize(
    "status, terminal",
    [("pending", False), ("running", False), ("retrying", False), ("completed", True), ("failed", True), ("cancelled", True)],
)
def test_workflow_status_terminal(status, terminal):
    assert WorkflowStatus(status).is_terminal is terminal


@pytest.mark.parametrize(
    "status, terminal",
    [("pending", False), ("running", False), ("retrying", False), ("completed", True), ("failed", True), ("skipped", True), ("cancelled", True)],
)
def test_step_status_terminal(status, terminal):
    assert StepStatus(status).is_terminal is terminal


def test_public_api_is_importable_from_the_package():
    for name in [
        "WorkflowBuilder", "StepBuilder", "RetryPolicyBuilder", "Orchestrator", "InMemoryStateManager",
        "StateManager", "WorkflowStatus", "StepStatus", "WorkflowDefinition", "StepDefinition",
        "RetryPolicy", "WorkflowInstance", "StepInstance", "WorkflowEvent", "WorkflowResult",
        "StepContext", "OrchwfError", "ValidationError", "WorkflowNotFoundError", "StepFailedError",
        "StepTimeoutError", "NonRetryableError", "set_trace_id", "set_correlation_id", "set_business_id",
    ]:
        assert hasattr(orchwf, name), name
        assert name in orchwf.__all__, name


def test_in_memory_store_satisfies_the_protocol():
    assert isinstance(orchwf.InMemoryStateManager(), orchwf.StateManager)


def test_error_hierarchy():
    for cls in (ValidationError, WorkflowNotFoundError, StepFailedError, StepTimeoutError, NonRetryableError):
        assert issubclass(cls, OrchwfError)
    assert issubclass(ValidationError, ValueError)
    assert issubclass(StepTimeoutError, TimeoutError)


def test_workflow_not_found_message():
    err = WorkflowNotFoundError("abc")
    assert str(err) == "workflow not found: abc"
    assert err.workflow_id == "abc"


def test_step_failed_message_and_cause():
    cause = RuntimeError("step failed")
    err = StepFailedError("step1", 1, cause)
    assert str(err) == "step step1 failed after 1 attempts: step failed"
    assert err.__cause__ is cause
    assert err.step_id == "step1" and err.attempts == 1


def test_step_failed_message_uses_class_name_for_empty_cause():
    assert str(StepFailedError("s", 2, KeyError())) == "step s failed after 2 attempts: KeyError"
