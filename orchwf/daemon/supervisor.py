"""The supervisor: a prefork arbiter in the style of gunicorn's arbiter.py.

It loads the app, forks the workers before opening any database connection, then loops:
  - signals are queued by their handler and handled here, one ``handle_<name>`` each;
  - dead workers are reaped, their claims given back at once (fenced by lease token), and
    replaced, with a backoff only when they die before their first heartbeat;
  - a worker whose heartbeat pipe goes silent gets SIGABRT (it dumps its stacks through
    faulthandler) and, if still there after ABORT_GRACE seconds, SIGKILL;
  - while suspects wait, a quarantine worker runs them one at a time (docs/reliability.md);
  - the maintenance services (maintenance/) run on their schedule, the periodic ones in
    one round trip, and the listener wakes the workers over their pipes.

Workers never use a connection opened here: every connection a worker uses is opened in
the worker, after fork, and a worker leaves through os._exit so it never finalises the
supervisor's connection objects it inherited.
"""

from __future__ import annotations

import dataclasses
import errno
import faulthandler
import gc
import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from .. import tracing
from ..client import register_workflow
from ..db.connect import connect
from ..db.dsn import redact
from ..db.queries import Queries
from ..db.rows import ProcessRegistration
from ..types import WorkflowDefinition
from . import metrics
from .config import DaemonConfig
from .maintenance.cron import CronService
from .maintenance.listener import Listener
from .maintenance.pruner import Pruner
from .maintenance.rescuer import Rescuer
from .maintenance.round import MaintenanceRound
from .maintenance.scheduler import Scheduler
from .maintenance.stats import StatsRollup
from .proctitle import set_title
from .worker import EXIT_RECYCLE, Worker

log = logging.getLogger("orchwf.supervisor")

SIGNALS = {signal.SIGTERM: "term", signal.SIGINT: "int", signal.SIGQUIT: "quit", signal.SIGHUP: "hup",
           signal.SIGCHLD: "chld", signal.SIGTTIN: "ttin", signal.SIGTTOU: "ttou"}
HANDLED_SIGNALS = tuple(SIGNALS)
ABORT_GRACE = 5.0  # seconds a silent worker has, after SIGABRT, to dump its stacks and die


@dataclass
class Child:
    pid: int
    index: int
    worker_id: str
    wake_w: int
    beat_r: int
    started: float = field(default_factory=time.monotonic)
    last_beat: float = field(default_factory=time.monotonic)
    retiring: bool = False
    beaten: bool = False  # sent a heartbeat: it started up (its death is no crash loop)
    quarantine: bool = False  # claims suspects only, one at a time (see Worker)
    aborted_at: float | None = None  # sent SIGABRT for silence


class Supervisor:
    def __init__(self, config: DaemonConfig, definitions: list[WorkflowDefinition], notifier: Any = None,
                 tracing_hook: Callable[[], object] | None = None) -> None:
        """``tracing_hook``: the app's configure_tracing, called in each worker after fork."""
        if not definitions:
            raise ValueError("no workflow definitions to run")
        self.config = config
        self.tracing_hook = tracing_hook
        if tracing_hook is not None:
            tracing.preload()  # modules only: each worker's hook makes its provider after fork
        self.definitions = {d.id: d for d in definitions}
        self.notifier = notifier
        self.started_ms = int(time.time() * 1000)
        self.supervisor_id = f"{config.hostname}:{os.getpid()}:{self.started_ms}"
        self.children: dict[int, Child] = {}
        self.signal_queue: list[int] = []
        self.num_workers = config.workers
        self.stopping = False
        self.stop_deadline = 0.0
        self.next_index = 0
        self.spawn_failures = 0
        self.spawn_at = 0.0
        self.q = Queries.of(config.schema)
        self.conn: psycopg.Connection[Any] | None = None
        self.listener = Listener(config.dsn, config.schema) if config.listen else None
        workflows = sorted(self.definitions)
        self.rescuer = Rescuer(config.schema)
        self.scheduler = Scheduler(config.schema)
        self.pruner = Pruner(config.schema, config.retention_seconds)
        self.stats = StatsRollup(config.schema)
        self.cron = CronService(config.schema)
        self.round = MaintenanceRound(config.schema, self.supervisor_id, list(config.queues), workflows)
        self.next_maintenance = 0.0
        self.next_db_attempt = 0.0
        self.rescue_after = 0.0
        self.db_delay = 0.5
        self.registered = False
        self.ops: Any = None  # the /metrics, /healthz, /readyz server (daemon/http.py), set by run.py
        self.db_ok_at = float("-inf")  # last successful maintenance round trip (for /readyz)
        self.dead_workers: list[str] = []  # workers whose claims still need releasing
        self.suspects_waiting = False  # run a quarantine worker (learnt from rescues and maintenance)
        self._sig_r, self._sig_w = os.pipe()
        os.set_blocking(self._sig_r, False)
        os.set_blocking(self._sig_w, False)

    # -- main loop ------------------------------------------------------------------------

    def run(self) -> int:
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, self._queue_signal)
        signal.set_wakeup_fd(self._sig_w, warn_on_full_buffer=False)
        self._title()
        self._spawn_missing()  # fork before any connection is opened
        self._notify("READY=1", f"STATUS=running {len(self.children)} workers")
        try:
            while True:
                self._handle_signals()
                self.handle_chld()  # reap on every turn, not only on SIGCHLD (it can be coalesced)
                if self.stopping:
                    if not self.children:
                        break
                    if time.monotonic() >= self.stop_deadline:
                        self._kill_all(signal.SIGKILL)
                else:
                    self._spawn_missing()
                    self._kill_silent()
                self._database()
                self._title()
                self._notify("WATCHDOG=1")
                self._sleep()
        finally:
            self._release_dead(final=True)
            self._unregister_self()
            self._close_db()
            self._notify("STATUS=stopped")
        return 0

    def _queue_signal(self, signum: int, frame: Any) -> None:
        if len(self.signal_queue) < 10:
            self.signal_queue.append(signum)

    def _handle_signals(self) -> None:
        while self.signal_queue:
            name = SIGNALS[signal.Signals(self.signal_queue.pop(0))]
            getattr(self, f"handle_{name}")()

    # -- signals --------------------------------------------------------------------------

    def handle_term(self) -> None:
        """Graceful stop: workers finish (or, at the shutdown timeout, release) what they
        run. A second one stops at once."""
        if self.stopping:
            log.warning("second stop signal: stopping at once")
            self.handle_quit()
            return
        log.info("draining %d workers (shutdown timeout %.0fs)", len(self.children), self.config.shutdown_timeout)
        self.stopping = True
        self.stop_deadline = time.monotonic() + self.config.shutdown_timeout + 5.0
        self._notify("STOPPING=1", "STATUS=draining")
        self._kill_all(signal.SIGTERM)

    handle_int = handle_term

    def handle_quit(self) -> None:
        """Stop at once: workers give their claims back (SIGQUIT), without counting a crash;
        SIGKILL follows after 3 seconds for any that cannot."""
        self.stopping = True
        self.stop_deadline = min(self.stop_deadline or float("inf"), time.monotonic() + 3.0)
        self._notify("STOPPING=1", "STATUS=stopping at once")
        self._kill_all(signal.SIGQUIT)

    def handle_hup(self) -> None:
        """Reload: fork fresh workers, then drain the old ones. No claim is dropped: old
        workers finish (or release) what they hold before they exit."""
        old = [c for c in self.children.values() if not c.retiring]
        log.info("reloading: replacing %d workers", len(old))
        for child in old:
            child.retiring = True
        for _ in range(self.num_workers):
            self._spawn()
        for child in old:
            self._signal(child, signal.SIGTERM)

    def handle_ttin(self) -> None:
        """One more worker."""
        self.num_workers += 1

    def handle_ttou(self) -> None:
        """One worker less (the oldest ones go first), never below one."""
        if self.num_workers <= 1:
            return
        self.num_workers -= 1
        active = sorted(self.active_workers(), key=lambda c: c.started)
        for child in active[self.num_workers:]:
            child.retiring = True
            self._signal(child, signal.SIGTERM)

    def handle_chld(self) -> None:
        """Reap dead workers; their claims go back to the queue now, not when the lease expires."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue
            self._reaped(child, os.waitstatus_to_exitcode(status))

    def _reaped(self, child: Child, code: int) -> None:
        os.close(child.wake_w)
        try:  # a heartbeat it sent just before dying still counts
            child.beaten = child.beaten or bool(os.read(child.beat_r, 4096))
        except OSError:
            pass
        os.close(child.beat_r)
        metrics.process_exited(child.pid)
        lived = time.monotonic() - child.started
        if code != 0 and not self.stopping and not child.retiring:
            log.warning("worker %d (pid %d) died with %s after %.1fs", child.index, child.pid,
                        f"signal {-code}" if code < 0 else f"exit code {code}", lived)
            if code != EXIT_RECYCLE:
                metrics.WORKER_RESTARTS.inc()
                # Back off only from a crash loop: a worker that died before its first
                # heartbeat. One killed while working (kill -9, OOM, a poison step) is
                # replaced at once, or the whole host would stall for up to 30s.
                if lived < 5 and not child.beaten:
                    self.spawn_failures += 1
                    self.spawn_at = time.monotonic() + min(30.0, 0.5 * 2 ** min(self.spawn_failures, 6))
                else:
                    self.spawn_failures = 0
        self.dead_workers.append(child.worker_id)

    # -- children -------------------------------------------------------------------------

    def active_workers(self) -> list[Child]:
        """Ordinary workers not on their way out (what --workers asks for)."""
        return [c for c in self.children.values() if not c.retiring and not c.quarantine]

    def _spawn_missing(self) -> None:
        if time.monotonic() < self.spawn_at:
            return
        while len(self.active_workers()) < self.num_workers:
            self._spawn()
        if self.suspects_waiting and not any(c.quarantine and not c.retiring for c in self.children.values()):
            self._spawn(quarantine=True)

    def _spawn(self, quarantine: bool = False) -> None:
        index = self.next_index
        self.next_index += 1
        start_ms = int(time.time() * 1000)
        wake_r, wake_w = os.pipe()
        beat_r, beat_w = os.pipe()
        parent_pid = os.getpid()
        # Block our signals across fork: until the child installs the worker's handlers,
        # a SIGTERM meant for it would land in its copy of the supervisor's queue, unread.
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        pid = os.fork()
        if pid == 0:
            self._child(index, start_ms, wake_r, wake_w, beat_r, beat_w, parent_pid, quarantine)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        os.close(wake_r)
        os.close(beat_w)
        os.set_blocking(wake_w, False)
        os.set_blocking(beat_r, False)
        self.children[pid] = Child(pid, index, f"{self.config.hostname}:{pid}:{start_ms}", wake_w, beat_r,
                                   quarantine=quarantine)
        if quarantine:
            # Until the next maintenance round says otherwise: a suspect it leaves behind
            # (it died, or exited idle as another host's rescue requeued one) gets another.
            self.suspects_waiting = False
            log.info("quarantine worker %d started (pid %d): suspects run one at a time", index, pid)
        else:
            log.info("worker %d started (pid %d)", index, pid)

    def _child(self, index: int, start_ms: int, wake_r: int, wake_w: int, beat_r: int, beat_w: int,
               parent_pid: int, quarantine: bool) -> None:
        """In the forked child: become a worker; never return into the supervisor's code."""
        code = 1
        try:
            for sig in HANDLED_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            signal.set_wakeup_fd(-1)
            faulthandler.enable()  # SIGABRT (a silent worker) dumps every thread's stack
            for fd in (self._sig_r, self._sig_w, wake_w, beat_r):
                os.close(fd)
            os.set_blocking(wake_r, False)
            os.set_blocking(beat_w, False)
            for child in self.children.values():
                os.close(child.wake_w)
                os.close(child.beat_r)
            if self.ops is not None:
                self.ops.close_in_child()
            worker_id = f"{self.config.hostname}:{os.getpid()}:{start_ms}"
            if self.tracing_hook is not None:
                tracing.start_in_worker(self.tracing_hook)  # after fork: no exporter thread crosses it
            config = dataclasses.replace(self.config, concurrency=1) if quarantine else self.config
            worker = Worker(config, self.definitions, index, worker_id, self.supervisor_id,
                            wake_r, beat_w, parent_pid, quarantine=quarantine)
            worker.install_signal_handlers()
            # Everything so far (the app, its definitions, the tracing SDK) lives as long as
            # the worker: out of the collector's sight, a full collection traverses only
            # what the worker made since, instead of stalling its claim loop ~20-40 ms.
            gc.freeze()
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
            code = worker.run()
        except BaseException:  # noqa: BLE001 - report, then leave without finalisers
            log.exception("worker %d crashed", index)
        finally:
            tracing.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def _kill_all(self, sig: int) -> None:
        for child in list(self.children.values()):
            self._signal(child, sig)

    def _signal(self, child: Child, sig: int) -> None:
        try:
            os.kill(child.pid, sig)
        except ProcessLookupError:
            pass

    def _kill_silent(self) -> None:
        """A worker silent for worker_timeout gets SIGABRT (its stacks go to the log), then
        SIGKILL if it is still there ABORT_GRACE seconds later."""
        now = time.monotonic()
        for child in list(self.children.values()):
            if child.aborted_at is not None:
                if now - child.aborted_at >= ABORT_GRACE:
                    log.error("worker %d (pid %d) still there %.0fs after SIGABRT: killing it", child.index,
                              child.pid, now - child.aborted_at)
                    self._signal(child, signal.SIGKILL)
                    child.aborted_at = float("inf")  # once
            elif now - child.last_beat > self.config.worker_timeout:
                log.error("worker %d (pid %d) silent for %.0fs: aborting it (SIGABRT dumps its stacks)",
                          child.index, child.pid, now - child.last_beat)
                self._signal(child, signal.SIGABRT)
                child.aborted_at = now

    def _wake_workers(self) -> None:
        for child in self.children.values():
            try:
                os.write(child.wake_w, b"w")
            except (BlockingIOError, BrokenPipeError):
                pass
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EPIPE):
                    raise

    # -- waiting --------------------------------------------------------------------------

    def _sleep(self) -> None:
        """Wait for a signal, a worker's heartbeat, a notification, an HTTP client or the
        next maintenance round, and hand each ready descriptor to its owner."""
        handlers: dict[int, Callable[[], None]] = {self._sig_r: self._drain_signal_pipe}
        for child in self.children.values():
            handlers[child.beat_r] = lambda c=child: self._heard(c)  # type: ignore[misc]
        if self.listener is not None and self.listener.up:
            handlers[self.listener.fileno()] = self._notifications
        read_fds, write_fds = list(handlers), []
        if self.ops is not None:
            read_fds += self.ops.read_fds()
            write_fds = self.ops.write_fds()
        # While the database is down, what is due next is the reconnect, not the
        # maintenance round it holds back (which stays due, and would spin this loop).
        due = self.next_maintenance if self._db_up() else self.next_db_attempt
        timeout = max(0.0, min(due - time.monotonic(), 1.0))
        try:
            readable, writable, _ = select.select(read_fds, write_fds, [], timeout)
        except (InterruptedError, ValueError, OSError):
            return
        if self.ops is not None:
            self.ops.service(readable, writable)
        for fd in readable:
            if fd in handlers:
                handlers[fd]()

    def _drain_signal_pipe(self) -> None:
        try:
            while os.read(self._sig_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _heard(self, child: Child) -> None:
        try:
            if os.read(child.beat_r, 4096):
                child.last_beat = time.monotonic()
                child.beaten = True
        except (BlockingIOError, OSError):
            pass

    def _notifications(self) -> None:
        assert self.listener is not None
        try:
            got = self.listener.run_once()
        except psycopg.Error as exc:
            self._db_failed(exc)
            return
        if got.scheduled:
            self.next_maintenance = 0.0  # learn the new earliest due time now
        if got.ready:
            self._wake_workers()

    # -- database (opened after the first fork) -------------------------------------------

    def _database(self) -> None:
        now = time.monotonic()
        if not self._connect(now):
            return
        assert self.conn is not None
        try:
            if not self.registered:
                for definition in self.definitions.values():
                    register_workflow(self.conn, definition, schema=self.config.schema)
                self._register_self()
                self.registered = True
            self._release_dead()
            if now >= self.next_maintenance:
                self._maintain(now)
            if self.pruner.due(now):
                self.pruner.run_once(self.conn, now)
            if self.stats.due(now):
                self.stats.run_once(self.conn, now)
            if self.cron.due(now):
                self.cron.run_once(self.conn, now)
            self.db_delay = 0.5  # reset once work succeeds, not on connect: a database that
            # accepts connections but fails every query (read-only, no privilege) is backed off
        except psycopg.Error as exc:
            self._db_failed(exc)

    def _db_up(self) -> bool:
        return self.conn is not None and not self.conn.closed and (self.listener is None or self.listener.up)

    def _connect(self, now: float) -> bool:
        if self._db_up():
            return True
        if now < self.next_db_attempt:
            return False
        try:
            if self.conn is None or self.conn.closed:
                self.conn = connect(self.config.dsn, application_name="orchwf-supervisor",
                                    prepare=self.config.listen)
                # Workers renew their leases right after they reconnect; give them one lease
                # period before expired leases count as dead workers (after an outage, ours
                # may be the first connection back).
                self.rescue_after = time.monotonic() + self.config.lease_seconds
            if self.listener is not None and not self.listener.up:
                self.listener.open()
                metrics.LISTEN_UP.set(1)
                self._wake_workers()  # notifications may have been missed while down
            return True
        except psycopg.Error as exc:
            self._db_failed(exc)
            return False

    def _db_failed(self, exc: BaseException) -> None:
        log.warning("supervisor: database error (%s); retrying in %.1fs", redact(str(exc)).strip(), self.db_delay)
        self._close_db()
        self.next_db_attempt = time.monotonic() + self.db_delay
        self.db_delay = min(self.db_delay * 2, 10.0)

    def _close_db(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001 - discarding a broken connection
                pass
        self.conn = None
        if self.listener is not None:
            self.listener.close()
        metrics.LISTEN_UP.set(0)

    def _register_self(self) -> None:
        assert self.conn is not None
        self.q.register_process(self.conn, ProcessRegistration(
            worker_id=self.supervisor_id, supervisor_id=self.supervisor_id, host=self.config.hostname,
            pid=os.getpid(), role="supervisor", queues=list(self.config.queues),
            workflows=sorted(self.definitions), concurrency=self.config.workers))

    def _unregister_self(self) -> None:
        if self.conn is None or self.conn.closed:
            return
        try:
            self.q.unregister_process(self.conn, self.supervisor_id)
        except psycopg.Error:
            pass  # the row ages out: the pruner forgets silent processes after an hour

    def _release_dead(self, final: bool = False) -> None:
        """Give the claims of dead workers back to the queue, fenced by their tokens."""
        if not self.dead_workers:
            return
        if self.conn is None or self.conn.closed:
            if final:
                log.warning("could not release claims of %d dead workers; lease expiry will", len(self.dead_workers))
            return
        while self.dead_workers:
            worker_id = self.dead_workers[0]
            rows = self.rescuer.release_dead(self.conn, worker_id)
            metrics.steps_rescued("worker_death", len(rows))
            if rows:
                log.info("released %d claims of dead worker %s", len(rows), worker_id)
                if any(r.outcome in ("requeue", "retry") for r in rows):
                    self.suspects_waiting = True
                self._wake_workers()
            self.dead_workers.pop(0)

    def _maintain(self, now: float) -> None:
        """The periodic round: heartbeat, rescue, promote, suspects (maintenance/round.py)."""
        assert self.conn is not None
        result = self.round.run_once(self.conn, rescue=now >= self.rescue_after)
        self.suspects_waiting = result.suspects
        metrics.steps_rescued("lease_expired", result.rescue.rescued)
        found = bool(result.schedule.promoted or result.rescue.rescued)
        if found:
            self._wake_workers()
        self.next_maintenance = now + self.scheduler.next_round(result.schedule, found)
        self.db_ok_at = now

    # -- presentation ---------------------------------------------------------------------

    def _title(self) -> None:
        state = "stopping" if self.stopping else f"{len(self.children)} workers"
        set_title(f"orchwf-worker: supervisor [{state}]")

    def readiness(self) -> tuple[bool, str]:
        """For /readyz: the database answered recently and LISTEN is up (or disabled)."""
        if self.stopping:
            return False, "draining"
        if self.conn is None or self.conn.closed or time.monotonic() - self.db_ok_at > 15.0:
            return False, "database unreachable"
        if self.listener is not None and not self.listener.up:
            return False, "LISTEN connection down"
        return True, "ok"

    def _notify(self, *lines: str) -> None:
        if self.notifier is not None:
            self.notifier.notify(*lines)
