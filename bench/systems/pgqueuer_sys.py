"""pgqueuer under benchmark: its QueueManager on asyncpg, in WORKERS processes."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from ..common import WORKERS, Proc, fresh_database, one, rows, spawn, wait_until
from .base import System

# The queue (a row per job waiting or running) and where finished jobs are logged.
RUNTIME_TABLES = ("pgqueuer",)
HISTORY_TABLES = ("pgqueuer_log", "pgqueuer_statistics")


class PgqueuerSystem(System):
    name = "pgqueuer"
    knob = "batch_size"
    runtime_tables = RUNTIME_TABLES
    history_tables = HISTORY_TABLES

    def __init__(self, concurrency: int | None = None, workers: int = WORKERS) -> None:
        super().__init__(concurrency, workers)
        import pgqueuer

        run_args = "" if concurrency is None else f"batch_size={concurrency}"
        self.settings = {
            "version": getattr(pgqueuer, "__version__", "?"),
            "worker": f"{workers} processes x QueueManager.run({run_args}) on asyncpg  [{self.knob_label()}]",
            "client": "Queries.enqueue (asyncpg); lists for a batch; web enqueue: Queries.enqueue of one job "
                      "on an asyncpg pool (AsyncpgPoolDriver)",
            "schema": "Queries.install() + optimize_autovacuum() (the docs' `pgq autovac`), durability=durable",
        }
        self.loop = asyncio.new_event_loop()
        self.aconn: Any = None
        self.queries: Any = None
        self.dumps: list[Path] = []

    def _run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def setup(self, server_dsn: str, dbname: str) -> None:
        import asyncpg
        from pgqueuer import AsyncpgDriver, Queries

        self.dsn = fresh_database(server_dsn, dbname)
        self.url = _url(self.dsn)
        self.aconn = self._run(asyncpg.connect(self.url))
        self.queries = Queries(AsyncpgDriver(self.aconn))
        self._run(self.queries.install())
        self._run(self.queries.optimize_autovacuum())
        self.conn = psycopg.connect(self.dsn, autocommit=True)

    def close(self) -> None:
        if self.aconn is not None:
            self._run(self.aconn.close())
            self.aconn = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.loop.close()

    def enqueue_batch(self, n: int, batch: int = 1000) -> float:
        t0 = time.perf_counter()
        left = n
        while left > 0:
            k = min(batch, left)
            self._run(self.queries.enqueue(["noop"] * k, [None] * k, [0] * k))
            left -= k
        return time.perf_counter() - t0

    def load(self, n: int, batch: int = 1000) -> float:
        async def body() -> None:
            async with self.aconn.transaction():
                for i in range(0, n, batch):
                    k = min(batch, n - i)
                    await self.queries.enqueue(["noop"] * k, [None] * k, [0] * k)
                await self.aconn.execute("ANALYZE")

        t0 = time.perf_counter()
        self._run(body())
        return time.perf_counter() - t0

    def enqueue_one(self) -> tuple[Any, float]:
        ids = self._run(self.queries.enqueue("noop", None, 0))
        return int(ids[0]), time.time()

    def enqueue_timed_batch(self, k: int) -> tuple[list[Any], float]:
        ids = self._run(self.queries.enqueue(["noop"] * k, [None] * k, [0] * k))
        return [int(i) for i in ids], time.time()

    def default_concurrency(self) -> int | None:
        import inspect

        from pgqueuer import QueueManager

        default = inspect.signature(QueueManager.run).parameters["batch_size"].default
        return int(default) if isinstance(default, int) else None

    def web_enqueue(self, n: int) -> float:
        import asyncpg
        from pgqueuer import AsyncpgPoolDriver, Queries

        async def body() -> float:
            async with asyncpg.create_pool(self.url, min_size=2, max_size=4) as pool:
                queries = Queries(AsyncpgPoolDriver(pool))
                for _ in range(20):  # warm up connections and statements
                    await queries.enqueue("noop", None, 0)
                t0 = time.perf_counter()
                for _ in range(n):
                    await queries.enqueue("noop", None, 0)
                return time.perf_counter() - t0

        return float(self._run(body()))

    def launch(self, logdir: Path) -> Proc:
        procs = []
        self.dumps = []
        for i in range(self.workers):
            dump = logdir / f"pgqueuer-starts-{i}.json"
            dump.unlink(missing_ok=True)
            self.dumps.append(dump)
            args = [sys.executable, "-m", "bench.apps.pgqueuer_worker", "--dsn", self.url, "--dump", str(dump)]
            if self.concurrency is not None:
                args += ["--batch-size", str(self.concurrency)]
            procs.append(spawn(args, logdir / f"pgqueuer-worker-{i}.log"))
        return Proc("pgqueuer", procs[0], logdir / "pgqueuer-worker-0.log", extra=procs[1:])

    def wait_ready(self, proc: Proc) -> None:
        # Ready when every worker is connected and listening (its connection has run LISTEN).
        wait_until(lambda: self._listeners() >= self.workers or not proc.alive(), 60,
                   what="pgqueuer workers to listen")
        if not proc.alive():
            raise RuntimeError(f"pgqueuer worker exited: {proc.tail()}")
        time.sleep(0.5)

    def _listeners(self) -> int:
        assert self.conn is not None
        mine = [self.conn.info.backend_pid, self.aconn.get_server_pid()]
        return int(one(self.conn, "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database()"
                       " AND backend_type = 'client backend' AND pid <> ALL (%s)", (mine,))["n"])

    def process_roles(self, proc: Proc) -> dict[str, list[int]]:
        return {"worker": [p.pid for p in proc.all]}

    def remaining(self) -> int:
        assert self.conn is not None
        return int(one(self.conn, "SELECT count(*) AS n FROM pgqueuer")["n"])

    def backlog(self) -> int:
        assert self.conn is not None
        return int(one(self.conn, "SELECT count(*) AS n FROM pgqueuer WHERE status = 'queued'")["n"])

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
        """The log row written by the statement that deletes the finished job."""
        assert self.conn is not None
        return float(one(self.conn, "SELECT extract(epoch FROM max(created))::float8 AS t FROM pgqueuer_log"
                         " WHERE status = 'successful' AND created >= to_timestamp(%s)", (since,))["t"])

    def completions_per_second(self, since: float, seconds: int) -> list[int]:
        assert self.conn is not None
        counts = [0] * seconds
        for r in rows(self.conn, "SELECT floor(extract(epoch FROM created) - %(since)s)::int AS sec, count(*) AS n"
                      " FROM pgqueuer_log WHERE status = 'successful' AND created >= to_timestamp(%(since)s)"
                      " AND created < to_timestamp(%(until)s) GROUP BY 1", {"since": since, "until": since + seconds}):
            if 0 <= r["sec"] < seconds:
                counts[r["sec"]] = int(r["n"])
        return counts

    def start_times(self, ids: list[Any], proc: Proc | None = None) -> dict[str, float]:
        starts = self._starts()
        return {str(i): starts[str(i)] for i in ids if str(i) in starts}


def _url(dsn: str) -> str:
    """asyncpg wants a URL; the harness works with libpq conninfo strings."""
    from psycopg.conninfo import conninfo_to_dict

    d = conninfo_to_dict(dsn)
    user = d.get("user", "postgres")
    pw = f":{d['password']}" if d.get("password") else ""
    return f"postgresql://{user}{pw}@{d.get('host', '127.0.0.1')}:{d.get('port', 5432)}/{d['dbname']}"
