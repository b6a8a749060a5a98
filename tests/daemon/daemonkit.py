"""The daemon tests' helpers: the real daemon as a subprocess, and what the test app
records. (A module of its own, not conftest: test files import these by name.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Collection
from pathlib import Path

import proctools
import psycopg
from proctools import children

HERE = Path(__file__).parent


SIDE_TABLES = """
CREATE TABLE IF NOT EXISTS orchwf_test_exec (
    id bigserial PRIMARY KEY, instance_id uuid, step_id text, attempt int, pid int, note text,
    at timestamptz DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS orchwf_test_effects (instance_id uuid, value int);
"""


class Daemon:
    def __init__(self, dsn: str, args: list[str], app: str = "daemonapp", env: dict[str, str] | None = None) -> None:
        # The caller's PYTHONPATH after the app's: a worktree's daemons import that tree's orchwf.
        path = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)
        env = dict(os.environ, PYTHONPATH=path, ORCHWF_TEST_APP_DSN=dsn, **(env or {}))
        env.pop("NOTIFY_SOCKET", None)
        import tempfile

        self.log_file = tempfile.NamedTemporaryFile(prefix="orchwf-daemon-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchwf", "worker", "--app", app, "--dsn", dsn,
             "--metrics-port", "0", *args],
            env=env, stdout=self.log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.dsn = dsn

    def worker_pids(self, expected: int | None = None, timeout: float = 15) -> list[int]:
        """PIDs of the live worker processes (children of the supervisor)."""
        deadline = time.monotonic() + timeout
        while True:
            pids = children(self.proc.pid)
            if (expected is None and pids) or (expected is not None and len(pids) == expected):
                return pids
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {expected} workers, found {pids}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            raise

    def output(self) -> str:
        """What the daemon logged so far (printed by pytest when a test fails)."""
        with open(self.log_file.name, errors="replace") as f:
            return f.read()


def executions(dsn: str, instances: str | Collection[str] | None = None) -> list[tuple]:
    """Every logged execution, or those of ``instances`` (one ID or several). Count a
    test's own instances: daemonapp's "scheduled" workflow starts an instance of its own
    at every minute boundary while a daemon runs."""
    with psycopg.connect(dsn) as conn:
        if instances is None:
            return conn.execute("SELECT instance_id::text, step_id, attempt, pid, note FROM orchwf_test_exec ORDER BY id").fetchall()
        ids = [instances] if isinstance(instances, str) else list(instances)
        return conn.execute(
            "SELECT instance_id::text, step_id, attempt, pid, note FROM orchwf_test_exec"
            " WHERE instance_id = ANY(%s::uuid[]) ORDER BY id",
            (ids,),
        ).fetchall()


def wait_for(predicate: Callable[[], object], timeout: float = 60, what: str = "condition") -> object:
    return proctools.wait_for(predicate, timeout, what)
