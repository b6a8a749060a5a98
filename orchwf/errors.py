"""The exception hierarchy: one base, so callers can catch everything orchwf raises."""

from __future__ import annotations


class OrchwfError(Exception):
    """Base class of every error orchwf raises on purpose."""


class ValidationError(OrchwfError, ValueError):
    """Bad input at a boundary: a builder, an enqueue, a filter, a CLI argument."""


class WorkflowNotFoundError(OrchwfError, LookupError):
    """An unknown workflow definition ID or instance ID."""

    def __init__(self, workflow_id: str) -> None:
        super().__init__(f"workflow not found: {workflow_id}")
        self.workflow_id = workflow_id


class ScheduleNotFoundError(OrchwfError, KeyError):
    """No schedule of that name (Client.remove_schedule, pause_schedule, resume_schedule)."""

    def __init__(self, name: str) -> None:
        super().__init__(f"schedule not found: {name}")
        self.name = name

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class StepNotFoundError(OrchwfError, LookupError):
    def __init__(self, step_id: str) -> None:
        super().__init__(f"step not found: {step_id}")
        self.step_id = step_id


class InvalidStateError(OrchwfError):
    """The operation does not apply to the instance's current status."""


class StepFailedError(OrchwfError):
    """A required step failed for good; the cause is kept as ``__cause__``."""

    def __init__(self, step_id: str, attempts: int, cause: BaseException | str) -> None:
        self.step_id = step_id
        self.attempts = attempts
        text = cause if isinstance(cause, str) else (str(cause) or type(cause).__name__)
        super().__init__(f"step {step_id} failed after {attempts} attempts: {text}")
        if isinstance(cause, BaseException):
            self.__cause__ = cause


class StepTimeoutError(OrchwfError, TimeoutError):
    """One attempt of a step overran its timeout."""


class SignalTimeoutError(OrchwfError, TimeoutError):
    """A wait_for_signal step's timeout passed without its signal."""


class ChildWorkflowFailedError(OrchwfError):
    """A child_workflow_step's child failed or was cancelled."""


class NonRetryableError(OrchwfError):
    """Raised by an executor to fail the step at once, whatever the retry policy says."""


class WorkflowCancelledError(OrchwfError):
    """The workflow was cancelled while the step ran."""
