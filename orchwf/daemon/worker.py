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
import concurrent.futures
import errno
import inspect
import logging
import os
import queue
import select
import signal
import threading
import time
import uuid
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
from ..db.connect import connect
from .proctitle import set_title

log = logging.getLogger("orchwf.worker")

EXIT_RECYCLE = 3  # a step ignored its timeout: replace this process to get rid of the thread
QUARANTINE_IDLE = 5.0  # seconds a quarantine worker waits for another suspect before it exits
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
    step_uuid: Any = None  # the ID as the database returned it (a UUID), for parameters

    def __post_init__(self) -> None:
        if self.step_uuid is None:
            self.step_uuid = uuid.UUID(self.step_inst_id)


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


class _Blip(Exception):
    """The database failed around a step (not the step's own code)."""


class _Executors:
    """The threads that run claimed steps: one queue, up to ``size`` threads, started
    on demand. (A ThreadPoolExecutor builds a Future, a lock and a condition for every
    task, which cost a sixth of a worker's own time on a stream of short steps; the
    worker never uses the future: each step reports through Worker.results.)"""

    def __init__(self, size: int, run: Any, name: str) -> None:
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
        quarantine: bool = False,
    ) -> None:
        """``quarantine``: claim suspects only (steps that were running in a process that
        died), one at a time, and exit once none has come for QUARANTINE_IDLE seconds."""
        self.config = config
        self.quarantine = quarantine
        self.idle_since = time.monotonic()
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
        self._poked = False  # a wake-up byte is on its way for results put since the last collect
        self._claim_sql: sql.Composed | None = None
        self._finish_sql: sql.Composed | None = None
        self._finish_claim_sql: sql.Composed | None = None
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
        self.pool = _Executors(config.concurrency, self._execute, "orchwf-exec")
        self._async_loop: asyncio.AbstractEventLoop | None = None
        self._loop_lock = threading.Lock()
        from . import metrics

        self.metrics = metrics

    # -- process lifecycle ----------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """Called by the supervisor in the child while signals are still blocked, so a
        signal sent right after fork reaches these handlers, not the supervisor's."""
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGQUIT, self._on_quit)
        for sig in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)

    def run(self) -> int:
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
                self._finish(now)  # may claim in the same transaction
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
                free = self._claim_budget(now, busy=len(self.inflight) - len(self.unfinished),
                                          free=self.config.concurrency - len(self.inflight))
                if free > 0:
                    self._claim(free)
                if self.quarantine and self._idle_too_long(now):
                    return 0
            self._heartbeat(now)
            self._beat(now)
            self._update_title()
            self._wait()

    def _claim_budget(self, now: float, busy: int, free: int, finishing: bool = False) -> int:
        """How many steps to claim now (0: not now). Claims go in batches: wait for a
        quarter of the slots to free up while others run, unless nothing else runs.
        A finish (``finishing``) may release dependents, so it claims whether or not the
        last claim found more work: in its own transaction that costs one more statement,
        after it a transaction and a round trip, and a released step would wait for both."""
        if self.draining or self.tainted or self.quitting or free <= 0:
            return 0
        if not (finishing or self.more_work or now >= self.next_poll):
            return 0
        if free >= max(1, self.config.concurrency // 4) or busy <= 0:
            return free
        return 0

    def _idle_too_long(self, now: float) -> bool:
        if self.inflight or self.unfinished or self.conn is None:
            self.idle_since = now
            return False
        return now - self.idle_since >= QUARANTINE_IDLE

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
        if self.conn is None:
            # Without a connection only the reconnect and the liveness beat are due: a
            # claim or poll deadline in the past must not turn this into a busy loop.
            timeout = max(0.0, min(self.reconnect_at, self.next_beat, now + 1.0) - now)
        elif self.more_work and free >= max(1, self.config.concurrency // 4) and not self.draining:
            timeout = 0.0
        else:
            timeout = max(0.0, min(self.next_poll, self.next_heartbeat, self.next_beat, now + 1.0) - now)
            if self.unfinished:
                timeout = max(0.0, min(timeout, self.unfinished_since + FLUSH_LINGER - now))
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
        self.pool.shutdown()

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
            self.conn = connect(self.config.dsn, application_name=f"orchwf-worker {self.index}",
                                prepare=self.config.listen)
            self.conn.execute(
                sql.SQL(
                    "INSERT INTO {} (worker_id, supervisor_id, host, pid, role, queues, workflows, concurrency)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = now()"
                ).format(self._table("orchwf_workers")),
                (self.worker_id, self.supervisor_id, self.config.hostname, os.getpid(),
                 "quarantine" if self.quarantine else "worker",
                 list(self.config.queues), self.workflow_ids, self.config.concurrency),
            )
            # A claim whose reply was lost with the old connection is ours in the database
            # but unknown here: give it back. Then renew every lease at once, before a
            # supervisor that reconnected first takes our steps for dead.
            self.conn.execute(
                sql.SQL("SELECT {}(%s, %s)").format(self._table("orchwf_release_orphans")),
                (self.worker_id, list(self.inflight)),
            )
            for claim in self.inflight.values():
                claim.renewed_at = -1e9
            self.next_heartbeat = 0.0
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

    # The hot queries use the binary protocol: arrays of UUIDs, integers and JSON cost
    # half as much to send as text, and the IDs come back as UUIDs, ready to send again.

    def _claim_query(self, free: int) -> tuple[sql.Composed, tuple[Any, ...]]:
        if self._claim_sql is None:
            self._claim_sql = sql.SQL("SELECT * FROM {}(%b, %b, %b, %b, %b, %b)").format(
                self._table("orchwf_claim_steps"))
        return self._claim_sql, (self.worker_id, list(self.config.queues), self.workflow_ids, free,
                                 self.config.lease_seconds, self.quarantine)

    def _claim(self, free: int) -> None:
        conn = self._db()
        if conn is None:
            return
        t0 = time.monotonic()
        try:
            query, params = self._claim_query(free)
            rows = conn.execute(query, params, binary=True).fetchall()
        except psycopg.Error as exc:
            self._db_failed(exc)
            return
        self._claimed(rows, free, t0)

    def _claimed(self, rows: list[Any], free: int, t0: float) -> None:
        """Start the steps of a claim whose transaction has committed."""
        now = time.monotonic()
        # Reset the backoff once a claim works, not on connect: a database that accepts
        # connections but refuses the claim (no privilege, read-only) must not be retried 10x/s.
        self.reconnect_delay = 0.1
        self.metrics.observe_claim(now - t0, len(rows))
        self.more_work = len(rows) == free
        self.next_poll = now + self.config.idle_poll
        for row in rows:
            claim = Claim(
                step_inst_id=str(row[0]), step_uuid=row[0], workflow_inst_id=str(row[1]), workflow_id=row[2], step_id=row[3],
                lease_token=row[4], attempt=row[5], retry_count=row[6], workflow_input=row[7] or {},
                metadata=row[8] or {}, trace_id=row[9] or "", completed=row[10] or [], step_input=row[11] or {},
            )
            self.inflight[claim.step_inst_id] = claim
            self.pool.submit(claim)
        self._count_claims(rows)

    def _collect_results(self) -> None:
        self._poked = False  # before draining: a result put after this line pokes again
        while True:
            try:
                result = self.results.get_nowait()
            except queue.Empty:
                return
            if not self.unfinished:
                self.unfinished_since = time.monotonic()
            self.unfinished.append(result)

    def _finish(self, now: float | None = None) -> None:
        """Commit every collected result in one fenced call (group commit).

        When slots are wanted anyway (``now`` given), the next claim goes in the same
        transaction and round trip, after the finish (orchwf_finish_and_claim): one commit
        for both, no idle gap on the server, and the dependents this finish releases can
        be claimed at once. The claimed steps take the slots of results committed in the
        same transaction, so a slot is still freed only once its result is durable; if the
        transaction fails, neither happened and the results are retried."""
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
        free = 0
        if now is not None:
            busy = len(self.inflight) - len(pending)
            free = self._claim_budget(now, busy=busy, free=self.config.concurrency - busy, finishing=True)
        t0 = time.monotonic()
        claimed: list[Any] | None = None
        try:
            if free > 0:
                rows, claimed = self._finish_and_claim_call(conn, pending, free)
            else:
                rows = self._finish_call(conn, pending)
            done = len(pending)
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError) or conn.closed or conn.broken:
                self._db_failed(exc)
                return
            claimed = None
            done, rows = self._finish_alone(conn, pending)
        accepted = {row[0]: bool(row[1]) for row in rows}
        self.unfinished = pending[done:]
        completed: list[Result] = []
        for r in pending[:done]:
            ok = accepted.get(r.claim.step_uuid, False)
            if ok and r.outcome == "completed":
                self.inflight.pop(r.claim.step_inst_id, None)
                completed.append(r)
            else:
                self._retire(r, ok)
        self._count_completed(completed)
        self.more_work = True  # finishing may have released dependents
        if claimed is not None:
            self._claimed(claimed, free, t0)

    def _finish_args(self, pending: list[Result]) -> tuple[Any, ...]:
        return (
            [r.claim.step_uuid for r in pending],
            [r.claim.lease_token for r in pending],
            [r.outcome for r in pending],
            [Jsonb(r.output) if r.output is not None else None for r in pending],
            [r.error for r in pending],
            [r.duration_ms for r in pending],
            [r.delay for r in pending],
            [Jsonb(r.claim.input) if r.claim.input is not None else None for r in pending],
        )

    def _finish_and_claim_call(self, conn: psycopg.Connection[Any], pending: list[Result],
                               free: int) -> tuple[list[Any], list[Any]]:
        """Returns (result rows, claimed rows shaped like orchwf_claim_steps')."""
        if self._finish_claim_sql is None:
            self._finish_claim_sql = sql.SQL(
                "SELECT * FROM {}(%b, %b, %b, %b::jsonb[], %b, %b, %b, %b::jsonb[], %b, %b, %b, %b, %b, %b)"
            ).format(self._table("orchwf_finish_and_claim"))
        out = conn.execute(self._finish_claim_sql, self._finish_args(pending) + self._claim_query(free)[1],
                           binary=True).fetchall()
        return [r for r in out if r[1] is not None], [(r[0], *r[2:]) for r in out if r[1] is None]

    def _finish_call(self, conn: psycopg.Connection[Any], pending: list[Result]) -> list[Any]:
        if self._finish_sql is None:
            self._finish_sql = sql.SQL("SELECT * FROM {}(%b, %b, %b, %b::jsonb[], %b, %b, %b, %b::jsonb[])").format(
                self._table("orchwf_finish_steps"))
        return conn.execute(self._finish_sql, self._finish_args(pending), binary=True).fetchall()

    def _finish_alone(self, conn: psycopg.Connection[Any], pending: list[Result]) -> tuple[int, list[Any]]:
        """The database refused the batch (an error in a statement, not a lost connection):
        commit each result on its own, so one it refuses cannot hold the others back, and
        fail that one with the reason (retrying it would only hit the same error). Returns
        how many of ``pending`` were dealt with, and their rows."""
        rows: list[Any] = []
        for i, r in enumerate(pending):
            try:
                rows += self._finish_call(conn, [r])
                continue
            except psycopg.Error as exc:
                if isinstance(exc, psycopg.OperationalError) or conn.closed or conn.broken:
                    self._db_failed(exc)
                    return i, rows
                reason = redact(str(exc)).strip().splitlines()[0]
            log.error("worker %s: the database refused the result of step %s of %s (%s); failing the step",
                      self.worker_id, r.claim.step_id, r.claim.workflow_inst_id, reason)
            pending[i] = Result(r.claim, "failed", error=f"orchwf could not record the step's result: {reason}",
                                duration_ms=r.duration_ms)
            try:
                rows += self._finish_call(conn, [pending[i]])
            except psycopg.Error as exc:  # not even that: the lease expires and the rescue decides
                log.error("worker %s: could not fail step %s either (%s)", self.worker_id, r.claim.step_id,
                          redact(str(exc)).strip().splitlines()[0])
                if isinstance(exc, psycopg.OperationalError) or conn.closed or conn.broken:
                    self._db_failed(exc)
                    return i + 1, rows
        return len(pending), rows

    def _count_claims(self, rows: list[Any]) -> None:
        """metrics.step_claimed, one update per (workflow, step) of a batch."""
        counts: dict[tuple[str, str], int] = {}
        for row in rows:
            key = (row[2], row[3])
            counts[key] = counts.get(key, 0) + 1
        for (workflow, step), n in counts.items():
            self.metrics.STEPS_CLAIMED.labels(workflow, step).inc(n)

    def _count_completed(self, results: list[Result]) -> None:
        """metrics.step_finished for accepted completions, with one label lookup per
        (workflow, step) of a batch: the lookup costs more than the update."""
        groups: dict[tuple[str, str], list[int]] = {}
        for r in results:
            groups.setdefault((r.claim.workflow_id, r.claim.step_id), []).append(r.duration_ms)
        for (workflow, step), durations in groups.items():
            self.metrics.STEPS_COMPLETED.labels(workflow, step).inc(len(durations))
            histogram = self.metrics.STEP_DURATION.labels(workflow, step)
            for ms in durations:
                histogram.observe(ms / 1000.0)

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
        role = "quarantine" if self.quarantine else "worker"
        title = f"orchwf-worker: {role} {self.index} [{state}]"
        if title != self.title:
            self.title = title
            set_title(title)

    # -- running steps (pool threads) -----------------------------------------------------

    def _execute(self, claim: Claim) -> None:
        result = Result(claim, "release", error="orchwf internal error")
        try:
            result = self._run_step(claim)
        except BaseException as exc:  # noqa: BLE001 - a bug here must not lose the claim
            log.exception("worker %s: internal error running %s", self.worker_id, claim.step_id)
            result = Result(claim, "failed", error=f"orchwf internal error: {exc!r}")
        finally:
            self.results.put(result)
            if not self._poked:  # one wake-up for a burst of results, not one per result
                self._poked = True
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
        except _Blip as blip:
            # The database failed around a transactional step or a compensation, not the
            # step itself: its writes rolled back, so it goes back to the queue.
            return Result(claim, "release", error=f"database error: {blip}")
        except BaseException as exc:  # noqa: BLE001 - any executor error fails the attempt
            if not isinstance(exc, Exception):  # SystemExit, KeyboardInterrupt, CancelledError
                exc = RuntimeError(f"step raised {type(exc).__name__}: {exc}")
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
        """Run the executor and commit its result in one transaction on ``ctx.conn``.

        Errors of the executor fail the attempt as usual (its writes roll back); errors of
        the database around it (connect, the finish call, the commit) release the step.
        """
        assert sdef.executor is not None
        try:
            conn = connect(self.config.dsn, application_name=f"orchwf-worker {self.index} tx",
                           autocommit=False, prepare=False)
        except psycopg.Error as exc:
            raise _Blip(redact(str(exc)).strip()) from None
        with conn:
            ctx.conn = conn
            output: dict[str, Any] = {}
            duration = 0
            try:
                with conn.transaction():
                    if sdef.timeout and not inspect.iscoroutinefunction(sdef.executor):
                        try:
                            output = run_attempt(sdef.executor, ctx, data, sdef.timeout)
                        except StepTimeoutError:
                            conn.cancel()  # stop the statement the abandoned thread may be running
                            raise
                    else:
                        output = normalize_output(call_executor(sdef.executor, ctx, data, sdef.timeout), sdef.id)
                    duration = int((time.monotonic() - t0) * 1000)
                    try:
                        row = conn.execute(
                            sql.SQL("SELECT accepted FROM {}(%s, %s, %s, %s::jsonb[], %s, %s, %s, %s::jsonb[])").format(
                                self._table("orchwf_finish_steps")),
                            ([claim.step_inst_id], [claim.lease_token], ["completed"], [Jsonb(output)],
                             [None], [duration], [0.0], [Jsonb(data)]),
                        ).fetchone()
                    except psycopg.Error as exc:
                        raise _Blip(redact(str(exc)).strip()) from None
                    if not row or not row[0]:
                        raise _Stale()
            except _Stale:
                # The transaction rolled back with the step's own writes: nothing happened.
                return Result(claim, "completed", output=output, duration_ms=duration, committed=True, stale=True)
            except psycopg.OperationalError as exc:
                raise _Blip(redact(str(exc)).strip()) from None  # the commit itself failed
            finally:
                ctx.conn = None
        return Result(claim, "completed", output=output, duration_ms=duration, committed=True)

    def _compensate(self, claim: Claim, definition: WorkflowDefinition) -> Result:
        """Run the compensators of completed steps, newest first; one failure stops none."""
        try:
            return self._run_compensators(claim, definition)
        except psycopg.Error as exc:
            raise _Blip(redact(str(exc)).strip()) from None

    def _run_compensators(self, claim: Claim, definition: WorkflowDefinition) -> Result:
        with connect(self.config.dsn, application_name=f"orchwf-worker {self.index} compensate") as conn:
            # Steps already compensated since they last completed are skipped: a crash
            # during compensation re-runs it, and each undo runs once.
            rows = conn.execute(
                sql.SQL(
                    "SELECT s.id, s.step_id, s.input, s.output FROM {steps} s WHERE s.workflow_inst_id = %s"
                    " AND s.status = 'completed' AND s.has_compensator AND s.step_id <> %s"
                    " AND NOT EXISTS (SELECT 1 FROM {events} e WHERE e.workflow_inst_id = s.workflow_inst_id"
                    "   AND e.step_inst_id = s.id AND e.event_type IN ('step.compensated', 'step.compensation_failed')"
                    "   AND e.timestamp >= s.completed_at)"
                    " ORDER BY s.completed_at DESC, s.execution_order DESC"
                ).format(steps=self._table("orchwf_step_instances"), events=self._table("orchwf_workflow_events")),
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
                except BaseException as exc:  # noqa: BLE001 - recorded; the others still run
                    event, data = "step.compensation_failed", {"step_id": step_id, "error": str(exc) or type(exc).__name__}
                conn.execute(
                    sql.SQL("INSERT INTO {} (workflow_inst_id, step_inst_id, event_type, event_data) VALUES (%s, %s, %s, %s)").format(events),
                    (claim.workflow_inst_id, step_inst_id, event, Jsonb(data)),
                )
        return Result(claim, "completed", output={})


__all__ = ["Worker", "Claim", "Result", "EXIT_RECYCLE"]
