"""Running claimed steps: executor threads, the shared asyncio loop, transactional steps
and compensation. Each run ends in a Result handed to ``deliver`` (the worker loop's
queue); what a failure leads to is lifecycle.decide_failure's call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

from .. import tracing
from ..client import enqueue_many
from ..db.connect import connect
from ..db.dsn import redact
from ..db.queries import Queries
from ..db.rows import StepResult
from ..errors import ChildWorkflowFailedError, SignalTimeoutError, StepTimeoutError
from ..lifecycle import COMPENSATE_STEP, Event, Outcome, compensation_order, decide_failure
from ..logs import step_log_context
from ..semantics import (
    call_executor,
    merge_step_output,
    normalize_output,
    prepare_step_input,
    run_attempt,
)
from ..types import StepContext, StepDefinition, WorkflowDefinition, utcnow
from . import metrics
from .claim import Claim, Result
from .config import DaemonConfig

log = logging.getLogger("orchwf.worker")


class _Park(Exception):
    """The step waits for the signal ``wait_signal`` (Outcome.WAIT): the report of the
    child workflow ``child_id`` it just enqueued, or a signal another step took first."""

    def __init__(self, wait_signal: str, child_id: str | None = None) -> None:
        super().__init__(wait_signal)
        self.wait_signal = wait_signal
        self.child_id = child_id

    def output(self) -> dict[str, Any]:
        return {"wait_signal": self.wait_signal} | ({"child_instance_id": self.child_id} if self.child_id else {})


class _Reported(Exception):
    """A child workflow failed or was cancelled: the step's attempt fails, in the
    transaction that takes the report."""

    def __init__(self, error: ChildWorkflowFailedError) -> None:
        super().__init__(str(error))
        self.error = error


class _Stale(Exception):
    """The lease was lost before a transactional step could commit."""


class _Blip(Exception):
    """The database failed around a step (not the step's own code)."""


class ExecutorThreads:
    """The threads that run claimed steps: one queue, up to ``size`` threads, started on
    demand. (A ThreadPoolExecutor builds a Future, a lock and a condition for every task,
    which cost a sixth of a worker's own time on a stream of short steps; nothing here
    needs the future: each step reports through ``deliver``.)"""

    def __init__(self, size: int, run: Callable[[Any], None], name: str) -> None:
        self.size, self.run, self.name = size, run, name
        self.tasks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []
        self.idle = 0  # threads waiting for a task, under self.lock
        self.lock = threading.Lock()

    def submit(self, task: Any) -> None:
        # As in ThreadPoolExecutor: use an idle thread if there is one, else start one,
        # up to size. (The count can run one high while every thread is busy and tasks
        # queue up; only at the maximum, where no thread would be started anyway.)
        with self.lock:
            if self.idle > 0:
                self.idle -= 1
                start = False
            else:
                start = len(self.threads) < self.size
        self.tasks.put(task)
        if start:
            thread = threading.Thread(target=self._work, name=f"{self.name}_{len(self.threads)}", daemon=True)
            self.threads.append(thread)
            thread.start()

    def _work(self) -> None:
        while True:
            task = self.tasks.get()
            if task is None:
                return
            self.run(task)
            with self.lock:
                self.idle += 1

    def shutdown(self) -> None:
        """Drop the tasks not started yet and let the threads end."""
        try:
            while True:
                self.tasks.get_nowait()
        except queue.Empty:
            pass
        for _ in self.threads:
            self.tasks.put(None)


class StepRunner:
    def __init__(self, config: DaemonConfig, definitions: dict[str, WorkflowDefinition], worker_id: str,
                 index: int, deliver: Callable[[Result], None]) -> None:
        self.config = config
        self.definitions = definitions
        self.worker_id = worker_id
        self.index = index
        self.deliver = deliver
        self.q = Queries.of(config.schema)
        self.threads = ExecutorThreads(config.concurrency, self._execute, "orchwf-exec")
        self.tainted = False  # a step ignored its timeout: the process must be replaced
        self._async_loop: asyncio.AbstractEventLoop | None = None
        self._loop_lock = threading.Lock()
        self._tx = threading.local()  # each executor thread's connection for transactional steps

    def submit(self, claim: Claim) -> None:
        self.threads.submit(claim)

    def shutdown(self) -> None:
        self.threads.shutdown()

    def abandoned_threads(self, timed_claims: int) -> int:
        """Step threads still alive beyond the claims that have a timeout: executors that
        ignored theirs (a sync thread cannot be stopped; only a new process ends it)."""
        live = sum(1 for t in threading.enumerate() if t.name.startswith("orchwf-step-"))
        return max(0, live - timed_claims)

    # -- one run (on an executor thread) --------------------------------------------------

    def _execute(self, claim: Claim) -> None:
        result = Result(claim, Outcome.RELEASE, error="orchwf internal error")
        row = claim.row
        instance_id = claim.instance_id
        try:
            with (step_log_context(instance_id=instance_id, workflow_id=row.workflow_id, step_id=row.step_id,
                                   attempt=row.attempt, trace_id=row.trace_id),
                  tracing.step_span(row, self.worker_id, instance_id) as span):
                result = self._run(claim)
                if span is not None:
                    tracing.end_step(span, result.outcome.value, result.error, result.exception)
        except BaseException as exc:  # noqa: BLE001 - a bug here must not lose the claim
            log.exception("worker %s: internal error running %s", self.worker_id, claim.step_id)
            result = Result(claim, Outcome.FAILED, error=f"orchwf internal error: {exc!r}")
        finally:
            self.deliver(result)

    def _run(self, claim: Claim) -> Result:
        definition = self.definitions[claim.workflow_id]
        if claim.step_id == COMPENSATE_STEP:
            return self._compensate(claim, definition)
        try:
            sdef = definition.step(claim.step_id)
        except KeyError:
            return Result(
                claim, Outcome.FAILED,
                error=f"step {claim.step_id} of workflow {claim.workflow_id} has no executor in this "
                      f"worker's code (definition {definition.version_hash}); deploy the code that defines it",
            )
        row = claim.row
        completed = row.completed or []
        outputs = {step_id: output for step_id, output in completed}
        context: dict[str, Any] = {}
        for step_id, output in completed:
            merge_step_output({}, context, step_id, output)
        data = prepare_step_input(row.workflow_input or {}, [(d, outputs.get(d, {})) for d in sdef.dependencies],
                                  context)
        now = utcnow()
        ctx = StepContext(
            workflow_instance_id=claim.instance_id,
            step_id=sdef.id,
            attempt=row.attempt,
            deadline=(now + timedelta(seconds=sdef.timeout)) if sdef.timeout else None,
            metadata=row.metadata or {},
            trace_id=row.trace_id or "",
            logger=logging.getLogger(f"orchwf.step.{claim.workflow_id}.{sdef.id}"),
            workflow_id=claim.workflow_id,
            step_instance_id=claim.key,
        )
        claim.ctx = ctx
        claim.input = data
        claim.timed = bool(sdef.timeout)
        t0 = time.monotonic()
        try:
            if sdef.signal is not None:
                return self._run_transactional(claim, replace(sdef, executor=self._receive(claim, sdef)), ctx,
                                               data, t0)
            if sdef.child_workflow is not None:
                return self._run_transactional(claim, replace(sdef, executor=self._child(claim, sdef)), ctx,
                                               data, t0)
            if sdef.transactional:
                return self._run_transactional(claim, sdef, ctx, data, t0)
            assert sdef.executor is not None
            if inspect.iscoroutinefunction(sdef.executor):
                output = self._run_async(sdef, ctx, data)
            elif sdef.timeout:
                output = run_attempt(sdef.executor, ctx, data, sdef.timeout)
            else:
                output = normalize_output(call_executor(sdef.executor, ctx, data), sdef.id)
        except _Blip as blip:
            # The database failed around a transactional step or a compensation, not the
            # step itself: its writes rolled back, so it goes back to the queue.
            return Result(claim, Outcome.RELEASE, error=f"database error: {blip}")
        except BaseException as exc:  # noqa: BLE001 - any executor error fails the attempt
            if not isinstance(exc, Exception):  # SystemExit, KeyboardInterrupt, CancelledError
                exc = RuntimeError(f"step raised {type(exc).__name__}: {exc}")
            return self._failure(claim, sdef, exc, t0)
        return Result(claim, Outcome.COMPLETED, output=output, duration_ms=int((time.monotonic() - t0) * 1000))

    def _failure(self, claim: Claim, sdef: StepDefinition, exc: BaseException, t0: float) -> Result:
        duration = int((time.monotonic() - t0) * 1000)
        if isinstance(exc, StepTimeoutError):
            metrics.step_timed_out(claim.workflow_id, claim.step_id)
            time.sleep(0.1)  # an async executor is cancelled, not abandoned: give it a moment
            name = f"orchwf-step-{claim.step_id}"
            if any(t.name == name and t.is_alive() for t in threading.enumerate()):
                log.warning("worker %s: step %s ignored its %.3gs timeout; this process will be "
                            "replaced once its other steps finish", self.worker_id, claim.step_id, sdef.timeout)
                self.tainted = True
        decision = decide_failure(sdef.policy, sdef.required, exc, claim.row.retry_count)
        return Result(claim, decision.outcome, error=str(exc) or type(exc).__name__, duration_ms=duration,
                      delay=decision.delay, exception=exc)

    def _run_async(self, sdef: StepDefinition, ctx: StepContext, data: dict[str, Any]) -> dict[str, Any]:
        """``async def`` steps share one event loop per worker; a timeout cancels the task."""
        with self._loop_lock:
            if self._async_loop is None:
                self._async_loop = asyncio.new_event_loop()
                threading.Thread(target=self._async_loop.run_forever, name="orchwf-asyncio", daemon=True).start()
        assert sdef.executor is not None
        coroutine = sdef.executor(ctx, data)

        async def bounded() -> Any:
            if not sdef.timeout:
                return await coroutine  # type: ignore[misc]
            try:
                return await asyncio.wait_for(coroutine, sdef.timeout)  # type: ignore[arg-type]
            except asyncio.TimeoutError:
                ctx.cancelled.set()
                raise StepTimeoutError(f"step {sdef.id} timed out after {sdef.timeout:g}s") from None

        future = asyncio.run_coroutine_threadsafe(bounded(), self._async_loop)
        try:
            value = future.result(None if not sdef.timeout else sdef.timeout + 1.0)
        except concurrent.futures.TimeoutError:
            # The coroutine blocks the event loop: cancelling cannot reach it.
            future.cancel()
            ctx.cancelled.set()
            log.warning("worker %s: async step %s blocked its event loop past the timeout; "
                        "this process will be replaced", self.worker_id, sdef.id)
            self.tainted = True
            raise StepTimeoutError(f"step {sdef.id} timed out after {sdef.timeout:g}s") from None
        return normalize_output(value, sdef.id)

    def _run_transactional(self, claim: Claim, sdef: StepDefinition, ctx: StepContext, data: dict[str, Any],
                           t0: float) -> Result:
        """Run the executor and commit its result in one transaction on ``ctx.conn``.

        Errors of the executor fail the attempt as usual (its writes roll back); errors of
        the database around it (connect, the finish call, the commit) release the step.
        """
        assert sdef.executor is not None
        conn = self._tx_connection()
        reusable = False
        try:
            ctx.conn = conn
            output: dict[str, Any] = {}
            duration = 0
            outcome = Outcome.COMPLETED
            error: str | None = None
            delay = 0.0
            try:
                with conn.transaction():
                    try:
                        if sdef.timeout and not inspect.iscoroutinefunction(sdef.executor):
                            try:
                                output = run_attempt(sdef.executor, ctx, data, sdef.timeout)
                            except StepTimeoutError:
                                conn.cancel()  # stop the statement the abandoned thread may be running
                                raise
                        else:
                            output = normalize_output(call_executor(sdef.executor, ctx, data, sdef.timeout),
                                                      sdef.id)
                    except _Park as park:  # the step waits (a child started, a signal taken)
                        outcome, output = Outcome.WAIT, park.output()
                    except _Reported as failed:
                        # A child's failure, taken in this transaction: the failure is
                        # committed with it, so the next attempt starts a new child.
                        decision = decide_failure(sdef.policy, sdef.required, failed.error, claim.row.retry_count)
                        outcome, error, delay, output = decision.outcome, str(failed.error), decision.delay, {}
                    duration = int((time.monotonic() - t0) * 1000)
                    try:
                        acks = self.q.finish_steps(conn, [StepResult(
                            claim.step_uuid, claim.row.lease_token, outcome.value, output, error,
                            duration, delay, data)])
                    except psycopg.Error as exc:
                        raise _Blip(redact(str(exc)).strip()) from None
                    if not acks.get(claim.step_uuid):
                        raise _Stale()
            except _Stale:
                # The transaction rolled back with the step's own writes: nothing happened.
                reusable = True
                return Result(claim, outcome, output=output, duration_ms=duration, committed=True, stale=True)
            except psycopg.OperationalError as exc:
                raise _Blip(redact(str(exc)).strip()) from None  # the commit itself failed
            reusable = True
        finally:
            ctx.conn = None
            if not reusable:
                # An error of the step or of the database, or a timeout whose abandoned
                # thread may still use it: never lend this connection again.
                self._drop_tx_connection()
        return Result(claim, outcome, output=output, error=error, duration_ms=duration, delay=delay,
                      committed=True)

    def _tx_connection(self) -> psycopg.Connection[Any]:
        """This executor thread's connection for transactional steps, opened on first use
        and kept between its steps: opening one per step (about 4 ms, and its session's
        first calls of the SQL functions planned again) capped such steps, and signals
        consumed by workers, at about 70 a second. Only a connection that ended its last
        step idle and without an error is lent again."""
        conn: psycopg.Connection[Any] | None = getattr(self._tx, "conn", None)
        if conn is not None and not conn.closed and conn.info.transaction_status == TransactionStatus.IDLE:
            return conn
        self._drop_tx_connection()
        try:
            conn = connect(self.config.dsn, application_name=f"orchwf-worker {self.index} tx",
                           autocommit=False, prepare=False)
        except psycopg.Error as exc:
            raise _Blip(redact(str(exc)).strip()) from None
        self._tx.conn = conn
        return conn

    def _drop_tx_connection(self) -> None:
        conn = getattr(self._tx, "conn", None)
        self._tx.conn = None
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                pass

    def _receive(self, claim: Claim, sdef: StepDefinition) -> Callable[[StepContext, dict[str, Any]], Any]:
        """A wait_for_signal step's executor: take the oldest waiting signal in the
        transaction that completes the step (exactly once: a fenced-out finish rolls the
        take back); none means the step was made ready by its timeout."""
        name = sdef.signal
        assert name is not None

        def receive(ctx: StepContext, data: dict[str, Any]) -> dict[str, Any]:
            assert ctx.conn is not None
            payload = self.q.consume_signal(ctx.conn, claim.instance_id, claim.step_uuid, name)
            if payload is None:
                if not sdef.signal_timeout:
                    raise _Park(name)  # another step of the instance took it: wait for the next
                raise SignalTimeoutError(f"no signal {name!r} within {sdef.signal_timeout:g}s")
            return payload

        return receive

    def _child(self, claim: Claim, sdef: StepDefinition) -> Callable[[StepContext, dict[str, Any]], Any]:
        """A child_workflow_step's executor. Without a report waiting: enqueue the child
        and park the step (_Park: the finish records 'wait' in the same transaction, so
        there is a child exactly when the step waits for it). The child, once finished,
        reports with a signal of a name unique to it, which makes the step ready
        (orchwf_report_to_parents); then: take the report, and complete with the child's
        output or fail with its error, in that same transaction (_Reported), so a retry
        starts a new child and a crash before the commit takes the report again."""
        workflow = sdef.child_workflow
        assert workflow is not None

        def run_child(ctx: StepContext, data: dict[str, Any]) -> dict[str, Any]:
            assert ctx.conn is not None
            report = self.q.consume_signal(ctx.conn, claim.instance_id, claim.step_uuid, None)
            if report is None:
                name = f"orchwf:child:{claim.step_uuid}:{uuid.uuid4().hex}"
                source = data if sdef.child_input_from is None else dict(data.get(sdef.child_input_from) or {})
                metadata = {"orchwf_parent": claim.instance_id, "orchwf_parent_step": sdef.id,
                            "orchwf_parent_signal": name}
                if claim.row.trace_id:
                    metadata["trace_id"] = claim.row.trace_id
                [child] = enqueue_many(ctx.conn, workflow, [source], metadata=metadata, schema=self.config.schema)
                raise _Park(name, child)
            if report.get("status") == "completed":
                return dict(report.get("output") or {})
            raise _Reported(ChildWorkflowFailedError(
                f"child workflow {report.get('child_instance_id')} {report.get('status')}: "
                f"{report.get('error') or 'no error given'}"))

        return run_child

    # -- compensation ---------------------------------------------------------------------

    def _compensate(self, claim: Claim, definition: WorkflowDefinition) -> Result:
        """Run the compensators of completed steps (lifecycle.compensation_order); one
        failure stops none. Each writes its event at once, so a crash halfway re-runs only
        the ones not done."""
        try:
            with connect(self.config.dsn, application_name=f"orchwf-worker {self.index} compensate") as conn:
                steps = self.q.steps_to_compensate(conn, claim.instance_id)
                for step in compensation_order(steps, key=lambda s: (s.completed_at, s.execution_order)):
                    try:
                        sdef = definition.step(step.step_id)
                    except KeyError:
                        continue
                    if sdef.compensator is None:
                        continue
                    ctx = StepContext(
                        workflow_instance_id=claim.instance_id, step_id=step.step_id, attempt=1, deadline=None,
                        metadata=claim.row.metadata or {}, trace_id=claim.row.trace_id or "",
                        logger=logging.getLogger(f"orchwf.step.{claim.workflow_id}.{step.step_id}"),
                        workflow_id=claim.workflow_id, step_instance_id=str(step.step_inst_id),
                        step_output=step.output,
                    )
                    try:
                        call_executor(sdef.compensator, ctx, step.input or {})
                        event, data = Event.STEP_COMPENSATED, {"step_id": step.step_id}
                    except BaseException as exc:  # noqa: BLE001 - recorded; the others still run
                        event, data = Event.STEP_COMPENSATION_FAILED, {
                            "step_id": step.step_id, "error": str(exc) or type(exc).__name__}
                    self.q.record_event(conn, claim.instance_id, step.step_inst_id, event.value, data)
        except psycopg.Error as exc:
            return Result(claim, Outcome.RELEASE, error=f"database error: {redact(str(exc)).strip()}")
        return Result(claim, Outcome.COMPLETED, output={})
