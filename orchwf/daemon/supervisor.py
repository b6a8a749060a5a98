"""The supervisor: a prefork arbiter in the style of gunicorn's arbiter.py.

It loads the app, forks the workers before opening any database connection, then:
  - queues signals and handles them in the main loop;
  - reaps dead workers, gives their claims back at once (fenced by lease token) and
    forks replacements, backing off when they die at once;
  - runs a quarantine worker while suspects wait: the steps a dead worker was running
    come back as suspects, which only that worker claims, one at a time, so a step that
    kills its process cannot take other steps down with it again;
  - kills workers whose heartbeat pipe goes silent (a hung process);
  - holds the host's single LISTEN connection and wakes the workers over pipes;
  - runs the maintenance loop: promote due retries, rescue expired leases, prune.

Workers never use a connection opened here: every connection a worker uses is opened
in the worker, after fork, and a worker leaves through os._exit so it never finalises
the supervisor's connection objects it inherited.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import math
import os
import random
import select
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from ..client import register_workflow
from ..db.dsn import redact
from ..errors import ValidationError
from ..types import WorkflowDefinition
from . import metrics
from .config import DaemonConfig
from ..db.connect import connect
from .proctitle import set_title
from .worker import EXIT_RECYCLE, Worker

log = logging.getLogger("orchwf.supervisor")

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGCHLD,
                   signal.SIGTTIN, signal.SIGTTOU)


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


class Supervisor:
    def __init__(self, config: DaemonConfig, definitions: list[WorkflowDefinition], notifier: Any = None) -> None:
        if not definitions:
            raise ValueError("no workflow definitions to run")
        for name in ("lease_seconds", "shutdown_timeout", "poll_interval", "poll_interval_no_listen",
                     "retention_seconds", "worker_timeout"):
            value = getattr(config, name)
            # NaN passes every range check (all its comparisons are false), and would leave the
            # daemon running without ever claiming, heartbeating or stopping on time
            if not isinstance(value, (int, float)) or math.isnan(value) or value < 0 or (
                    name == "lease_seconds" and not 0 < value < math.inf):
                raise ValidationError(f"--{name.replace('_', '-')} must be a number >= 0, got {value!r}")
        self.config = config
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
        self.conn: psycopg.Connection[Any] | None = None
        self.listen_conn: psycopg.Connection[Any] | None = None
        self.listen_ok = False
        self.next_maintenance = 0.0
        self.next_prune = 0.0
        self.next_db_attempt = 0.0
        self.rescue_after = 0.0
        self.db_delay = 0.5
        self.registered = False
        self.ops: Any = None  # the /metrics, /healthz, /readyz server (daemon/http.py), set by run.py
        self.db_ok_at = float("-inf")  # last successful maintenance round trip (for /readyz)
        self.dead_workers: list[str] = []  # workers whose claims still need releasing
        self.suspects_waiting = False  # run a quarantine worker (learned from rescues and maintenance)
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
                self._reap()
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
            sig = self.signal_queue.pop(0)
            if sig in (signal.SIGTERM, signal.SIGINT):
                if self.stopping:
                    log.warning("second stop signal: stopping at once")
                    self._quit_now()
                else:
                    self._begin_stop()
            elif sig == signal.SIGQUIT:
                self._quit_now()
            elif sig == signal.SIGHUP:
                self._reload()
            elif sig == signal.SIGTTIN:
                self.num_workers += 1
            elif sig == signal.SIGTTOU and self.num_workers > 1:
                self.num_workers -= 1
                self._retire_extra()

    def _quit_now(self) -> None:
        """Workers give their claims back at once (SIGQUIT), without counting a crash;
        SIGKILL follows after 3 seconds for any that cannot."""
        self.stopping = True
        self.stop_deadline = min(self.stop_deadline or float("inf"), time.monotonic() + 3.0)
        self._notify("STOPPING=1", "STATUS=stopping at once")
        self._kill_all(signal.SIGQUIT)

    def _begin_stop(self) -> None:
        log.info("draining %d workers (shutdown timeout %.0fs)", len(self.children), self.config.shutdown_timeout)
        self.stopping = True
        self.stop_deadline = time.monotonic() + self.config.shutdown_timeout + 5.0
        self._notify("STOPPING=1", "STATUS=draining")
        self._kill_all(signal.SIGTERM)

    def _reload(self) -> None:
        """SIGHUP: fork fresh workers, then drain the old ones. No claim is dropped:
        old workers finish (or release) what they hold before they exit."""
        old = [c for c in self.children.values() if not c.retiring]
        log.info("reloading: replacing %d workers", len(old))
        for child in old:
            child.retiring = True
        for _ in range(self.num_workers):
            self._spawn()
        for child in old:
            self._signal(child, signal.SIGTERM)

    def _retire_extra(self) -> None:
        active = sorted(self._active(), key=lambda c: c.started)
        for child in active[self.num_workers:]:
            child.retiring = True
            self._signal(child, signal.SIGTERM)

    def _sleep(self) -> None:
        fds = [self._sig_r] + [c.beat_r for c in self.children.values()]
        if self.listen_conn is not None and not self.listen_conn.closed:
            fds.append(self.listen_conn.fileno())
        now = time.monotonic()
        timeout = max(0.0, min(self.next_maintenance - now, 1.0))
        try:
            wfds: list[int] = []
            if self.ops is not None:
                fds += self.ops.read_fds()
                wfds = self.ops.write_fds()
            ready, writable, _ = select.select(fds, wfds, [], timeout)
        except (InterruptedError, ValueError, OSError):
            return
        if self.ops is not None:
            self.ops.service(ready, writable)
            ready = [fd for fd in ready if not self.ops.owns(fd)]
        by_fd = {c.beat_r: c for c in self.children.values()}
        for fd in ready:
            if fd == self._sig_r:
                try:
                    while os.read(self._sig_r, 4096):
                        pass
                except BlockingIOError:
                    pass
            elif fd in by_fd:
                child = by_fd[fd]
                try:
                    if os.read(fd, 4096):
                        child.last_beat = time.monotonic()
                        child.beaten = True
                except (BlockingIOError, OSError):
                    pass
            elif self.listen_conn is not None:
                self._drain_notifications()

    # -- children -------------------------------------------------------------------------

    def _active(self) -> list[Child]:
        return [c for c in self.children.values() if not c.retiring and not c.quarantine]

    def _spawn_missing(self) -> None:
        if time.monotonic() < self.spawn_at:
            return
        while len(self._active()) < self.num_workers:
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
        if pid == 0:  # the child: never returns into the supervisor's code
            code = 1
            try:
                for sig in HANDLED_SIGNALS:
                    signal.signal(sig, signal.SIG_DFL)
                signal.set_wakeup_fd(-1)
                os.close(self._sig_r)
                os.close(self._sig_w)
                os.close(wake_w)
                os.close(beat_r)
                os.set_blocking(wake_r, False)
                os.set_blocking(beat_w, False)
                for child in self.children.values():
                    os.close(child.wake_w)
                    os.close(child.beat_r)
                if self.ops is not None:
                    self.ops.close_in_child()
                worker_id = f"{self.config.hostname}:{os.getpid()}:{start_ms}"
                config = dataclasses.replace(self.config, concurrency=1) if quarantine else self.config
                worker = Worker(config, self.definitions, index, worker_id, self.supervisor_id,
                                wake_r, beat_w, parent_pid, quarantine=quarantine)
                worker.install_signal_handlers()
                signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
                code = worker.run()
            except BaseException:  # noqa: BLE001 - report, then leave without finalisers
                log.exception("worker %d crashed", index)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
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

    def _reap(self) -> None:
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
            os.close(child.wake_w)
            try:  # a heartbeat it sent just before dying still counts
                child.beaten = child.beaten or bool(os.read(child.beat_r, 4096))
            except OSError:
                pass
            os.close(child.beat_r)
            metrics.process_exited(pid)
            code = os.waitstatus_to_exitcode(status)
            lived = time.monotonic() - child.started
            if code != 0 and not self.stopping and not child.retiring:
                log.warning("worker %d (pid %d) died with %s after %.1fs", child.index, pid,
                            f"signal {-code}" if code < 0 else f"exit code {code}", lived)
                if code != EXIT_RECYCLE:
                    metrics.WORKER_RESTARTS.inc()
                    # Back off only from a crash loop: a worker that died before its first
                    # heartbeat. One killed while working (kill -9, OOM, a poison step) is
                    # replaced at once, or the whole host would stall for up to 30s.
                    if lived < 5 and not child.beaten:
                        self.spawn_failures += 1
                        delay = min(30.0, 0.5 * 2 ** min(self.spawn_failures, 6))
                        self.spawn_at = time.monotonic() + delay
                    else:
                        self.spawn_failures = 0
            # Its claims go back to the queue now, not when the lease expires.
            self.dead_workers.append(child.worker_id)
        # (the loop returns from inside)

    def _kill_all(self, sig: int) -> None:
        for child in list(self.children.values()):
            self._signal(child, sig)

    def _signal(self, child: Child, sig: int) -> None:
        try:
            os.kill(child.pid, sig)
        except ProcessLookupError:
            pass

    def _kill_silent(self) -> None:
        now = time.monotonic()
        for child in list(self.children.values()):
            if now - child.last_beat > self.config.worker_timeout:
                log.error("worker %d (pid %d) silent for %.0fs: killing it", child.index, child.pid,
                          now - child.last_beat)
                self._signal(child, signal.SIGKILL)
                child.last_beat = now  # do not kill it twice while it is being reaped

    def _wake_workers(self) -> None:
        for child in self.children.values():
            try:
                os.write(child.wake_w, b"w")
            except (BlockingIOError, BrokenPipeError):
                pass
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EPIPE):
                    raise

    # -- database (opened after the first fork) -------------------------------------------

    def _table(self, name: str) -> sql.Composable:
        return sql.SQL("{}.{}").format(sql.Identifier(self.config.schema), sql.Identifier(name))

    def _database(self) -> None:
        now = time.monotonic()
        if not self._connect(now):
            return
        try:
            if not self.registered:
                for definition in self.definitions.values():
                    register_workflow(self.conn, definition, schema=self.config.schema)  # type: ignore[arg-type]
                self._register_self()
                self.registered = True
            self._release_dead()
            if now >= self.next_maintenance:
                self._maintain(now)
            self.db_delay = 0.5  # reset once work succeeds, not on connect: a database that
            # accepts connections but fails every query (read-only, no privilege) is backed off
        except psycopg.Error as exc:
            self._db_failed(exc)

    def _connect(self, now: float) -> bool:
        if self.conn is not None and not self.conn.closed and (
            not self.config.listen or (self.listen_conn is not None and not self.listen_conn.closed)
        ):
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
            if self.config.listen and (self.listen_conn is None or self.listen_conn.closed):
                self.listen_conn = connect(self.config.dsn, application_name="orchwf-listener")
                self.listen_conn.execute("LISTEN orchwf_ready")
                self.listen_conn.execute("LISTEN orchwf_scheduled")
                self.listen_ok = True
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
        for conn in (self.conn, self.listen_conn):
            if conn is not None:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - discarding a broken connection
                    pass
        self.conn = None
        self.listen_conn = None
        self.listen_ok = False
        metrics.LISTEN_UP.set(0)

    def _drain_notifications(self) -> None:
        assert self.listen_conn is not None
        got = False
        try:
            for note in self.listen_conn.notifies(timeout=0):
                if note.channel == "orchwf_scheduled":
                    self.next_maintenance = 0.0  # learn the new earliest due time now
                else:
                    got = True
        except psycopg.Error as exc:
            self._db_failed(exc)
            return
        if got:
            self._wake_workers()

    def _register_self(self) -> None:
        assert self.conn is not None
        self.conn.execute(
            sql.SQL(
                "INSERT INTO {} (worker_id, supervisor_id, host, pid, role, queues, workflows, concurrency)"
                " VALUES (%s, %s, %s, %s, 'supervisor', %s, %s, %s) ON CONFLICT (worker_id) DO NOTHING"
            ).format(self._table("orchwf_workers")),
            (self.supervisor_id, self.supervisor_id, self.config.hostname, os.getpid(),
             list(self.config.queues), sorted(self.definitions), self.config.workers),
        )

    def _unregister_self(self) -> None:
        if self.conn is None or self.conn.closed:
            return
        try:
            self.conn.execute(
                sql.SQL("DELETE FROM {} WHERE worker_id = %s").format(self._table("orchwf_workers")),
                (self.supervisor_id,),
            )
        except psycopg.Error:
            pass  # the row ages out: prune deletes rows without a heartbeat for an hour

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
            rows: list[Any] = []
            while True:  # the rescue takes up to 1,000 claims a call
                batch = self.conn.execute(
                    sql.SQL("SELECT * FROM {}(%s)").format(self._table("orchwf_rescue_steps")), (worker_id,)
                ).fetchall()
                rows.extend(batch)
                if len(batch) < 1000:
                    break
            self.conn.execute(
                sql.SQL("DELETE FROM {} WHERE worker_id = %s").format(self._table("orchwf_workers")), (worker_id,)
            )
            metrics.steps_rescued("worker_death", len(rows))
            if rows:
                log.info("released %d claims of dead worker %s", len(rows), worker_id)
                if any(outcome in ("requeue", "retry") for _, outcome, _ in rows):
                    self.suspects_waiting = True
                self._wake_workers()
            self.dead_workers.pop(0)

    def _maintain(self, now: float) -> None:
        """Promote due retries, rescue expired leases, mark this host's workers alive, and
        learn when the next scheduled step is due: one query (orchwf_maintain)."""
        assert self.conn is not None
        row = self.conn.execute(
            sql.SQL("SELECT * FROM {}(%s, %s, %s, %s)").format(self._table("orchwf_maintain")),
            (self.supervisor_id, now >= self.rescue_after, list(self.config.queues), sorted(self.definitions)),
        ).fetchone()
        promoted, rescued, next_due = (int(row[0] or 0), int(row[1] or 0), row[2]) if row else (0, 0, None)
        self.suspects_waiting = bool(row and row[3])
        metrics.steps_rescued("lease_expired", rescued)
        if promoted or rescued:
            self._wake_workers()
        if now >= self.next_prune and self.config.retention_seconds > 0:
            self.conn.execute(
                sql.SQL("SELECT {}(%s * interval '1 second')").format(self._table("orchwf_prune")),
                (self.config.retention_seconds,),
            )
            self.conn.execute(
                sql.SQL("DELETE FROM {} WHERE heartbeat_at < now() - interval '1 hour'").format(
                    self._table("orchwf_workers")))
            self.next_prune = now + 300
        # Idle cost: one query per interval (jittered); sooner when a retry is due sooner.
        interval = (1.0 if promoted or rescued else 2.0) * random.uniform(0.9, 1.1)
        if next_due is not None:
            interval = min(interval, max(0.01, float(next_due)))
        self.next_maintenance = now + interval
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
        if self.config.listen and (not self.listen_ok or self.listen_conn is None or self.listen_conn.closed):
            return False, "LISTEN connection down"
        return True, "ok"

    def _notify(self, *lines: str) -> None:
        if self.notifier is not None:
            self.notifier.notify(*lines)
