"""Helpers of the operations tests: run the real daemon, scrape it, drive the SQL API."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import proctools
import psycopg
from proctools import children
from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).parent
REPO = HERE.parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float = 20, what: str = "condition") -> Any:
    return proctools.wait_for(predicate, timeout, what)


class Daemon:
    """``orchwf worker --app opsapp`` (or ``app``) as a subprocess (its own session, killed at the end)."""

    def __init__(self, dsn: str, *args: str, metrics_port: int | None = None,
                 env: dict[str, str] | None = None, app: str = "opsapp") -> None:
        self.port = free_port() if metrics_port is None else metrics_port
        full_env = dict(os.environ, PYTHONPATH=str(HERE))
        for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "PROMETHEUS_MULTIPROC_DIR"):
            full_env.pop(key, None)
        full_env.update(env or {})
        # A file, not a pipe: a pipe nobody reads would block the daemon once full.
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in kill()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchwf", "worker", "--app", app, "--dsn", dsn,
             "--metrics-port", str(self.port), "--lease-seconds", "5", "--shutdown-timeout", "5", *args],
            env=full_env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.dsn = dsn

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str, headers: dict[str, str] | None = None, method: str = "GET",
            timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(self.url(path), headers=headers or {}, method=method)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def wait_ready(self, timeout: float = 30) -> None:
        def ready() -> bool:
            self.check_alive()
            try:
                return self.get("/readyz", timeout=2)[0] == 200
            except OSError:
                return False

        wait_for(ready, timeout, "the daemon's /readyz")

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.output()}")

    def scrape(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        """name -> [(labels, value)] of every sample of the exposition."""
        status, _, body = self.get("/metrics")
        assert status == 200, body
        return parse(body.decode())

    def worker_pids(self, expected: int | None = None, timeout: float = 15) -> list[int]:
        def found() -> list[int] | None:
            pids = children(self.proc.pid)
            return pids if (expected is None and pids) or len(pids) == expected else None

        return wait_for(found, timeout, f"{expected} worker processes")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # no orphan survives a test
        except (ProcessLookupError, PermissionError):
            pass
        if self.proc.poll() is None:
            self.proc.wait(10)

    def output(self) -> str:
        """What the daemon logged so far.

        Read with pread: the daemon shares this file's offset (it is the same open file), so a
        seek here would make its next line overwrite the start of the log."""
        fd = self.log.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")


def parse(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def total(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items()))


def promtool() -> str | None:
    return shutil.which("promtool")


def query(dsn: str, text: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Rows of one statement (none for a statement that returns no rows)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(text, params)
        return cur.fetchall() if cur.description is not None else []


def register(dsn: str) -> None:
    """Register opsapp's workflows, as a starting daemon would."""
    sys.path.insert(0, str(HERE))
    import opsapp

    from orchwf import Client, WorkflowDefinition

    with Client(dsn) as client:
        for value in vars(opsapp).values():
            if isinstance(value, WorkflowDefinition):
                client.register_workflow(value)


def run_one(dsn: str, outcome: str, *, error: str = "boom", worker: str = "test:1:1",
            queues: tuple[str, ...] = ("default",), workflows: tuple[str, ...] | None = None) -> tuple[str, str] | None:
    """Play a worker through the SQL API: claim one ready step, finish it with ``outcome``.

    Returns (instance id, step id) of the step, or None when nothing was ready.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        if workflows is None:
            workflows = tuple(r[0] for r in conn.execute(
                "SELECT workflow_id FROM orchwf_workflow_definitions").fetchall())
        row = conn.execute("SELECT step_inst_id, workflow_inst_id, step_id, lease_token FROM"
                           " orchwf_claim_steps(%s, %s, %s, 1, 30, false)",
                           (worker, list(queues), list(workflows))).fetchone()
        if row is None:
            return None
        step_inst, inst, step_id, token = row
        output = {step_id: True} if outcome == "completed" else None
        from psycopg.types.json import Jsonb

        conn.execute("SELECT * FROM orchwf_finish_steps(%s, %s, %s, %s::jsonb[], %s, %s, %s)",
                     ([step_inst], [token], [outcome], [Jsonb(output) if output else None],
                      [None if outcome == "completed" else error], [3], [0.0]))
        return str(inst), step_id
