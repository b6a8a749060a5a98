"""procrastinate under benchmark: its async worker in WORKERS processes."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from ..apps.procrastinate_worker import pool_size
from ..common import WORKERS, Proc, fresh_database, one, rows, spawn, wait_until
from .base import System

# Jobs stay in procrastinate_jobs when they finish (delete_jobs=never, the default): the
# table is both the queue and the history.
RUNTIME_TABLES = ("procrastinate_jobs", "procrastinate_workers")
HISTORY_TABLES = ("procrastinate_jobs", "procrastinate_events")


class ProcrastinateSystem(System):
    name = "procrastinate"
    runtime_tables = RUNTIME_TABLES
    history_tables = HISTORY_TABLES

    def __init__(self, concurrency: int | None = None, workers: int = WORKERS) -> None:
        super().__init__(concurrency, workers)
        import procrastinate

        if concurrency is None:
            worker = "run_worker_async(), PsycopgConnector() with its default pool"
        else:
            worker = f"run_worker_async(concurrency={concurrency}), PsycopgConnector pool max_size={pool_size(concurrency)}"
        self.settings = {
            "version": getattr(procrastinate, "__version__", "?"),
            "worker": f"{workers} processes x {worker}  [{self.knob_label()}]",
            "client": "task.defer_async / batch_defer_async (psycopg 3; the App's connection pool)",
            "schema": "schema_manager.apply_schema_async(), delete_jobs=never (the default)",
        }
        self.loop = asyncio.new_event_loop()
        self.app: Any = None
        self.dumps: list[Path] = []
        self._opened: Any = None

    def _run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def setup(self, server_dsn: str, dbname: str) -> None:
        from ..apps.procrastinate_worker import make_app

        self.dsn = fresh_database(server_dsn, dbname)
        self.app = make_app(self.dsn, 4)
        self._opened = self.app.open_async()
        self._run(self._opened.__aenter__())
        self._run(self.app.schema_manager.apply_schema_async())
        self.task = self.app.tasks["noop"]
        self.conn = psycopg.connect(self.dsn, autocommit=True)

    def close(self) -> None:
        if self._opened is not None:
            self._run(self._opened.__aexit__(None, None, None))
            self._opened = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.loop.close()

    def enqueue_batch(self, n: int, batch: int = 1000) -> float:
        t0 = time.perf_counter()
        left = n
        while left > 0:
            k = min(batch, left)
            self._run(self.task.batch_defer_async(*[{"i": 0}] * k))
            left -= k
        return time.perf_counter() - t0

    def load(self, n: int, batch: int = 1000) -> float:
        async def body() -> None:
            async with await psycopg.AsyncConnection.connect(self.dsn) as conn:
                async with conn.transaction():
                    deferrer = self.task.configure(connection=conn)
                    for i in range(0, n, batch):
                        await deferrer.batch_defer_async(*[{"i": 0}] * min(batch, n - i))
                    await conn.execute("ANALYZE")

        t0 = time.perf_counter()
        self._run(body())
        return time.perf_counter() - t0

    def enqueue_one(self) -> tuple[Any, float]:
        job_id = self._run(self.task.defer_async(i=0))
        return int(job_id), time.time()

    def enqueue_timed_batch(self, k: int) -> tuple[list[Any], float]:
        ids = self._run(self.task.batch_defer_async(*[{"i": 0}] * k))
        return [int(i) for i in ids], time.time()

    def default_concurrency(self) -> int | None:
        import inspect

        from procrastinate.worker import Worker

        default = inspect.signature(Worker.__init__).parameters["concurrency"].default
        return int(default) if isinstance(default, int) else None

    def web_enqueue(self, n: int) -> float:
        """``defer_async`` through the App's connector (a psycopg AsyncConnectionPool)."""
        for _ in range(20):
            self._run(self.task.defer_async(i=0))
        t0 = time.perf_counter()
        for _ in range(n):
            self._run(self.task.defer_async(i=0))
        return time.perf_counter() - t0

    def launch(self, logdir: Path) -> Proc:
        procs = []
        self.dumps = []
        for i in range(self.workers):
            dump = logdir / f"procrastinate-starts-{i}.json"
            dump.unlink(missing_ok=True)
            self.dumps.append(dump)
            args = [sys.executable, "-m", "bench.apps.procrastinate_worker", "--dsn", self.dsn, "--dump", str(dump)]
            if self.concurrency is not None:
                args += ["--concurrency", str(self.concurrency)]
            procs.append(spawn(args, logdir / f"procrastinate-worker-{i}.log"))
        return Proc("procrastinate", procs[0], logdir / "procrastinate-worker-0.log", extra=procs[1:])

    def wait_ready(self, proc: Proc) -> None:
        wait_until(lambda: self._workers() >= self.workers or not proc.alive(), 60,
                   what="procrastinate workers to register")
        if not proc.alive():
            raise RuntimeError(f"procrastinate worker exited: {proc.tail()}")

    def _workers(self) -> int:
        assert self.conn is not None
        return int(one(self.conn, "SELECT count(*) AS n FROM procrastinate_workers")["n"])

    def process_roles(self, proc: Proc) -> dict[str, list[int]]:
        return {"worker": [p.pid for p in proc.all]}

    def remaining(self) -> int:
        assert self.conn is not None
        return int(one(self.conn, "SELECT count(*) AS n FROM procrastinate_jobs WHERE status IN ('todo', 'doing')")["n"])

    def backlog(self) -> int:
        assert self.conn is not None
        return int(one(self.conn, "SELECT count(*) AS n FROM procrastinate_jobs WHERE status = 'todo'")["n"])

    def failed(self) -> int:
        assert self.conn is not None
        return int(one(self.conn, "SELECT count(*) AS n FROM procrastinate_jobs WHERE status NOT IN ('todo', 'doing', 'succeeded')")["n"])

    def _starts(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for d in self.dumps:
            if d.exists():
                out.update(json.loads(d.read_text()))
        return out

    def first_start(self, since: float, proc: Proc | None = None) -> float:
        """From the start times the jobs recorded (written when the workers stop)."""
        return min(t for t in self._starts().values() if t >= since)

    def last_completion(self, since: float) -> float:
        assert self.conn is not None
        return float(one(self.conn, "SELECT extract(epoch FROM max(at))::float8 AS t FROM procrastinate_events"
                         " WHERE type = 'succeeded' AND at >= to_timestamp(%s)", (since,))["t"])

    def completions_per_second(self, since: float, seconds: int) -> list[int]:
        assert self.conn is not None
        counts = [0] * seconds
        for r in rows(self.conn, "SELECT floor(extract(epoch FROM at) - %(since)s)::int AS sec, count(*) AS n"
                      " FROM procrastinate_events WHERE type = 'succeeded' AND at >= to_timestamp(%(since)s)"
                      " AND at < to_timestamp(%(until)s) GROUP BY 1", {"since": since, "until": since + seconds}):
            if 0 <= r["sec"] < seconds:
                counts[r["sec"]] = int(r["n"])
        return counts

    def start_times(self, ids: list[Any], proc: Proc | None = None) -> dict[str, float]:
        starts = self._starts()
        return {str(i): starts[str(i)] for i in ids if str(i) in starts}
