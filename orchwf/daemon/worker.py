"""A worker process's loop: claim ready steps, hand them to the runner, commit results in
batches, renew leases, and leave when told to.

One thread (this loop) owns the database connection (protocol.py): it claims, finishes
and heartbeats. Executors run on the runner's threads (runner.py) and hand their results
back through a queue and a self-pipe. Results that finish in the same loop iteration are
committed by one call (a group commit), each fenced by its lease token. A slot is freed
only after its result is committed, so a crash never loses a result that was reported
as done.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import select
import signal
import time
from typing import Any

import psycopg

from ..db.dsn import redact
from ..db.rows import ClaimedStep
from ..lifecycle import COMPENSATE_STEP, Outcome
from ..types import WorkflowDefinition
from . import metrics
from .claim import Claim, Result
from .config import DaemonConfig
from .proctitle import set_title
from .protocol import RefusedBatch, WorkerProtocol
from .runner import StepRunner

log = logging.getLogger("orchwf.worker")

EXIT_RECYCLE = 3  # a step ignored its timeout: replace this process to get rid of the thread
RATE_LIMITS_EVERY = 5.0  # seconds between two reads of the rate limits of the worker's queues
RATE_POLL_FLOOR = 0.02  # a rate-limited queue is polled at most this often
QUARANTINE_IDLE = 5.0  # seconds a quarantine worker waits for another suspect before it exits
# Group commit. Results that finish together (a claim of short steps) share one commit:
# a result waits while others keep arriving, for FLUSH_LINGER seconds at most. A result
# after which nothing arrives for FLUSH_QUIET seconds is committed then: a lone result of
# a longer step does not wait for company that is not coming (it is what frees its
# concurrency key's slot for the next step; docs/benchmarks.md, "Group commit's quiet gap").
FLUSH_LINGER = 0.002
FLUSH_QUIET = 0.0002
FLUSH_MAX = 200  # results per commit at most


def flush_due(now: float, unfinished: int, inflight: int, oldest_at: float, latest_at: float,
              stopping: bool = False) -> bool:
    """Whether to commit the ``unfinished`` results now (``inflight`` counts them too):
    when nothing else is running, the batch is full, the worker stops, the oldest result
    (collected at ``oldest_at``) has waited FLUSH_LINGER, or none has arrived since
    ``latest_at`` for FLUSH_QUIET."""
    if stopping or unfinished >= inflight or unfinished >= FLUSH_MAX:
        return True
    return now - oldest_at >= FLUSH_LINGER or now - latest_at >= FLUSH_QUIET


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
        self.index = index
        self.worker_id = worker_id
        self.wake_fd = wake_fd
        self.beat_fd = beat_fd
        self.parent_pid = parent_pid
        self.inflight: dict[str, Claim] = {}
        self.unfinished: list[Result] = []  # results waiting to be committed
        self.unfinished_since = 0.0  # when the oldest uncommitted result was collected
        self.last_result_at = 0.0     # when the latest one was
        self.results: queue.SimpleQueue[Result] = queue.SimpleQueue()
        self._poked = False  # a wake-up byte is on its way for results put since the last collect
        self.draining = False
        self.quitting = False
        self.drain_deadline = 0.0
        self.more_work = True
        self.next_poll = 0.0
        self.rate_poll: float | None = None  # poll this often: one of the queues is rate limited
        self.next_rate_check = 0.0
        self.next_heartbeat = 0.0
        self.next_beat = 0.0
        self.title = ""
        self._notify_r, self._notify_w = os.pipe()
        os.set_blocking(self._notify_r, False)
        os.set_blocking(self._notify_w, False)
        self.db = WorkerProtocol(config, worker_id, supervisor_id, index, sorted(definitions), quarantine,
                                 on_connection=metrics.db_connected,
                                 versions=[d.version_hash for d in definitions.values()])
        self.runner = StepRunner(config, definitions, worker_id, index, self._deliver)

    @property
    def tainted(self) -> bool:
        return self.runner.tainted

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
            self.db.close()
            self.runner.shutdown()

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

    def _deliver(self, result: Result) -> None:
        """From a runner thread: a result for the loop."""
        self.results.put(result)
        if not self._poked:  # one wake-up for a burst of results, not one per result
            self._poked = True
            self._poke()

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
            self._check_rate_limits(now)
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
        if self.inflight or self.unfinished or self.db.conn is None:
            self.idle_since = now
            return False
        return now - self.idle_since >= QUARANTINE_IDLE

    def _should_flush(self, now: float) -> bool:
        return flush_due(now, len(self.unfinished), len(self.inflight), self.unfinished_since,
                         self.last_result_at, stopping=self.draining or self.quitting)

    def _wait(self) -> None:
        now = time.monotonic()
        free = self.config.concurrency - len(self.inflight)
        if self.db.conn is None:
            # Without a connection only the reconnect and the liveness beat are due: a
            # claim or poll deadline in the past must not turn this into a busy loop.
            timeout = max(0.0, min(self.db.reconnect_at, self.next_beat, now + 1.0) - now)
        elif self.more_work and free >= max(1, self.config.concurrency // 4) and not self.draining:
            timeout = 0.0
        else:
            timeout = max(0.0, min(self.next_poll, self.next_heartbeat, self.next_beat, now + 1.0) - now)
            if self.unfinished:
                timeout = max(0.0, min(timeout, self.unfinished_since + FLUSH_LINGER - now,
                                       self.last_result_at + FLUSH_QUIET - now))
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

    # -- the database ---------------------------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any] | None:
        conn, new = self.db.connection(self.inflight)
        if new:
            for claim in self.inflight.values():  # renew every lease at once
                claim.renewed_at = -1e9
            self.next_heartbeat = 0.0
            self.more_work = True
        return conn

    def _claim(self, free: int) -> None:
        conn = self._connection()
        if conn is None:
            return
        t0 = time.monotonic()
        rows = self.db.claim(conn, free)
        if rows is not None:
            self._claimed(rows, free, t0)

    def _claimed(self, rows: list[ClaimedStep], free: int, t0: float) -> None:
        """Start the steps of a claim whose transaction has committed."""
        now = time.monotonic()
        self.db.answered()
        metrics.observe_claim(now - t0, len(rows))
        self.more_work = len(rows) == free
        self.next_poll = now + min(self.config.idle_poll, self.rate_poll or self.config.idle_poll)
        for row in rows:
            claim = Claim(row)
            self.inflight[claim.key] = claim
            self.runner.submit(claim)
        # the compensation pseudo-step is no step of the user's: no step metrics, as no step events
        metrics.steps_claimed([(r.workflow_id, r.step_id) for r in rows if r.step_id != COMPENSATE_STEP])

    def _collect_results(self) -> None:
        self._poked = False  # before draining: a result put after this line pokes again
        while True:
            try:
                result = self.results.get_nowait()
            except queue.Empty:
                return
            self.last_result_at = time.monotonic()
            if not self.unfinished:
                self.unfinished_since = self.last_result_at
            self.unfinished.append(result)

    def _finish(self, now: float | None = None) -> None:
        """Commit every collected result in one fenced call (group commit).

        When slots are wanted anyway (``now`` given), the next claim goes in the same
        transaction and round trip, after the finish: one commit for both, no idle gap on
        the server, and the dependents this finish releases can be claimed at once. The
        claimed steps take the slots of results committed in the same transaction, so a
        slot is still freed only once its result is durable; if the transaction fails,
        neither happened and the results are retried."""
        pending = [r for r in self.unfinished if not r.committed]
        for r in self.unfinished:
            if r.committed:
                self._retire(r, accepted=not r.stale)
        self.unfinished = pending
        if not pending:
            return
        conn = self._connection()
        if conn is None:
            return
        free = 0
        if now is not None:
            busy = len(self.inflight) - len(pending)
            free = self._claim_budget(now, busy=busy, free=self.config.concurrency - busy, finishing=True)
        t0 = time.monotonic()
        claimed: list[ClaimedStep] | None = None
        try:
            reply = self.db.finish(conn, [r.row() for r in pending], free)
            if reply is None:
                return  # the connection failed: retried after the reconnect
            acks, claimed = reply
            done = len(pending)
        except RefusedBatch:
            done, acks = self._finish_alone(conn, pending)
            free = 0
        self.unfinished = pending[done:]
        completed: list[Result] = []
        for r in pending[:done]:
            ok = acks.get(r.claim.step_uuid, False)
            if ok and r.outcome is Outcome.COMPLETED:
                self.inflight.pop(r.claim.key, None)
                completed.append(r)
            else:
                self._retire(r, ok)
        metrics.steps_completed([(r.claim.workflow_id, r.claim.step_id, r.duration_ms) for r in completed
                                 if r.claim.step_id != COMPENSATE_STEP])
        self.more_work = True  # finishing may have released dependents
        if claimed is not None and free > 0:
            self._claimed(claimed, free, t0)

    def _finish_alone(self, conn: psycopg.Connection[Any], pending: list[Result]) -> tuple[int, dict[Any, bool]]:
        """The database refused the batch (an error in a statement, not a lost connection):
        commit each result on its own, so one it refuses cannot hold the others back, and
        fail that one with the reason (retrying it would only hit the same error). Returns
        how many of ``pending`` were dealt with, and their acknowledgements."""
        acks: dict[Any, bool] = {}
        for i, r in enumerate(pending):
            try:
                got = self.db.finish_one(conn, r.row())
                if got is None:
                    return i, acks
                acks.update(got)
                continue
            except psycopg.Error as exc:
                reason = redact(str(exc)).strip().splitlines()[0]
            log.error("worker %s: the database refused the result of step %s of %s (%s); failing the step",
                      self.worker_id, r.claim.step_id, r.claim.instance_id, reason)
            pending[i] = Result(r.claim, Outcome.FAILED, error=f"orchwf could not record the step's result: {reason}",
                                duration_ms=r.duration_ms)
            try:
                got = self.db.finish_one(conn, pending[i].row())
            except psycopg.Error as exc:  # not even that: the lease expires and the rescue decides
                log.error("worker %s: could not fail step %s either (%s)", self.worker_id, r.claim.step_id,
                          redact(str(exc)).strip().splitlines()[0])
                continue
            if got is None:
                return i + 1, acks
            acks.update(got)
        return len(pending), acks

    def _retire(self, result: Result, accepted: bool) -> None:
        claim = result.claim
        self.inflight.pop(claim.key, None)
        metrics.step_finished(claim.workflow_id, claim.step_id, result.outcome.value, accepted, result.duration_ms)

    def _release_all(self, reason: str) -> None:
        """Give back every claim still running, without counting an attempt."""
        self._collect_results()
        finished = {r.claim.key for r in self.unfinished}
        for claim in list(self.inflight.values()):
            if claim.key not in finished:
                if claim.ctx is not None:
                    claim.ctx.cancelled.set()
                self.unfinished.append(Result(claim, Outcome.RELEASE, error=reason))
        for _ in range(3):
            if not self.unfinished:
                break
            self.db.retry_now()
            self._finish()

    def _check_rate_limits(self, now: float) -> None:
        """Learn whether a queue of this worker is rate limited (every few seconds).

        A claim held back by a rate limit returns fewer steps than it asked for, which is
        also what an empty queue looks like, and no notification comes when tokens are
        back: so while a limit applies, the worker polls often enough that the bucket never
        fills up unused between its claims, instead of waiting for its idle poll."""
        if now < self.next_rate_check or self.quarantine:
            return
        self.next_rate_check = now + RATE_LIMITS_EVERY
        conn = self._connection()
        if conn is None:
            return
        poll = self.db.rate_limited_poll(conn, RATE_POLL_FLOOR)
        if poll != self.rate_poll:
            self.rate_poll = poll
            self.next_poll = min(self.next_poll, now + (poll or self.config.idle_poll))

    def _heartbeat(self, now: float) -> None:
        if now < self.next_heartbeat:
            return
        interval = self.config.lease_seconds / 3
        self.next_heartbeat = now + interval
        self._check_abandoned()
        due = [c for c in self.inflight.values() if now - c.renewed_at >= interval]
        if not due:
            return
        conn = self._connection()
        if conn is None:
            return
        lost = self.db.heartbeat(conn, [c.key for c in due], [c.row.lease_token for c in due])
        if lost is None:
            return
        for c in due:
            c.renewed_at = now
        for step_inst_id in lost:
            claim = self.inflight.get(str(step_inst_id))
            if claim is not None and claim.ctx is not None:
                claim.ctx.cancelled.set()  # its result will be discarded by the fence

    def _check_abandoned(self) -> None:
        """A timed-out sync executor keeps its thread; recycle the process to end it."""
        abandoned = self.runner.abandoned_threads(sum(1 for c in self.inflight.values() if c.timed))
        if abandoned and not self.tainted:
            log.warning("worker %s: %d step thread(s) ignored their timeout; recycling this process",
                        self.worker_id, abandoned)
            self.runner.tainted = True

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
        elif self.db.conn is None:
            state = "waiting for database"
        else:
            state = "idle"
        self._set_title(state)
        metrics.slots(len(self.inflight), self.config.concurrency)

    def _set_title(self, state: str) -> None:
        role = "quarantine" if self.quarantine else "worker"
        title = f"orchwf-worker: {role} {self.index} [{state}]"
        if title != self.title:
            self.title = title
            set_title(title)


__all__ = ["EXIT_RECYCLE", "Worker"]
