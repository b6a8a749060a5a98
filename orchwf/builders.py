"""Fluent builders, as in the Go ORCHWF package; ``build()`` validates and returns an immutable value."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from .dag import validate_definition, validate_policy, validate_step
from .errors import NonRetryableError, ValidationError
from .jsonvalue import check_json_object
from .schedules import check_definition_schedules, check_schedule
from .types import (
    Concurrency,
    RetryPolicy,
    Schedule,
    StepCompensator,
    StepDefinition,
    StepExecutor,
    WorkflowDefinition,
)

MAX_DELAY = 366 * 86400.0
MAX_CONCURRENCY_LIMIT = 1_000_000
# A key template: text with {field} placeholders, a field being a top-level input key
# (an identifier). Any other brace is an error at definition time.
_KEY_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def check_concurrency(key: object, limit: object, where: str) -> Concurrency:
    """Validate a concurrency key template and limit at definition time."""
    if not isinstance(key, str) or not 1 <= len(key) <= 255 or "\x00" in key:
        raise ValidationError(f"{where}: a concurrency key must be a template of 1 to 255 characters, got {key!r}")
    rest = _KEY_FIELD.sub("", key)
    if "{" in rest or "}" in rest:
        raise ValidationError(f"{where}: bad concurrency key template {key!r}: placeholders are {{field}}, "
                              "a field being an input key (letters, digits, _), and no other braces")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_CONCURRENCY_LIMIT:
        raise ValidationError(f"{where}: a concurrency limit must be an int from 1 to {MAX_CONCURRENCY_LIMIT}, "
                              f"got {limit!r}")
    return Concurrency(key, limit)


def key_fields(template: str) -> list[str]:
    """The input fields a key template names, in order."""
    return _KEY_FIELD.findall(template)


def _seconds(value: float | int | timedelta, what: str) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(f"{what} must be seconds (a number) or a timedelta, got {value!r}")
    return float(value)


class RetryPolicyBuilder:
    def __init__(self) -> None:
        self._max_attempts = 3
        self._initial = 1.0
        self._multiplier = 2.0
        self._max = 30.0
        self._retryable: tuple[str, ...] = ()
        self._jitter = False

    def with_max_attempts(self, n: int) -> RetryPolicyBuilder:
        self._max_attempts = n
        return self

    def with_initial_interval(self, interval: float | timedelta) -> RetryPolicyBuilder:
        self._initial = _seconds(interval, "initial interval")
        return self

    def with_multiplier(self, multiplier: float) -> RetryPolicyBuilder:
        self._multiplier = float(multiplier)
        return self

    def with_max_interval(self, interval: float | timedelta) -> RetryPolicyBuilder:
        self._max = _seconds(interval, "max interval")
        return self

    def with_retryable_errors(self, *names: str) -> RetryPolicyBuilder:
        for n in names:
            if not isinstance(n, str) or not n:
                raise ValidationError(f"retryable error names must be non-empty strings, got {n!r}")
        self._retryable = tuple(names)
        return self

    def with_jitter(self, jitter: bool = True) -> RetryPolicyBuilder:
        self._jitter = bool(jitter)
        return self

    def build(self) -> RetryPolicy:
        policy = RetryPolicy(
            max_attempts=self._max_attempts,
            initial_interval=self._initial,
            multiplier=self._multiplier,
            max_interval=self._max,
            retryable_errors=self._retryable,
            jitter=self._jitter,
        )
        validate_policy(policy)
        return policy


class StepBuilder:
    def __init__(self, id: str, name: str, executor: StepExecutor) -> None:
        self._fields: dict[str, Any] = {"id": id, "name": name, "executor": executor}

    def with_description(self, description: str) -> StepBuilder:
        self._fields["description"] = description
        return self

    def with_dependencies(self, *step_ids: str) -> StepBuilder:
        """Replace the dependency list (as the Go package does)."""
        if len(step_ids) == 1 and isinstance(step_ids[0], (list, tuple)):
            step_ids = tuple(step_ids[0])
        for d in step_ids:
            if not isinstance(d, str) or not d:
                raise ValidationError(f"dependency IDs must be non-empty strings, got {d!r}")
        self._fields["dependencies"] = tuple(step_ids)
        return self

    def with_retry_policy(self, policy: RetryPolicy) -> StepBuilder:
        self._fields["retry_policy"] = policy
        return self

    def with_timeout(self, timeout: float | timedelta) -> StepBuilder:
        """Per-attempt timeout; 0 means none."""
        seconds = _seconds(timeout, "timeout")
        self._fields["timeout"] = seconds if seconds != 0 else None
        if seconds < 0:
            self._fields["timeout"] = seconds  # rejected by build()
        return self

    def with_delay(self, delay: float | timedelta) -> StepBuilder:
        """Durable sleep: the step becomes ready ``delay`` after its dependencies complete
        (a first step: after the instance starts). In the daemon the wait holds no slot,
        lease or connection and survives restarts; the in-process engine waits in memory."""
        seconds = _seconds(delay, "delay")
        if not math.isfinite(seconds) or not 0 <= seconds <= MAX_DELAY:
            raise ValidationError(f"delay must be between 0 and {MAX_DELAY:.0f} seconds (366 days), got {delay!r}")
        self._fields["delay"] = seconds
        return self

    def with_required(self, required: bool) -> StepBuilder:
        self._fields["required"] = bool(required)
        return self

    def with_async(self, is_async: bool) -> StepBuilder:
        self._fields["is_async"] = bool(is_async)
        return self

    def with_priority(self, priority: int) -> StepBuilder:
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ValidationError(f"priority must be an int, got {priority!r}")
        if abs(priority) > 2**29:  # summed with the instance's priority in int4
            raise ValidationError(f"priority {priority} is out of range (±{2**29})")
        self._fields["priority"] = priority
        return self

    def with_compensator(self, compensator: StepCompensator) -> StepBuilder:
        if not callable(compensator):
            raise ValidationError("compensator must be callable")
        self._fields["compensator"] = compensator
        return self

    def with_transaction(self, transactional: bool = True) -> StepBuilder:
        """Daemon only: give the executor ``ctx.conn`` inside the result's transaction."""
        self._fields["transactional"] = bool(transactional)
        return self

    def with_crash_counts_as_attempt(self, counts: bool = True) -> StepBuilder:
        """Daemon only: a worker crash during this step uses up one attempt.

        By default a crash does not consume the retry budget; opt in for steps that
        must not run more often than ``max_attempts`` (side effects that are not idempotent).
        """
        self._fields["crash_counts_as_attempt"] = bool(counts)
        return self

    def with_concurrency(self, key: str, limit: int) -> StepBuilder:
        """Daemon only: at most ``limit`` steps whose ``key`` (a template over the
        workflow input, e.g. ``"customer:{customer_id}"``) renders the same run at once,
        across every host. A step over the limit waits without holding a worker slot."""
        self._fields["concurrency"] = check_concurrency(key, limit, f"step {self._fields['id']}")
        return self

    def build(self) -> StepDefinition:
        step = StepDefinition(**self._fields)
        validate_step(step)
        return step


class WorkflowBuilder:
    def __init__(self, id: str, name: str) -> None:
        self._id = id
        self._name = name
        self._description = ""
        self._version = "1.0.0"
        self._metadata: dict[str, Any] = {}
        self._steps: list[StepDefinition] = []
        self._schedules: list[Schedule] = []
        self._concurrency: Concurrency | None = None

    def with_description(self, description: str) -> WorkflowBuilder:
        self._description = description
        return self

    def with_version(self, version: str) -> WorkflowBuilder:
        self._version = version
        return self

    def with_metadata(self, key: str, value: Any) -> WorkflowBuilder:
        self._metadata[key] = value
        return self

    def add_step(self, step: StepDefinition) -> WorkflowBuilder:
        self._steps.append(step)
        return self

    def with_schedule(self, cron: str, *, timezone: str = "UTC", input: Mapping[str, Any] | None = None,
                      name: str | None = None, misfire: str = "once") -> WorkflowBuilder:
        """Start an instance at each tick of ``cron`` (five fields or ``@hourly`` and the
        like) in ``timezone``, with ``input``; repeatable. The daemon fires it once
        registered (docs/schedules.md); the in-process engine does not."""
        self._schedules.append(check_schedule(
            Schedule(cron, timezone, {} if input is None else input, name or "", misfire), self._id))
        return self

    def with_concurrency(self, key: str, limit: int) -> WorkflowBuilder:
        """Daemon only: at most ``limit`` running instances whose ``key`` (a template over
        the input, e.g. ``"customer:{customer_id}"``) renders the same, across every host.
        An instance over the limit waits, its first steps not ready, until one ends."""
        self._concurrency = check_concurrency(key, limit, f"workflow {self._id}")
        return self

    def build(self) -> WorkflowDefinition:
        """Return a new immutable definition; later builder calls do not change it."""
        if not self._id:
            raise ValidationError("workflow ID is required")
        if not self._name:
            raise ValidationError("workflow name is required")
        definition = WorkflowDefinition(
            id=self._id,
            name=self._name,
            description=self._description,
            version=self._version,
            metadata=check_json_object(self._metadata, "workflow metadata"),
            steps=tuple(self._steps),
            schedules=tuple(self._schedules),
            concurrency=self._concurrency,
        )
        if self._concurrency is not None:
            both = [s.id for s in definition.steps if not s.dependencies and s.concurrency is not None]
            if both:
                raise ValidationError(f"workflow {self._id}: first steps {both} have a concurrency key of their "
                                      "own under the workflow's: give it to a later step, or use one of the two")
        validate_definition(definition)
        check_definition_schedules(definition)
        return definition


def _sleep(ctx: Any, data: Any) -> dict[str, Any]:
    return {}


def sleep_step(step_id: str, seconds: float | timedelta) -> StepBuilder:
    """A step that only waits: ``seconds`` after its dependencies complete, it completes
    with no output. Add dependencies (``.with_dependencies(...)``) and ``build()`` it."""
    return StepBuilder(step_id, f"Sleep {step_id}", _sleep).with_delay(seconds)


MAX_SIGNAL_NAME = 255


def _signal_in_process(ctx: Any, data: Any) -> dict[str, Any]:
    raise NonRetryableError("wait_for_signal steps run in the daemon only (orchwf worker); "
                            "the in-process engine has no signals")


def wait_for_signal(step_id: str, name: str, *, timeout: float | timedelta | None = None) -> StepBuilder:
    """A step that completes when the instance receives the signal ``name``
    (Client.signal, orchwf_signal in SQL, ``orchwf signal``); its output is the signal's
    payload. A signal sent before the step waits is kept for it. With ``timeout`` the step
    fails after that long without one (retries and compensation apply). Daemon only;
    the wait holds no slot, lease or connection."""
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_SIGNAL_NAME or "\x00" in name:
        raise ValidationError(f"a signal name must be a string of 1 to {MAX_SIGNAL_NAME} characters, got {name!r}")
    builder = StepBuilder(step_id, f"Wait for {name}", _signal_in_process)
    builder._fields["signal"] = name
    if timeout is not None:
        seconds = _seconds(timeout, "signal timeout")
        if not math.isfinite(seconds) or not 0 < seconds <= MAX_DELAY:
            raise ValidationError(f"signal timeout must be between 0 and {MAX_DELAY:.0f} seconds, got {timeout!r}")
        builder._fields["signal_timeout"] = seconds
    return builder


def _child_in_process(ctx: Any, data: Any) -> dict[str, Any]:
    raise NonRetryableError("child_workflow_step steps run in the daemon only (orchwf worker)")


def child_workflow_step(step_id: str, workflow_id: str, input_from: str | None = None) -> StepBuilder:
    """A step that starts an instance of ``workflow_id`` and completes with the child's
    output. The child's input is this step's input (the workflow's input merged with its
    dependencies' outputs), or with ``input_from`` the output of that dependency. A child
    that fails or is cancelled fails the step (its retry policy starts a new child);
    cancelling the parent cancels its children. Daemon only; the wait holds no slot."""
    if not isinstance(workflow_id, str) or not workflow_id:
        raise ValidationError(f"child workflow ID must be a non-empty string, got {workflow_id!r}")
    if input_from is not None and (not isinstance(input_from, str) or not input_from):
        raise ValidationError(f"input_from must be a step ID, got {input_from!r}")
    builder = StepBuilder(step_id, f"Run {workflow_id}", _child_in_process)
    builder._fields["child_workflow"] = workflow_id
    builder._fields["child_input_from"] = input_from
    return builder
