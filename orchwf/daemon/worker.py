"""A worker process: claim ready steps, run them on threads, commit results in batches.

One thread (the main loop) owns the database connection: it claims, finishes and
heartbeats. Executors run on a thread pool and hand their results back through a
queue and a self-pipe. Results that finish in the same loop iteration are committed
by one call of orchwf_finish_steps (a group commit), each fenced by its lease token.
A slot is freed only after its result is committed, so a crash never loses a result
that was reported as done.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import logging
import os
import queue
import select
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from ..db.dsn import redact
from ..errors import StepTimeoutError
from ..semantics import (
    call_executor,
    merge_step_output,
    normalize_output,
    prepare_step_input,
    run_attempt,
)
from ..types import StepContext, StepDefinition, WorkflowDefinition, utcnow
from .config import DaemonConfig
from .proctitle import set_title

log = logging.getLogger("orchwf.worker")

EXIT_RECYCLE = 3  # a step ignored its timeout: replace this process to get rid of the thread
FLUSH_LINGER = 0.002  # seconds a finished result may wait to share a commit with others
FLUSH_MAX = 200       # results per commit at most
COMPENSATE = "$compensate"


@dataclass
class Claim:
    step_inst_id: str
    workflow_inst_id: str
    workflow_id: str
    step_id: str
    lease_token: int
    attempt: int
    retry_count: int
    workflow_input: dict[str, Any]
    metadata: dict[str, Any]
    trace_id: str
    completed: list[list[Any]]
    step_input: dict[str, Any]
    claimed_at: float = field(default_factory=time.monotonic)
    renewed_at: float = field(default_factory=time.monotonic)
    ctx: StepContext | None = None
    timed: bool = False
    input: dict[str, Any] | None = None  # what the executor was given


@dataclass
class Result:
    claim: Claim
    outcome: str  # completed | failed | skipped | retry | release
    output: dict[str, Any] | None = None
    error: str | None = None
    duration_ms: int = 0
    delay: float = 0.0
    committed: bool = False  # a transactional step already wrote its own result (or lost its lease)
    stale: bool = False      # the lease was lost: the result was discarded


class _Stale(Exception):
    """The lease was lost before a transactional step could commit."""


class Worker:
    def __init__(
        self,
        config: DaemonConfig,
        definitions: dict[str, WorkflowDefinition],
        index: int,
        worker_id: str,
        supervisor_id: str,
        wake_fd: int,
        beat_fd: int,
        parent_pid: int,
    ) -> None:
        self.config = config
        self.definitions = definitions
        self.index = index
        self.worker_id = worker_id
        self.supervisor_id = supervisor_id
        self.wake_fd = wake_fd
        self.beat_fd = beat_fd
        self.parent_pid = parent_pid
        self.conn: psycopg.Connection[Any] | None = None
        self.inflight: dict[str, Claim] = {}
        self.unfinished: list[Result] = []  # results waiting to be committed
        self.unfinished_since = 0.0
        self.results: queue.SimpleQueue[Result] = queue.SimpleQueue()
        self.draining = False
        self.quitting = False
        self.tainted = False
        self.drain_deadline = 0.0
        self.more_work = True
        self.next_poll = 0.0
        self.next_heartbeat = 0.0
        self.next_beat = 0.0
        self.reconnect_at = 0.0
        self.reconnect_delay = 0.1
        self.title = ""
        self.workflow_ids = sorted(definitions)
        self._notify_r, self._notify_w = os.pipe()
        os.set_blocking(self._notify_r, False)
        os.set_blocking(self._notify_w, False)
        self.pool = ThreadPoolExecutor(config.concurrency, thread_name_prefix="orchwf-exec")
        self._async_loop: asyncio.AbstractEventLoop | None = None
        self._loop_lock = threading.Lock()
        from . import metrics

        self.metrics = metrics

    # -- process lifecycle ----------------------------------------------------------------

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGQUIT, self._on_quit)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        self._set_title("starting")
        try:
            return self._loop()
        finally:
            self._close()

    def _on_term(self, signum: int, frame: Any) -> None:
        if not self.draining:
            self.draining = True
            self.drain_deadline = time.monotonic() + self.config.shutdown_timeout
        self._poke()

    def _on_quit(self, signum: int, frame: Any) -> None:
        self.quitting = True
        self._poke()

    def _poke(self) -> None:
        try:
            os.write(self._notify_w, b"!")
        except OSError:
            pass

    def _loop(self) -> int:
        while True:
            now = time.monotonic()
            if os.getppid() != self.parent_pid and not self.draining:
                log.warning("worker %s: supervisor is gone; draining", self.worker_id)
                self._on_term(0, None)
            self._collect_results()
            if self.quitting:
                self._release_all("worker stopped at once (SIGQUIT)")
                return 0
            if self.unfinished and self._should_flush(now):
                self._finish()
            if self.draining:
                if not self.inflight:
                    return 0
                if now >= self.drain_deadline:
                    self._release_all("shutdown timeout")
                    return 0
            elif self.tainted:
                if not self.inflight:
                    return EXIT_RECYCLE
            else:
                free = self.config.concurrency - len(self.inflight)
                # Claim in batches: wait for a quarter of the slots to free up while others run.
                batch_ready = free >= max(1, self.config.concurrency // 4) or len(self.inflight) == len(self.unfinished)
                if free > 0 and batch_ready and (self.more_work or now >= self.next_poll):
                    self._claim(free)
            self._heartbeat(now)
            self._beat(now)
            self._update_title()
            self._wait()

    def _should_flush(self, now: float) -> bool:
        """Group commit: flush when nothing else is running, the batch is large, or the
        oldest result has waited FLUSH_LINGER seconds."""
        if self.draining or self.quitting or len(self.unfinished) >= len(self.inflight):
            return True
        if len(self.unfinished) >= FLUSH_MAX:
            return True
        return now - self.unfinished_since >= FLUSH_LINGER

    def _wait(self) -> None:
        now = time.monotonic()
        free = self.config.concurrency - len(self.inflight)
        if self.more_work and free >= max(1, self.config.concurrency // 4) and not self.draining and self.conn is not None:
            timeout = 0.0
        else:
            timeout = max(0.0, min(self.next_poll, self.next_heartbeat, self.next_beat, now + 1.0) - now)
            if self.unfinished:
                flush_at = self.unfinished_since + FLUSH_LINGER if self.conn is not None else self.reconnect_at
                timeout = max(0.0, min(timeout, flush_at - now))
            elif self.conn is None:
                timeout = max(0.0, min(timeout, self.reconnect_at - now))
        try:
            ready, _, _ = select.select([self.wake_fd, self._notify_r], [], [], timeout)
        except InterruptedError:
            return
        for fd in ready:
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                continue
            if fd == self.wake_fd:
                if not data:  # supervisor closed its end: it is gone
                    self.wake_fd = self._notify_r
                    if not self.draining:
                        self._on_term(0, None)
                else:
                    self.more_work = True

    def _close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.execute(
                    sql.SQL("DELETE FROM {} WHERE worker_id = %s").format(self._table("orchwf_workers")),
                    (self.worker_id,),
                )
                self.conn.close()
            except psycopg.Error:
                pass
        self.pool.shutdown(wait=False, cancel_futures=True)

    # -- database -------------------------------------------------------------------------

    def _table(self, name: str) -> sql.Composable:
        return sql.SQL("{}.{}").format(sql.Identifier(self.config.schema), sql.Identifier(name))

    def _db(self) -> psycopg.Connection[Any] | None:
        if self.conn is not None and not self.conn.closed:
            return self.conn
        now = time.monotonic()
        if now < self.reconnect_at:
            return None
        try:
            self.conn = psycopg.connect(
                self.config.dsn,
                autocommit=True,
                connect_timeout=5,
                prepare_threshold=None if not self.config.listen else 5,
                application_name=f"orchwf-worker {self.index}",
            )
            self.conn.execute(
                sql.SQL(
                    "INSERT INTO {} (worker_id, supervisor_id, host, pid, role, queues, workflows, concurrency)"
                    " VALUES (%s, %s, %s, %s, 'worker', %s, %s, %s)"
                    " ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = now()"
                ).format(self._table("orchwf_workers")),
                (self.worker_id, self.supervisor_id, self.config.hostname, os.getpid(),
                 list(self.config.queues), self.workflow_ids, self.config.concurrency),
            )
            self.reconnect_delay = 0.1
            self.more_work = True
            self.metrics.db_connected(True)
            return self.conn
        except psycopg.Error as exc:
            self._db_failed(exc)
            return None

    def _db_failed(self, exc: BaseException) -> None:
        log.warning("worker %s: database error (%s); retrying in %.1fs",
                    self.worker_id, redact(str(exc)).strip(), self.reconnect_delay)
        self.metrics.db_connected(False)
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001 - the connection is being discarded anyway
                pass
        self.conn = None
        self.reconnect_at = time.monotonic() + self.reconnect_delay
        self.reconnect_delay = min(self.reconnect_delay * 2, 5.0)

    def _claim(self, free: int) -> None:
        conn = self._db()
        if conn is None:
            return
        t0 = time.monotonic()
        try:
            rows = conn.execute(
                sql.SQL("SELECT * FROM {}(%s, %s, %s, %s, %s)").format(self._table("orchwf_claim_steps")),
                (self.worker_id, list(self.config.queues), self.workflow_ids, free, self.config.lease_seconds),
            ).fetchall()
        except psycopg.Error as exc:
            self._db_failed(exc)
            return
        now = time.monotonic()
        self.metrics.observe_claim(now - t0, len(rows))
        self.more_work = len(rows) == free
        self.next_poll = now + self.config.idle_poll
        for row in rows:
            claim = Claim(
                step_inst_id=str(row[0]), workflow_inst_id=str(row[1]), workflow_id=row[2], step_id=row[3],
                lease_token=row[4], attempt=row[5], retry_count=row[6], workflow_input=row[7] or {},
                metadata=row[8] or {}, trace_id=row[9] or "", completed=row[10] or [], step_input=row[11] or {},
            )
            self.inflight[claim.step_inst_id] = claim
            self.metrics.step_claimed(claim.workflow_id, claim.step_id)
            self.pool.submit(self._execute, claim)

    def _collect_results(self) -> None:
        while True:
            try:
                result = self.results.get_nowait()
            except queue.Empty:
                return
            if not self.unfinished:
                self.unfinished_since = time.monotonic()
            self.unfinished.append(result)

    def _finish(self) -> None:
        """Commit every collected result in one fenced call (group commit)."""
        pending = [r for r in self.unfinished if not r.committed]
        done_already = [r for r in self.unfinished if r.committed]
        for r in done_already:
            self._retire(r, accepted=not r.stale)
        self.unfinished = pending
        if not pending:
            return
        conn = self._db()
        if conn is None:
            return
        try:
            rows = conn.execute(
                sql.SQL("SELECT * FROM {}(%s, %s, %s, %s::jsonb[], %s, %s, %s, %s::jsonb[])").format(
                    self._table("orchwf_finish_steps")),
                (
                    [r.claim.step_inst_id for r in pending],
                    [r.claim.lease_token for r in pending],
                    [r.outcome for r in pending],
                    [Jsonb(r.output) if r.output is not None else None for r in pending],
                    [r.error for r in pending],
                    [r.duration_ms for r in pending],
                    [r.delay for r in pending],
                    [Jsonb(r.claim.input) if r.claim.input is not None else None for r in pending],
                ),
            ).fetchall()
        except psycopg.Error as exc:
            self._db_failed(exc)
            return
        accepted = {str(row[0]): bool(row[1]) for row in rows}
        self.unfinished = []
        for r in pending:
            self._retire(r, accepted.get(r.claim.step_inst_id, False))
        self.more_work = True  # finishing may have released dependents

    def _retire(self, result: Result, accepted: bool) -> None:
        claim = result.claim
        self.inflight.pop(claim.step_inst_id, None)
        self.metrics.step_finished(claim.workflow_id, claim.step_id, result.outcome, accepted, result.duration_ms)

    def _release_all(self, reason: str) -> None:
        """Give back every claim still running, without counting an attempt."""
        self._collect_results()
        finished = {r.claim.step_inst_id for r in self.unfinished}
        for claim in list(self.inflight.values()):
            if claim.step_inst_id not in finished:
                if claim.ctx is not None:
                    claim.ctx.cancelled.set()
                self.unfinished.append(Result(claim, "release", error=reason))
        for _ in range(3):
            if not self.unfinished:
                break
            self.reconnect_at = 0.0
            self._finish()

    def _heartbeat(self, now: float) -> None:
        if now < self.next_heartbeat:
            return
        interval = self.config.lease_seconds / 3
        self.next_heartbeat = now + interval
        self._check_abandoned()
        due = [c for c in self.inflight.values() if now - c.renewed_at >= interval]
        if not due:
            return
        conn = self._db()
        if conn is None:
            return
        try:
            lost = conn.execute(
                sql.SQL("SELECT * FROM {}(%s, %s, %s, %s)").format(self._table("orchwf_heartbeat")),
                (self.worker_id, [c.step_inst_id for c in due], [c.lease_token for c in due],
                 self.config.lease_seconds),
            ).fetchall()
        except psycopg.Error as exc:
            self._db_failed(exc)
            return
        for c in due:
            c.renewed_at = now
        for (step_inst_id,) in lost:
            claim = self.inflight.get(str(step_inst_id))
            if claim is not None and claim.ctx is not None:
                claim.ctx.cancelled.set()  # its result will be discarded by the fence

    def _check_abandoned(self) -> None:
        """A timed-out sync executor keeps its thread; recycle the process to end it."""
        live = sum(1 for t in threading.enumerate() if t.name.startswith("orchwf-step-"))
        timed = sum(1 for c in self.inflight.values() if c.timed)
        if live > timed and not self.tainted:
            log.warning("worker %s: %d step thread(s) ignored their timeout; recycling this process",
                        self.worker_id, live - timed)
            self.tainted = True

    def _beat(self, now: float) -> None:
        if now < self.next_beat:
            return
        self.next_beat = now + 1.0
        try:
            os.write(self.beat_fd, b".")
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno == errno.EPIPE and not self.draining:
                self._on_term(0, None)

    def _update_title(self) -> None:
        if self.draining:
            state = f"draining, {len(self.inflight)} running"
        elif self.inflight:
            first = next(iter(self.inflight.values()))
            more = f" +{len(self.inflight) - 1}" if len(self.inflight) > 1 else ""
            state = f"running {first.workflow_id}/{first.step_id}{more}"
        elif self.conn is None:
            state = "waiting for database"
        else:
            state = "idle"
        self._set_title(state)
        self.metrics.slots(len(self.inflight), self.config.concurrency)

    def _set_title(self, state: str) -> None:
        title = f"orchwf-worker: worker {self.index} [{state}]"
        if title != self.title:
            self.title = title
            set_title(title)

    # -- running steps (pool threads) -----------------------------------------------------

    def _execute(self, claim: Claim) -> None:
        try:
            result = self._run_step(claim)
        except Exception as exc:  # noqa: BLE001 - a bug here must not lose the claim
            log.exception("worker %s: internal error running %s", self.worker_id, claim.step_id)
            result = Result(claim, "failed", error=f"orchwf internal error: {exc}")
        self.results.put(result)
        self._poke()

    def _run_step(self, claim: Claim) -> Result:
        definition = self.definitions[claim.workflow_id]
        if claim.step_id == COMPENSATE:
            return self._compensate(claim, definition)
        try:
            sdef = definition.step(claim.step_id)
        except KeyError:
            return Result(
                claim, "failed",
                error=f"step {claim.step_id} of workflow {claim.workflow_id} has no executor in this "
                      f"worker's code (definition {definition.version_hash}); deploy the code that defines it",
            )
        completed = {step_id: output for step_id, output in claim.completed}
        context: dict[str, Any] = {}
        for step_id, output in claim.completed:
            merge_step_output({}, context, step_id, output)
        data = prepare_step_input(
            claim.workflow_input, [(d, completed.get(d, {})) for d in sdef.dependencies], context
        )
        now = utcnow()
        ctx = StepContext(
            workflow_instance_id=claim.workflow_inst_id,
            step_id=sdef.id,
            attempt=claim.attempt,
            deadline=(now + timedelta(seconds=sdef.timeout)) if sdef.timeout else None,
            metadata=claim.metadata,
            trace_id=claim.trace_id,
            logger=logging.getLogger(f"orchwf.step.{claim.workflow_id}.{sdef.id}"),
            workflow_id=claim.workflow_id,
            step_instance_id=claim.step_inst_id,
        )
        claim.ctx = ctx
        claim.input = data
        claim.timed = bool(sdef.timeout)
        t0 = time.monotonic()
        try:
            if sdef.transactional:
                return self._run_transactional(claim, sdef, ctx, data, t0)
            assert sdef.executor is not None
            if inspect.iscoroutinefunction(sdef.executor):
                output = self._run_async(sdef, ctx, data)
            elif sdef.timeout:
                output = run_attempt(sdef.executor, ctx, data, sdef.timeout)
            else:
                output = normalize_output(call_executor(sdef.executor, ctx, data), sdef.id)
        except Exception as exc:  # noqa: BLE001 - any executor error fails the attempt
            return self._failure(claim, sdef, exc, t0)
        return Result(claim, "completed", output=output, duration_ms=int((time.monotonic() - t0) * 1000))

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

        return normalize_output(asyncio.run_coroutine_threadsafe(bounded(), self._async_loop).result(), sdef.id)

    def _failure(self, claim: Claim, sdef: StepDefinition, exc: BaseException, t0: float) -> Result:
        duration = int((time.monotonic() - t0) * 1000)
        text = str(exc) or type(exc).__name__
        if isinstance(exc, StepTimeoutError):
            self.metrics.step_timed_out(claim.workflow_id, claim.step_id)
            time.sleep(0.1)  # an async executor is cancelled, not abandoned: give it a moment
            name = f"orchwf-step-{claim.step_id}"
            if any(t.name == name and t.is_alive() for t in threading.enumerate()):
                log.warning("worker %s: step %s ignored its %.3gs timeout; this process will be "
                            "replaced once its other steps finish", self.worker_id, claim.step_id, sdef.timeout)
                self.tainted = True
        policy = sdef.policy
        failures = claim.retry_count + 1
        if policy.is_retryable(exc) and failures < policy.max_attempts:
            return Result(claim, "retry", error=text, duration_ms=duration, delay=policy.backoff(failures))
        return Result(claim, "failed" if sdef.required else "skipped", error=text, duration_ms=duration)

    def _run_transactional(self, claim: Claim, sdef: StepDefinition, ctx: StepContext, data: dict[str, Any], t0: float) -> Result:
        """Run the executor and commit its result in one transaction on ``ctx.conn``."""
        assert sdef.executor is not None
        with psycopg.connect(self.config.dsn, autocommit=False, connect_timeout=5) as conn:
            ctx.conn = conn
            try:
                with conn.transaction():
                    output = normalize_output(call_executor(sdef.executor, ctx, data, sdef.timeout), sdef.id)
                    duration = int((time.monotonic() - t0) * 1000)
                    row = conn.execute(
                        sql.SQL("SELECT accepted FROM {}(%s, %s, %s, %s::jsonb[], %s, %s, %s, %s::jsonb[])").format(
                            self._table("orchwf_finish_steps")),
                        ([claim.step_inst_id], [claim.lease_token], ["completed"], [Jsonb(output)],
                         [None], [duration], [0.0], [Jsonb(data)]),
                    ).fetchone()
                    if not row or not row[0]:
                        raise _Stale()
            except _Stale:
                # The transaction rolled back with the step's own writes: nothing happened.
                return Result(claim, "completed", output=output, duration_ms=duration, committed=True, stale=True)
            finally:
                ctx.conn = None
        return Result(claim, "completed", output=output, duration_ms=duration, committed=True)

    def _compensate(self, claim: Claim, definition: WorkflowDefinition) -> Result:
        """Run the compensators of completed steps, newest first; one failure stops none."""
        with psycopg.connect(self.config.dsn, autocommit=True, connect_timeout=5) as conn:
            rows = conn.execute(
                sql.SQL(
                    "SELECT id, step_id, input, output FROM {} WHERE workflow_inst_id = %s"
                    " AND status = 'completed' AND has_compensator AND step_id <> %s"
                    " ORDER BY completed_at DESC, execution_order DESC"
                ).format(self._table("orchwf_step_instances")),
                (claim.workflow_inst_id, COMPENSATE),
            ).fetchall()
            events = self._table("orchwf_workflow_events")
            for step_inst_id, step_id, step_input, step_output in rows:
                try:
                    sdef = definition.step(step_id)
                except KeyError:
                    continue
                if sdef.compensator is None:
                    continue
                ctx = StepContext(
                    workflow_instance_id=claim.workflow_inst_id, step_id=step_id, attempt=1, deadline=None,
                    metadata=claim.metadata, trace_id=claim.trace_id,
                    logger=logging.getLogger(f"orchwf.step.{claim.workflow_id}.{step_id}"),
                    workflow_id=claim.workflow_id, step_instance_id=str(step_inst_id), step_output=step_output,
                )
                try:
                    call_executor(sdef.compensator, ctx, step_input or {})
                    event, data = "step.compensated", {"step_id": step_id}
                except Exception as exc:  # noqa: BLE001 - recorded; the others still run
                    event, data = "step.compensation_failed", {"step_id": step_id, "error": str(exc) or type(exc).__name__}
                conn.execute(
                    sql.SQL("INSERT INTO {} (workflow_inst_id, step_inst_id, event_type, event_data) VALUES (%s, %s, %s, %s)").format(events),
                    (claim.workflow_inst_id, step_inst_id, event, Jsonb(data)),
                )
        return Result(claim, "completed", output={})


__all__ = ["Worker", "Claim", "Result", "EXIT_RECYCLE"]
