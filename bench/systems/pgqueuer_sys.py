"""pgqueuer under benchmark: its QueueManager on asyncpg, in WORKERS processes."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from ..common import WORKERS, Proc, fresh_database, spawn, wait_until
from .base import System

HOT_TABLES = ["pgqueuer", "pgqueuer_log", "pgqueuer_statistics"]


class PgqueuerSystem(System):
    name = "pgqueuer"

    def __init__(self, batch_size: int = 50, workers: int = WORKERS) -> None:
        super().__init__()
        import pgqueuer

        self.batch_size = batch_size
        self.workers = workers
        self.settings = {
            "version": getattr(pgqueuer, "__version__", "?"),
            "worker": f"{workers} processes x QueueManager.run(batch_size={batch_size}) on asyncpg",
            "client": "Queries.enqueue (asyncpg); lists for a batch",
            "schema": "Queries.install() + optimize_autovacuum() (the docs' `pgq autovac`), durability=durable",
        }
        self.hot_tables = HOT_TABLES
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

    def start_workers(self, logdir: Path) -> Proc:
        procs = []
        self.dumps = []
        for i in range(self.workers):
            dump = logdir / f"pgqueuer-starts-{i}.json"
            dump.unlink(missing_ok=True)
            self.dumps.append(dump)
            args = [sys.executable, "-m", "bench.apps.pgqueuer_worker", "--dsn", self.url,
                    "--batch-size", str(self.batch_size), "--dump", str(dump)]
            procs.append(spawn(args, logdir / f"pgqueuer-worker-{i}.log"))
        proc = Proc("pgqueuer", procs[0], logdir / "pgqueuer-worker-0.log", extra=procs[1:])
        # Ready when every worker is connected and listening (its connection has run LISTEN).
        wait_until(lambda: self._listeners() >= self.workers or not proc.alive(), 60,
                   what="pgqueuer workers to listen")
        if not proc.alive():
            raise RuntimeError(f"pgqueuer worker exited: {proc.tail()}")
        time.sleep(0.5)
        return proc

    def _listeners(self) -> int:
        assert self.conn is not None
        mine = [self.conn.info.backend_pid, self.aconn.get_server_pid()]
        return self.conn.execute(  # type: ignore[index]
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND backend_type = 'client backend' AND pid <> ALL (%s)", (mine,)
        ).fetchone()[0]

    def process_roles(self, proc: Proc) -> dict[str, list[int]]:
        return {"worker": [p.pid for p in proc.all]}

    def remaining(self) -> int:
        assert self.conn is not None
        return self.conn.execute("SELECT count(*) FROM pgqueuer").fetchone()[0]  # type: ignore[index]

    def _starts(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for d in self.dumps:
            if d.exists():
                out.update(json.loads(d.read_text()))
        return out

    def drain_window(self, proc: Proc | None = None) -> tuple[float, float]:
        """First job start (recorded by the job) to the last completion commit (the
        log row written by the same statement that deletes the job)."""
        assert self.conn is not None
        starts = self._starts()
        row = self.conn.execute(
            "SELECT extract(epoch FROM max(created)) FROM pgqueuer_log WHERE status = 'successful'"
        ).fetchone()
        assert row is not None and starts
        return min(starts.values()), float(row[0])

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
