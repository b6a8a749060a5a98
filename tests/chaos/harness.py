"""Running the real daemon under chaos: profiles, daemon processes, waiting, reporting."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from proctools import children, wait_for  # noqa: F401 - wait_for is used by the chaos tests through harness

HERE = Path(__file__).resolve().parent

TERMINAL = ("completed", "failed", "cancelled")


# --------------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class Profile:
    name: str
    storm_workflows: int      # scenario 1
    storm_workers: int
    supervisor_workflows: int  # scenario 2
    restart_workflows: int    # scenario 3
    connloss_workflows: int   # scenario 4
    connloss_seconds: float
    deploy_seconds: float     # scenario 6
    deploy_rate: float        # workflows enqueued per second while deploying
    readonly_seconds: float   # scenario 7
    poison_workflows: int     # scenario 9
    fleet_workflows: int      # scenario 10
    hypothesis_examples: int  # scenario 8
    timeout: float            # per test
    signal_workflows: int = 1000  # scenario 11


PROFILES = {
    # About 3 minutes for the whole suite on a 2-core machine.
    "ci": Profile("ci", storm_workflows=300, storm_workers=4, supervisor_workflows=120,
                  restart_workflows=150, connloss_workflows=200, connloss_seconds=6.0,
                  deploy_seconds=8.0, deploy_rate=15.0, readonly_seconds=5.0,
                  poison_workflows=60, fleet_workflows=150, hypothesis_examples=40, timeout=240),
    # The figures (2,000 workflows x 5 steps under the kill storm).
    "long": Profile("long", storm_workflows=2000, storm_workers=4, supervisor_workflows=600,
                    restart_workflows=800, connloss_workflows=1000, connloss_seconds=30.0,
                    deploy_seconds=45.0, deploy_rate=25.0, readonly_seconds=15.0,
                    poison_workflows=300, fleet_workflows=800, hypothesis_examples=400, timeout=1200,
                    signal_workflows=5000),
}


def profile() -> Profile:
    name = os.environ.get("ORCHWF_CHAOS_PROFILE", "ci").strip() or "ci"
    if name not in PROFILES:
        raise RuntimeError(f"ORCHWF_CHAOS_PROFILE={name!r}: expected one of {', '.join(PROFILES)}")
    return PROFILES[name]


PROFILE = profile()


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    """``orchwf worker --app chaosapp`` as a subprocess in its own session, logging to a file."""

    def __init__(self, dsn: str, args: Iterable[str], *, side_dsn: str, log_path: Path,
                 metrics: bool = False, env: dict[str, str] | None = None, default_args: bool = True) -> None:
        self.dsn = dsn
        self.log_path = log_path
        self.metrics_port = free_port() if metrics else 0
        full_env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
                        ORCHWF_CHAOS_SIDE_DSN=side_dsn)
        full_env.pop("NOTIFY_SOCKET", None)
        full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        full_env.update(env or {})
        self.argv = [sys.executable, "-m", "orchwf", "worker", "--app", "chaosapp",
                     *(["--dsn", dsn] if dsn else []),  # no DSN: ORCHWF_DSN from env
                     "--metrics-port", str(self.metrics_port)]
        if default_args:
            self.argv += ["--log-level", "INFO"]
        self.argv += list(args)
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()/close()
        self.proc = subprocess.Popen(self.argv, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.proc.pid

    # -- state

    def alive(self) -> bool:
        return self.proc.poll() is None

    def workers(self) -> list[int]:
        return children(self.pid) if self.alive() else []

    def wait_workers(self, n: int, timeout: float = 20) -> list[int]:
        deadline = time.monotonic() + timeout
        while True:
            pids = self.workers()
            if len(pids) >= n:
                return pids
            if not self.alive():
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {n} workers, found {pids}:\n{self.log_tail()}")
            time.sleep(0.05)

    @property
    def metrics_url(self) -> str | None:
        return f"http://127.0.0.1:{self.metrics_port}/metrics" if self.metrics_port else None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # -- signals

    def send(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40) -> int:
        if self.alive():
            os.kill(self.pid, sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            raise AssertionError(f"daemon did not stop within {timeout}s after {sig!r}:\n{self.log_tail()}") from None

    def kill_group(self) -> None:
        """SIGKILL the supervisor and every process of its session (a crashed host)."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        self.kill_group()
        self._log.close()


# --------------------------------------------------------------------------- database


def connect(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True, connect_timeout=10)


def status_counts(dsn: str, ids: list[str] | None = None) -> dict[str, int]:
    with connect(dsn) as conn:
        if ids is None:
            rows = conn.execute("SELECT status, count(*) FROM orchwf_workflow_instances GROUP BY 1").fetchall()
        else:
            rows = conn.execute("SELECT status, count(*) FROM orchwf_workflow_instances WHERE id = ANY(%s::uuid[])"
                                " GROUP BY 1", (ids,)).fetchall()
    return {s: int(n) for s, n in rows}


def unfinished(dsn: str, ids: list[str] | None = None) -> int:
    try:
        counts = status_counts(dsn, ids)
    except psycopg.OperationalError:
        return -1  # the database is away: not finished
    return sum(n for s, n in counts.items() if s not in TERMINAL)


def diagnostics(dsn: str, daemons: Iterable[Daemon] = ()) -> str:
    parts = []
    try:
        with connect(dsn) as conn:
            steps = conn.execute("SELECT status, count(*) FROM orchwf_step_instances GROUP BY 1").fetchall()
            ready = conn.execute("SELECT count(*) FROM orchwf_ready_steps").fetchone()[0]
            running = conn.execute(
                "SELECT step_id, lease_owner, lease_expires_at - now(), attempts, crashes FROM orchwf_step_instances"
                " WHERE status = 'running' LIMIT 10").fetchall()
            scheduled = conn.execute(
                "SELECT count(*), min(run_after - now()) FROM orchwf_step_instances WHERE run_after IS NOT NULL"
            ).fetchone()
        parts += [f"instances: {status_counts(dsn)}", f"steps: {steps}", f"ready rows: {ready}",
                  f"running: {running}", f"scheduled: {scheduled}"]
    except psycopg.Error as exc:
        parts.append(f"(database unavailable: {exc})")
    for d in daemons:
        parts.append(f"--- daemon {d.pid} (alive={d.alive()}) {d.log_path}:\n{d.log_tail(25)}")
    return "\n".join(parts)


def wait_until_done(dsn: str, ids: list[str] | None = None, *, timeout: float, daemons: Iterable[Daemon] = (),
                    during: Callable[[], None] | None = None, poll: float = 0.25) -> float:
    """Wait until every instance (of ``ids``) is terminal; call ``during`` on each poll."""
    daemons = list(daemons)
    t0 = time.monotonic()
    while True:
        if unfinished(dsn, ids) == 0:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"instances still unfinished after {timeout:.0f}s\n{diagnostics(dsn, daemons)}")
        if during is not None:
            during()
        time.sleep(poll)




def executions(dsn: str, instance_id: str | None = None) -> list[tuple[Any, ...]]:
    with connect(dsn) as conn:
        if instance_id is None:
            return conn.execute("SELECT id, instance_id::text, step_id, attempt, pid, started_at, ended_at"
                                " FROM orchwf_chaos_exec ORDER BY id").fetchall()
        return conn.execute("SELECT id, instance_id::text, step_id, attempt, pid, started_at, ended_at"
                            " FROM orchwf_chaos_exec WHERE instance_id = %s ORDER BY id", (instance_id,)).fetchall()


# --------------------------------------------------------------------------- metrics


def scrape(url: str, timeout: float = 5.0) -> dict[str, float] | None:
    """Sum of every sample per metric name (labels folded); None if nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback, test only
            text = resp.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, value = line.rpartition(" ")
        name = name_part.split("{", 1)[0]
        try:
            sums[name] = sums.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return sums


# --------------------------------------------------------------------------- figures


def record_figures(scenario: str, figures: dict[str, Any]) -> None:
    """Print the scenario's figures; append them to $ORCHWF_CHAOS_REPORT (JSON lines) if set."""
    line = {"scenario": scenario, "profile": PROFILE.name, **figures}
    print(f"\nCHAOS {json.dumps(line, default=str, sort_keys=True)}")
    path = os.environ.get("ORCHWF_CHAOS_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(line, default=str, sort_keys=True) + "\n")
