"""orchwf under benchmark: the real daemon (``orchwf worker``) as a subprocess."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from ..common import WORKERS, Proc, children, fresh_database, log, spawn, wait_until
from .base import System

APP = "bench.apps.orchwf_app"
HOT_TABLES = ["orchwf_workflow_instances", "orchwf_step_instances", "orchwf_ready_steps",
              "orchwf_workflow_events"]


class OrchwfSystem(System):
    name = "orchwf"

    def __init__(self, concurrency: int = 50, workers: int = WORKERS, setup_sql: str = "") -> None:
        super().__init__()
        self.concurrency = concurrency
        self.workers = workers
        self.setup_sql = setup_sql  # run after the migrations (ablations for the profile)
        self.settings = {
            "worker": f"orchwf worker --workers {workers} --concurrency {concurrency} --metrics-port 0",
            "client": "orchwf.client.enqueue_many / enqueue (psycopg 3)",
            "durability": "all tables logged, synchronous_commit as configured on the server",
        }
        self.hot_tables = HOT_TABLES

    # -- setup ----------------------------------------------------------------------------

    def setup(self, server_dsn: str, dbname: str) -> None:
        from orchwf.client import register_workflow
        from orchwf.db.migrations import migrate

        from ..apps import orchwf_app

        self.dsn = fresh_database(server_dsn, dbname)
        migrate(self.dsn)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            if self.setup_sql:
                conn.execute(self.setup_sql)
                self.settings["ablation"] = self.setup_sql
            for d in orchwf_app.DEFINITIONS:
                register_workflow(conn, d)
        self.conn = psycopg.connect(self.dsn, autocommit=True)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    # -- enqueue --------------------------------------------------------------------------

    def enqueue_batch(self, n: int, batch: int = 1000, workflow: str = "bench_noop") -> float:
        from orchwf.client import enqueue_many

        assert self.conn is not None
        t0 = time.perf_counter()
        left = n
        while left > 0:
            k = min(batch, left)
            with self.conn.transaction():
                enqueue_many(self.conn, workflow, [{} for _ in range(k)])
            left -= k
        return time.perf_counter() - t0

    def load(self, n: int, batch: int = 1000, workflow: str = "bench_noop") -> float:
        """Enqueue ``n`` instances in ONE transaction (ANALYZE included): workers see them all at once."""
        from orchwf.client import enqueue_many

        assert self.conn is not None
        t0 = time.perf_counter()
        with self.conn.transaction():
            for i in range(0, n, batch):
                enqueue_many(self.conn, workflow, [{} for _ in range(min(batch, n - i))])
            self.conn.execute("ANALYZE")
        return time.perf_counter() - t0

    def enqueue_one(self, workflow: str = "bench_noop") -> tuple[Any, float]:
        """Enqueue one instance in its own transaction; return (id, commit wall time)."""
        from orchwf.client import enqueue

        assert self.conn is not None
        with self.conn.transaction():
            iid = enqueue(self.conn, workflow, {})
        return iid, time.time()

    def enqueue_timed_batch(self, k: int, workflow: str = "bench_noop") -> tuple[list[Any], float]:
        from orchwf.client import enqueue_many

        assert self.conn is not None
        with self.conn.transaction():
            ids = enqueue_many(self.conn, workflow, [{} for _ in range(k)])
        return ids, time.time()

    # -- workers --------------------------------------------------------------------------

    def start_workers(self, logdir: Path) -> Proc:
        args = [sys.executable, "-m", "orchwf", "worker", "--app", APP, "--dsn", self.dsn,
                "--workers", str(self.workers), "--concurrency", str(self.concurrency),
                "--metrics-port", "0", "--log-level", "WARNING"]
        proc = Proc("orchwf", spawn(args, logdir / "orchwf-worker.log"), logdir / "orchwf-worker.log")
        try:
            wait_until(lambda: len(children(proc.popen.pid)) >= self.workers or proc.popen.poll() is not None,
                       30, what="orchwf workers to fork")
            wait_until(lambda: self._registered_workers() >= self.workers or proc.popen.poll() is not None,
                       30, what="orchwf workers to connect")
        except TimeoutError:
            proc.stop()
            raise
        if proc.popen.poll() is not None:
            raise RuntimeError(f"orchwf worker exited: {proc.tail()}")
        return proc

    def _registered_workers(self) -> int:
        assert self.conn is not None
        return self.conn.execute("SELECT count(*) FROM orchwf_workers WHERE role = 'worker'").fetchone()[0]  # type: ignore[index]

    def process_roles(self, proc: Proc) -> dict[str, list[int]]:
        return {"supervisor": [proc.popen.pid], "worker": children(proc.popen.pid)}

    # -- observation ----------------------------------------------------------------------

    def remaining(self) -> int:
        assert self.conn is not None
        return self.conn.execute(  # type: ignore[index]
            "SELECT count(*) FROM orchwf_workflow_instances WHERE status IN ('pending', 'running')"
        ).fetchone()[0]

    def failed(self) -> int:
        assert self.conn is not None
        return self.conn.execute(  # type: ignore[index]
            "SELECT count(*) FROM orchwf_workflow_instances WHERE status NOT IN ('pending', 'running', 'completed')"
        ).fetchone()[0]

    def drain_window(self, proc: Proc | None = None) -> tuple[float, float]:
        """(first step start, last step completion) as wall-clock seconds."""
        assert self.conn is not None
        row = self.conn.execute(
            "SELECT extract(epoch FROM min(started_at)), extract(epoch FROM max(completed_at))"
            " FROM orchwf_step_instances"
        ).fetchone()
        assert row is not None
        return float(row[0]), float(row[1])

    def start_times(self, ids: list[Any], proc: Proc | None = None) -> dict[str, float]:
        """Instance id -> wall time its (single) step started (recorded by the step)."""
        assert self.conn is not None
        rows = self.conn.execute(
            "SELECT workflow_inst_id::text, (output->>('t_' || step_id))::float8"
            " FROM orchwf_step_instances WHERE workflow_inst_id = ANY(%s::uuid[]) AND status = 'completed'",
            ([str(i) for i in ids],),
        ).fetchall()
        return {r[0]: r[1] for r in rows}

    def latencies(self, samples: list[tuple[list[Any], float]]) -> list[tuple[float, float]]:
        """(commit time, start time) of every instance in ``samples`` [(ids, commit time)]:
        one join through a temporary table instead of a query per batch."""
        assert self.conn is not None
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE bench_samples (id uuid, t_commit float8) ON COMMIT DROP")
            with cur.copy("COPY bench_samples (id, t_commit) FROM STDIN") as copy:
                for ids, t_commit in samples:
                    for i in ids:
                        copy.write_row((str(i), t_commit))
            cur.execute("ANALYZE bench_samples")
            rows = cur.execute(
                "SELECT x.t_commit, (s.output->>('t_' || s.step_id))::float8 FROM bench_samples x"
                " JOIN orchwf_step_instances s ON s.workflow_inst_id = x.id WHERE s.status = 'completed'"
            ).fetchall()
        return [(float(a), float(b)) for a, b in rows]

    def steps_per_second(self, since: float) -> list[tuple[float, int]]:
        """(second since ``since``, steps completed in it): the DAG's throughput over time
        (its instances finish only with their join, so counting instances would mislead)."""
        assert self.conn is not None
        rows = self.conn.execute(
            "SELECT floor(extract(epoch FROM completed_at) - %s)::int AS sec, count(*)"
            " FROM orchwf_step_instances WHERE completed_at IS NOT NULL GROUP BY 1 ORDER BY 1",
            (since,),
        ).fetchall()
        return [(float(sec) + 0.5, int(n)) for sec, n in rows if sec >= 0]

    def dag_delays(self, ids: list[Any] | None = None) -> dict[str, Any]:
        """Per DAG instance (of ``ids``, else all): child start minus parent completed_at
        (the timestamp of the finish transaction that released it; for the join, of its
        last parent). One pass over the steps, grouped by instance."""
        assert self.conn is not None
        rows = self.conn.execute(
            """
            SELECT max(extract(epoch FROM completed_at)::float8) FILTER (WHERE step_id = 'start'),
                   max(extract(epoch FROM completed_at)::float8) FILTER (WHERE step_id LIKE 'f%%'),
                   array_agg((output->>('t_' || step_id))::float8) FILTER (WHERE step_id LIKE 'f%%'),
                   max((output->>'t_join')::float8) FILTER (WHERE step_id = 'join')
            FROM orchwf_step_instances
            WHERE status = 'completed' AND (%(ids)s::uuid[] IS NULL OR workflow_inst_id = ANY (%(ids)s::uuid[]))
            GROUP BY workflow_inst_id
            """,
            {"ids": None if ids is None else [str(i) for i in ids]},
        ).fetchall()
        delays: list[float] = []
        for start_done, last_fan_done, fan_starts, join_start in rows:
            if start_done is not None:
                delays.extend((t - start_done) * 1000.0 for t in fan_starts or [] if t is not None)
            if last_fan_done is not None and join_start is not None:
                delays.append((join_start - last_fan_done) * 1000.0)
        return {"delays_ms": delays}

    def describe(self) -> None:
        log(f"orchwf: {self.settings['worker']}")
