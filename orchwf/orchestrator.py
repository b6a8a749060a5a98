"""The in-process Orchestrator: runs a workflow's steps in waves, in this process.

Scheduling follows the Go ORCHWF package (README, "Priorities and waves"): each wave is
every step whose dependencies are done, in non-increasing priority (ties in definition
order); the wave's sync steps run one after another, then its async steps run
concurrently on a bounded pool. Unlike the Go package: no data races, per-attempt
timeouts that really stop waiting, retryable_errors honoured, everything persisted,
compensation, cancellation, and resume of failed or cancelled instances (README,
"Differences from the Go ORCHWF package"). What a failed attempt leads to, the event
names and the compensation order are lifecycle.py's, shared with the daemon.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from .dag import validate_definition
from .errors import (
    InvalidStateError,
    StepFailedError,
    ValidationError,
    WorkflowCancelledError,
    WorkflowNotFoundError,
)
from .ids import new_id, new_instance_id, resolve_ids
from .jsonvalue import check_json_object
from .lifecycle import Event, Outcome, compensation_order, decide_failure
from .semantics import call_executor, merge_step_output, prepare_step_input, run_attempt
from .stores.base import StateManager
from .types import (
    StepContext,
    StepDefinition,
    StepInstance,
    StepStatus,
    WorkflowDefinition,
    WorkflowEvent,
    WorkflowInstance,
    WorkflowResult,
    WorkflowStatus,
    sorted_by_priority,
    utcnow,
)

log = logging.getLogger("orchwf.orchestrator")


@dataclass
class _Run:
    """The live state of one running instance; ``lock`` guards output and context."""

    definition: WorkflowDefinition
    inst: WorkflowInstance
    steps: dict[str, StepInstance]
    cancel: Future[None] = field(default_factory=Future)
    done: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    completion_order: list[str] = field(default_factory=list)  # completed: compensated on failure
    running_contexts: dict[str, StepContext] = field(default_factory=dict)
    #: set (under ``lock``) by whoever takes charge of the run: its runner, or a cancel
    #: that arrives while a background run still waits in the pool's queue
    claimed: bool = False

    @property
    def cancelled(self) -> bool:
        return self.cancel.done()


class _StepOutcome:
    __slots__ = ("step_id", "error", "required", "cancelled")

    def __init__(self, step_id: str, error: StepFailedError | None = None, required: bool = True, cancelled: bool = False) -> None:
        self.step_id = step_id
        self.error = error
        self.required = required
        self.cancelled = cancelled


class Orchestrator:
    """Runs registered workflows in this process, synchronously or in the background."""

    def __init__(self, state_manager: StateManager, async_workers: int = 10) -> None:
        if isinstance(async_workers, bool) or not isinstance(async_workers, int) or async_workers < 1:
            raise ValidationError(f"async_workers must be a positive int, got {async_workers!r}")
        self.state_manager = state_manager
        self.async_workers = async_workers
        self._definitions: dict[str, WorkflowDefinition] = {}
        self._lock = threading.Lock()
        self._runs: dict[str, _Run] = {}
        self._step_pool = ThreadPoolExecutor(async_workers, thread_name_prefix="orchwf-async-step")
        self._runner_pool = ThreadPoolExecutor(async_workers, thread_name_prefix="orchwf-workflow")
        self._closed = False

    # -- definitions --------------------------------------------------------------------

    def register_workflow(self, definition: WorkflowDefinition) -> None:
        """Validate and register; a definition with the same ID is replaced (as in the Go ORCHWF package)."""
        validate_definition(definition)
        with self._lock:
            self._definitions[definition.id] = definition

    def get_workflow(self, workflow_id: str) -> WorkflowDefinition:
        with self._lock:
            try:
                return self._definitions[workflow_id]
            except (KeyError, TypeError):
                raise WorkflowNotFoundError(str(workflow_id)) from None

    @property
    def workflows(self) -> list[WorkflowDefinition]:
        with self._lock:
            return list(self._definitions.values())

    # -- starting -----------------------------------------------------------------------

    def start_workflow(
        self, workflow_id: str, input: Mapping[str, Any] | None, metadata: Mapping[str, Any] | None = None
    ) -> WorkflowResult:
        """Run to the end and return the result, successful or not.

        Raises only when the call itself is wrong: unknown workflow, invalid input.
        """
        self._check_open()
        definition = self.get_workflow(workflow_id)
        run = self._create(definition, input, metadata)
        return self._execute(run)

    def start_workflow_async(
        self, workflow_id: str, input: Mapping[str, Any] | None, metadata: Mapping[str, Any] | None = None
    ) -> str:
        """Persist the instance, run it on the background pool, return its ID at once."""
        self._check_open()
        definition = self.get_workflow(workflow_id)
        run = self._create(definition, input, metadata)
        with self._lock:  # visible to cancel_workflow and wait while still queued
            self._runs[run.inst.id] = run
        self._runner_pool.submit(self._execute_in_background, run)
        return run.inst.id

    def resume_workflow(self, instance_id: str) -> WorkflowResult:
        """Re-run the failed, cancelled and pending steps; completed steps keep their outputs."""
        self._check_open()
        inst = self.state_manager.get_workflow(instance_id)
        if inst.status == WorkflowStatus.COMPLETED:
            return WorkflowResult(True, inst, dict(inst.output), None, utcnow() - inst.started_at)
        if inst.run_mode == "daemon":
            raise InvalidStateError(
                f"workflow {instance_id} is run by orchwf-worker; resume it with Client.resume_workflow"
            )
        with self._lock:
            if instance_id in self._runs:
                raise InvalidStateError(f"workflow {instance_id} is running")
        if inst.status not in (WorkflowStatus.FAILED, WorkflowStatus.CANCELLED, WorkflowStatus.PENDING):
            raise InvalidStateError(f"workflow {instance_id} is {inst.status.value}; only failed, cancelled or pending instances can be resumed")
        definition = self.get_workflow(inst.workflow_id)
        run = self._prepare_resume(definition, inst)
        return self._execute(run)

    # -- inspecting and controlling -----------------------------------------------------

    def get_workflow_status(self, instance_id: str) -> WorkflowInstance:
        return self.state_manager.get_workflow(instance_id)

    def list_workflows(
        self, filters: Mapping[str, Any] | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[list[WorkflowInstance], int]:
        return self.state_manager.list_workflows(filters, limit, offset)

    def get_workflow_events(self, instance_id: str) -> list[WorkflowEvent]:
        return self.state_manager.get_workflow_events(instance_id)

    def cancel_workflow(self, instance_id: str) -> None:
        """Stop scheduling steps, signal running ones, end the instance ``cancelled``.

        Cancelling a cancelled instance does nothing; a completed or failed one is an
        InvalidStateError.
        """
        with self._lock:
            run = self._runs.get(instance_id)
        if run is not None:
            if not run.cancel.done():
                try:
                    run.cancel.set_result(None)
                except Exception:  # noqa: BLE001 - already set by a concurrent cancel
                    pass
            with run.lock:
                for ctx in run.running_contexts.values():
                    ctx.cancelled.set()
                queued = not run.claimed
                run.claimed = True
            if queued:
                # still waiting for a runner: end it here; the runner will skip it
                try:
                    self._finish_cancelled(run)
                finally:
                    with self._lock:
                        self._runs.pop(instance_id, None)
                    run.done.set()
                return
            # The run stops waiting on its steps at once; wait for it to record the end.
            if threading.current_thread().name.startswith("orchwf-step-"):
                return  # called from inside one of this run's steps: do not wait on ourselves
            run.done.wait()
            return
        inst = self.state_manager.get_workflow(instance_id)
        if inst.status == WorkflowStatus.CANCELLED:
            return
        if inst.status.is_terminal:
            raise InvalidStateError(f"workflow {instance_id} is already {inst.status.value}")
        if inst.run_mode == "daemon":
            raise InvalidStateError(
                f"workflow {instance_id} is run by orchwf-worker; cancel it with Client.cancel_workflow"
            )

        def write() -> None:
            for step in inst.steps:
                if not step.status.is_terminal:
                    step.status = StepStatus.CANCELLED
                    step.completed_at = utcnow()
                    self.state_manager.save_step(step)
            self.state_manager.update_workflow_status(instance_id, WorkflowStatus.CANCELLED)
            self._event(inst.id, Event.WORKFLOW_CANCELLED, {})

        self.state_manager.with_transaction(write)

    def wait(self, instance_id: str, timeout: float | None = None) -> WorkflowInstance:
        """Block until the instance is terminal; raise TimeoutError when ``timeout`` runs out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            run = self._runs.get(instance_id)
        if run is not None:
            if not run.done.wait(timeout):
                raise TimeoutError(f"workflow {instance_id} did not finish within {timeout}s")
        delay = 0.005
        while True:
            inst = self.state_manager.get_workflow(instance_id)
            if inst.status.is_terminal:
                return inst
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"workflow {instance_id} did not finish within {timeout}s")
            with self._lock:
                run = self._runs.get(instance_id)
            if run is not None:
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                run.done.wait(remaining)
            else:
                time.sleep(delay)
                delay = min(delay * 2, 0.25)

    def shutdown(self, wait: bool = True) -> None:
        """Refuse new starts; with ``wait``, block until background workflows finish."""
        self._closed = True
        self._runner_pool.shutdown(wait=wait)
        self._step_pool.shutdown(wait=wait)

    def __enter__(self) -> Orchestrator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(wait=True)

    # -- internals: creation ------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidStateError("orchestrator is shut down")

    def _create(
        self, definition: WorkflowDefinition, input: Mapping[str, Any] | None, metadata: Mapping[str, Any] | None
    ) -> _Run:
        data = check_json_object(input, "input")
        meta = check_json_object(metadata, "metadata")
        trace_id, correlation_id, business_id = resolve_ids(meta)
        instance_id, now = new_instance_id()
        inst = WorkflowInstance(
            id=instance_id,
            workflow_id=definition.id,
            status=WorkflowStatus.PENDING,
            input=data,
            metadata=meta,
            trace_id=trace_id,
            correlation_id=correlation_id,
            business_id=business_id,
            started_at=now,
            created_at=now,
            updated_at=now,
        )
        steps = {
            s.id: StepInstance(
                id=new_id(),
                step_id=s.id,
                workflow_inst_id=inst.id,
                execution_order=i,
                priority=s.priority,
            )
            for i, s in enumerate(definition.steps)
        }

        def write() -> None:
            self.state_manager.save_workflow(inst)
            for step in steps.values():
                self.state_manager.save_step(step)
            self._event(inst.id, Event.WORKFLOW_STARTED, {"workflow_id": definition.id})

        self.state_manager.with_transaction(write)
        inst.steps = list(steps.values())
        return _Run(definition=definition, inst=inst, steps=steps)

    def _prepare_resume(self, definition: WorkflowDefinition, inst: WorkflowInstance) -> _Run:
        # A completed step whose compensator ran (its effect was undone) runs again, as in
        # the daemon (orchwf_resume_workflow); its compensator runs again if this run fails.
        compensated = {
            e.step_inst_id
            for e in self.state_manager.get_workflow_events(inst.id)
            if e.event_type in (Event.STEP_COMPENSATED.value, Event.STEP_COMPENSATION_FAILED.value)
            and (e.step_inst_id is not None)
        }
        existing = {s.step_id: s for s in inst.steps}
        steps: dict[str, StepInstance] = {}
        for i, sdef in enumerate(definition.steps):
            step = existing.get(sdef.id)
            if step is None:
                step = StepInstance(
                    id=new_id(), step_id=sdef.id, workflow_inst_id=inst.id, execution_order=i, priority=sdef.priority
                )
            elif step.status not in (StepStatus.COMPLETED, StepStatus.SKIPPED) or (
                    step.status == StepStatus.COMPLETED and step.id in compensated):
                if step.status == StepStatus.COMPLETED:
                    step.output = {}
                step.status = StepStatus.PENDING
                step.error = None
                step.completed_at = None
                step.retry_count = 0
            steps[sdef.id] = step
        run = _Run(definition=definition, inst=inst, steps=steps)
        # Rebuild output and context from completed steps, in completion order.
        inst.output, inst.context = {}, {}
        completed = sorted(
            (s for s in steps.values() if s.status == StepStatus.COMPLETED),
            key=lambda s: (s.completed_at or inst.started_at, s.execution_order),
        )
        for s in completed:
            merge_step_output(inst.output, inst.context, s.step_id, s.output)
            run.completion_order.append(s.step_id)
        inst.status = WorkflowStatus.PENDING
        inst.error = None
        inst.completed_at = None
        inst.retry_count += 1
        inst.last_retry_at = utcnow()

        def write() -> None:
            self.state_manager.save_workflow(inst)
            for step in steps.values():
                self.state_manager.save_step(step)
            self._event(inst.id, Event.WORKFLOW_RESUMED, {"retry_count": inst.retry_count})

        self.state_manager.with_transaction(write)
        inst.steps = list(steps.values())
        return run

    # -- internals: running -------------------------------------------------------------

    def _execute_in_background(self, run: _Run) -> None:
        with run.lock:
            if run.claimed:
                return  # cancelled while queued
            run.claimed = True
        try:
            self._execute(run)
        except Exception as exc:  # noqa: BLE001 - a background run has no caller to raise to
            log.exception("workflow %s crashed in the background", run.inst.id)
            # Record the crash if the store lets us, so wait() and listings do not see a
            # workflow that runs forever.
            try:
                self.state_manager.update_workflow_error(run.inst.id, f"orchestrator error: {exc}")
            except Exception:  # noqa: BLE001 - the store itself is what failed
                log.exception("could not record the failure of workflow %s", run.inst.id)

    def _execute(self, run: _Run) -> WorkflowResult:
        inst = run.inst
        with run.lock:
            run.claimed = True
        with self._lock:
            self._runs[inst.id] = run
        started = time.monotonic()
        try:
            inst.status = WorkflowStatus.RUNNING
            self.state_manager.update_workflow_status(inst.id, WorkflowStatus.RUNNING)
            failure = self._run_waves(run)
            if run.cancelled:
                self._finish_cancelled(run)
                error: BaseException | None = WorkflowCancelledError(f"workflow {inst.id} was cancelled")
            elif failure is not None:
                self._finish_failed(run, failure)
                error = failure
            else:
                self._finish_completed(run, started)
                error = None
            duration = timedelta(seconds=time.monotonic() - started)
            final = self.state_manager.get_workflow(inst.id)
            return WorkflowResult(error is None, final, dict(inst.output), error, duration)
        finally:
            with self._lock:
                self._runs.pop(inst.id, None)
            run.done.set()

    def _run_waves(self, run: _Run) -> StepFailedError | None:
        definition = run.definition
        done = {sid for sid, s in run.steps.items() if s.status in (StepStatus.COMPLETED, StepStatus.SKIPPED)}
        while not run.cancelled:
            ready = [
                s for s in definition.steps
                if s.id not in done and all(d in done for d in s.dependencies)
            ]
            if not ready:
                return None
            ready = sorted_by_priority(ready)
            for sdef in (s for s in ready if not s.is_async):
                if run.cancelled:
                    return None
                outcome = self._execute_step(run, sdef)
                if outcome.cancelled:
                    return None
                if outcome.error is not None and outcome.required:
                    return outcome.error
                done.add(sdef.id)
            async_steps = [s for s in ready if s.is_async]
            futures = [self._step_pool.submit(self._execute_step, run, sdef) for sdef in async_steps]
            first_failure: StepFailedError | None = None
            for sdef, fut in zip(async_steps, futures, strict=True):
                outcome = fut.result()
                if outcome.error is not None and outcome.required:
                    first_failure = first_failure or outcome.error
                    # a required failure stops the siblings still running
                    with run.lock:
                        for ctx in run.running_contexts.values():
                            ctx.cancelled.set()
                elif not outcome.cancelled:
                    done.add(sdef.id)
            if first_failure is not None:
                return first_failure
        return None

    def _execute_step(self, run: _Run, sdef: StepDefinition) -> _StepOutcome:
        inst = run.inst
        step = run.steps[sdef.id]
        policy = sdef.policy
        with run.lock:
            deps = [(d, run.steps[d].output) for d in sdef.dependencies]
            data = prepare_step_input(inst.input, deps, inst.context)
        attempt = 0
        delay = sdef.delay  # with_delay: in memory here (the daemon's wait is durable)
        while True:
            attempt += 1
            if delay > 0:
                # wakes early on cancel; wait() (not Future.result) because on Python
                # 3.10 result() raises concurrent.futures.TimeoutError, which is not
                # the builtin TimeoutError
                wait_futures([run.cancel], timeout=delay)
            if run.cancelled:
                return self._step_cancelled(run, step)
            now = utcnow()
            payload: dict[str, Any]
            if attempt == 1:
                step.status = StepStatus.RUNNING
                step.started_at = now
                event, payload = Event.STEP_STARTED, {"step_id": sdef.id}
            else:
                step.status = StepStatus.RETRYING
                event, payload = Event.STEP_RETRY, {"attempt": attempt}
            step.attempts = attempt
            inst.current_step_id = sdef.id
            self._save_step_with_event(step, event, payload)
            ctx = StepContext(
                workflow_instance_id=inst.id,
                step_id=sdef.id,
                attempt=attempt,
                deadline=(now + timedelta(seconds=sdef.timeout)) if sdef.timeout else None,
                metadata=dict(inst.metadata),
                trace_id=inst.trace_id,
                logger=logging.getLogger(f"orchwf.step.{run.definition.id}.{sdef.id}"),
                workflow_id=run.definition.id,
                step_instance_id=step.id,
            )
            with run.lock:
                run.running_contexts[step.id] = ctx
            t0 = time.monotonic()
            try:
                assert sdef.executor is not None
                # each attempt gets its own copy, so step.input stays what was prepared
                output = run_attempt(sdef.executor, ctx, copy.deepcopy(data), sdef.timeout, run.cancel)
            except WorkflowCancelledError:
                return self._step_cancelled(run, step)
            except Exception as exc:  # noqa: BLE001 - any executor error fails the attempt
                step.input = data  # stored with the attempt's result, as the daemon stores it
                step.duration_ms = int((time.monotonic() - t0) * 1000)
                step.error = str(exc) or type(exc).__name__
                decision = decide_failure(policy, sdef.required, exc, step.retry_count)
                if decision.outcome is not Outcome.RETRY:
                    return self._step_failed(run, sdef, step, exc, attempt)
                delay = decision.delay
                step.status = StepStatus.RETRYING
                step.retry_count += 1
                step.last_retry_at = utcnow()
                self._save_step_with_event(step, Event.STEP_ATTEMPT_FAILED, {
                    "error": step.error, "attempt": attempt, "retry_in_seconds": delay})
                continue
            finally:
                with run.lock:
                    run.running_contexts.pop(step.id, None)
            step.input = data
            step.duration_ms = int((time.monotonic() - t0) * 1000)
            return self._step_completed(run, step, output)

    def _step_completed(self, run: _Run, step: StepInstance, output: dict[str, Any]) -> _StepOutcome:
        inst = run.inst
        step.status = StepStatus.COMPLETED
        step.output = output
        step.error = None
        step.completed_at = utcnow()
        with run.lock:
            merge_step_output(inst.output, inst.context, step.step_id, output)
            run.completion_order.append(step.step_id)

            def write() -> None:
                self.state_manager.save_step(step)
                self._event(inst.id, Event.STEP_COMPLETED, {"duration_ms": step.duration_ms}, step.id)
                self.state_manager.save_workflow(inst)

            self.state_manager.with_transaction(write)
        return _StepOutcome(step.step_id)

    def _step_failed(
        self, run: _Run, sdef: StepDefinition, step: StepInstance, error: BaseException, attempts: int
    ) -> _StepOutcome:
        failure = StepFailedError(sdef.id, attempts, error)
        step.status = StepStatus.FAILED if sdef.required else StepStatus.SKIPPED
        step.error = str(error) or type(error).__name__
        step.completed_at = utcnow()

        def write() -> None:
            self.state_manager.save_step(step)
            self._event(run.inst.id, Event.STEP_FAILED, {"error": step.error, "retries": step.retry_count}, step.id)
            if not sdef.required:
                self._event(run.inst.id, Event.STEP_SKIPPED, {"error": step.error}, step.id)

        with run.lock:
            self.state_manager.with_transaction(write)
        return _StepOutcome(sdef.id, failure, sdef.required)

    def _step_cancelled(self, run: _Run, step: StepInstance) -> _StepOutcome:
        step.status = StepStatus.CANCELLED
        step.completed_at = utcnow()
        with run.lock:
            self.state_manager.save_step(step)
        return _StepOutcome(step.step_id, cancelled=True)

    # -- internals: finishing -----------------------------------------------------------

    def _finish_completed(self, run: _Run, started: float) -> None:
        inst = run.inst
        inst.status = WorkflowStatus.COMPLETED
        inst.completed_at = utcnow()
        inst.current_step_id = None
        duration_ms = int((time.monotonic() - started) * 1000)

        def write() -> None:
            self.state_manager.save_workflow(inst)
            self._event(inst.id, Event.WORKFLOW_COMPLETED, {"duration_ms": duration_ms})

        self.state_manager.with_transaction(write)

    def _finish_failed(self, run: _Run, failure: StepFailedError) -> None:
        self._cancel_unfinished_steps(run)
        self._compensate(run)
        inst = run.inst
        inst.status = WorkflowStatus.FAILED
        inst.error = str(failure)
        inst.completed_at = utcnow()

        def write() -> None:
            self.state_manager.save_workflow(inst)
            self._event(inst.id, Event.WORKFLOW_FAILED, {"error": inst.error})

        self.state_manager.with_transaction(write)

    def _finish_cancelled(self, run: _Run) -> None:
        self._cancel_unfinished_steps(run)
        self._compensate(run)
        inst = run.inst
        inst.status = WorkflowStatus.CANCELLED
        inst.completed_at = utcnow()

        def write() -> None:
            self.state_manager.save_workflow(inst)
            self._event(inst.id, Event.WORKFLOW_CANCELLED, {})

        self.state_manager.with_transaction(write)

    def _cancel_unfinished_steps(self, run: _Run) -> None:
        def write() -> None:
            for step in run.steps.values():
                if not step.status.is_terminal:
                    step.status = StepStatus.CANCELLED
                    step.completed_at = utcnow()
                    self.state_manager.save_step(step)

        self.state_manager.with_transaction(write)

    def _compensate(self, run: _Run) -> None:
        """Run the compensators of completed steps (lifecycle.compensation_order: newest
        first); one failure stops none."""
        steps = [run.steps[step_id] for step_id in run.completion_order]
        for step in compensation_order(steps, key=lambda s: (s.completed_at, s.execution_order)):
            step_id = step.step_id
            sdef = run.definition.step(step_id)
            if sdef.compensator is None or step.status != StepStatus.COMPLETED:
                continue
            ctx = StepContext(
                workflow_instance_id=run.inst.id,
                step_id=step_id,
                attempt=1,
                deadline=None,
                metadata=dict(run.inst.metadata),
                trace_id=run.inst.trace_id,
                logger=logging.getLogger(f"orchwf.step.{run.definition.id}.{step_id}"),
                workflow_id=run.definition.id,
                step_instance_id=step.id,
                step_output=dict(step.output),
            )
            try:
                call_executor(sdef.compensator, ctx, copy.deepcopy(step.input))
            except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - recorded, and the others still run
                self._event(run.inst.id, Event.STEP_COMPENSATION_FAILED, {"step_id": step_id, "error": str(exc) or type(exc).__name__}, step.id)
                continue
            self._event(run.inst.id, Event.STEP_COMPENSATED, {"step_id": step_id}, step.id)

    # -- internals: persistence ---------------------------------------------------------

    def _save_step_with_event(self, step: StepInstance, event_type: Event, data: dict[str, Any]) -> None:
        def write() -> None:
            self.state_manager.save_step(step)
            self._event(step.workflow_inst_id, event_type, data, step.id)

        self.state_manager.with_transaction(write)

    def _event(self, workflow_inst_id: str, event_type: Event, data: dict[str, Any], step_inst_id: str | None = None) -> None:
        self.state_manager.save_event(
            WorkflowEvent(
                id=new_id(),
                workflow_inst_id=workflow_inst_id,
                step_inst_id=step_inst_id,
                event_type=event_type.value,
                event_data=data,
            )
        )
