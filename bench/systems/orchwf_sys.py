"""orchwf under benchmark: the real daemon (``orchwf worker``) as a subprocess.

Every orchwf table name and every piece of orchwf-specific SQL of the harness lives in
this module, in the constants below and the methods that run them: when the storage
changes, this is the one file to change.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from ..common import WORKERS, Proc, children, fresh_database, log, one, rows, spawn, wait_until
from .base import System

APP = "bench.apps.orchwf_app"
WORKFLOW = "bench_noop"  # one no-op step, "s" (bench/apps/orchwf_app.py)

# The tables of the current storage. Runtime: churned by every workflow that runs (the
# claim queue, the running list, live state and its events); history: where finished
# workflows stay until retention deletes them (today the same tables as live state).
RUNTIME_TABLES = ("orchwf_ready_steps", "orchwf_running_steps", "orchwf_live_steps", "orchwf_live_instances")
HISTORY_TABLES = ("orchwf_instance_history", "orchwf_step_history", "orchwf_event_history")

# -- observation ------------------------------------------------------------------------------

REMAINING_SQL = "SELECT count(*) AS n FROM orchwf_live_instances"
FAILED_SQL = "SELECT count(*) AS n FROM orchwf_instance_history WHERE status = 'failed'"
BACKLOG_SQL = "SELECT count(*) AS n FROM orchwf_ready_steps"
WORKERS_SQL = "SELECT count(*) AS n FROM orchwf_workers WHERE role = 'worker'"
FIRST_START_SQL = ("SELECT extract(epoch FROM min(started_at))::float8 AS t FROM orchwf_step_instances"
                   " WHERE started_at >= to_timestamp(%(since)s)")
LAST_COMPLETION_SQL = ("SELECT extract(epoch FROM max(completed_at))::float8 AS t FROM orchwf_step_instances"
                       " WHERE completed_at >= to_timestamp(%(since)s)")
COMPLETIONS_PER_SECOND_SQL = """
    SELECT floor(extract(epoch FROM completed_at) - %(since)s)::int AS sec, count(*) AS n
    FROM orchwf_step_instances
    WHERE completed_at >= to_timestamp(%(since)s) AND completed_at < to_timestamp(%(until)s)
    GROUP BY 1 ORDER BY 1
"""
# A step of a single-step workflow is ready when its enqueue transaction commits
# (created_at: that transaction's timestamp; run_after when scheduled) and starts when a
# claim takes it (started_at: the claim transaction's timestamp).
QUEUE_WAITS_SQL = """
    SELECT floor((extract(epoch FROM coalesce(run_after, created_at)) - %(t0)s) / %(bucket)s)::int AS bucket,
           count(*) AS n,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY wait_ms) AS p50,
           percentile_cont(0.99) WITHIN GROUP (ORDER BY wait_ms) AS p99
    FROM (SELECT created_at, run_after,
                 extract(epoch FROM started_at - coalesce(run_after, created_at)) * 1000 AS wait_ms
          FROM orchwf_step_instances
          WHERE created_at >= to_timestamp(%(t0)s) AND started_at IS NOT NULL) AS s
    GROUP BY 1 ORDER BY 1
"""
# Start times recorded by the steps themselves (bench/apps/orchwf_app.py stamps t_<step>).
START_TIMES_SQL = ("SELECT workflow_inst_id::text AS id, (output->>('t_' || step_id))::float8 AS t"
                   " FROM orchwf_step_instances WHERE workflow_inst_id = ANY(%(ids)s::uuid[]) AND status = 'completed'")
STEPS_PER_SECOND_SQL = """
    SELECT floor(extract(epoch FROM completed_at) - %(since)s)::int AS sec, count(*) AS n
    FROM orchwf_step_instances WHERE completed_at IS NOT NULL GROUP BY 1 ORDER BY 1
"""
DRAIN_WINDOW_SQL = ("SELECT extract(epoch FROM min(started_at))::float8 AS first,"
                    " extract(epoch FROM max(completed_at))::float8 AS last FROM orchwf_step_instances")
DAG_DELAYS_SQL = """
    SELECT max(extract(epoch FROM completed_at)::float8) FILTER (WHERE step_id = 'start') AS start_done,
           max(extract(epoch FROM completed_at)::float8) FILTER (WHERE step_id LIKE 'f%%') AS last_fan_done,
           array_agg((output->>('t_' || step_id))::float8) FILTER (WHERE step_id LIKE 'f%%') AS fan_starts,
           max((output->>'t_join')::float8) FILTER (WHERE step_id = 'join') AS join_start
    FROM orchwf_step_instances
    WHERE status = 'completed' AND (%(ids)s::uuid[] IS NULL OR workflow_inst_id = ANY (%(ids)s::uuid[]))
    GROUP BY workflow_inst_id
"""

# The daemon's hot path, called directly by ``python -m bench sqlcost`` (bench/sqlcost.py
# builds the arguments): the signatures today's workers call (sql/queries/daemon.sql), not
# release 3's overloads, whose SQL-language wrappers are planned again on every call.
CLAIM_SQL = "SELECT * FROM orchwf_claim_steps(%b, %b, %b, %b, %b, false, NULL::text[])"
FINISH_AND_CLAIM_SQL = ("SELECT * FROM orchwf_finish_and_claim(%b, %b, %b, %b::jsonb[], %b, %b, %b, %b::jsonb[],"
                        " %b, %b, %b, %b, %b, false, NULL::text[])")

# -- history ----------------------------------------------------------------------------------

# One finished single-step workflow per row of generate_series, as the daemon leaves it:
# the instance, its step and the four events a run writes (workflow.started,
# step.started, step.completed, workflow.completed), with timestamps spread evenly over
# HISTORY_SPAN ending HISTORY_END_AGO ago: inside the daemon's default retention (7
# days), so the workers do not start pruning the seeded rows during the measured drain.
# Every ID is a time-ordered ID of its row's time (UUID7_AT_SQL), and an instance's
# created_at is the millisecond of its ID, as orchwf_enqueue makes them: a lookup by ID
# finds the instance's history partition, as it would in a real history.
HISTORY_SPAN = "2 hours"
HISTORY_END_AGO = "10 minutes"
# orchwf_uuid7() (sql/api/util.sql) at a given time instead of clock_timestamp(); a
# temporary function of the seeding session.
UUID7_AT_SQL = """
CREATE OR REPLACE FUNCTION pg_temp.bench_uuid7_at(p_at timestamptz) RETURNS uuid
LANGUAGE sql VOLATILE AS $$
    SELECT encode(int8send((floor(extract(epoch FROM p_at) * 1000)::bigint << 16)
                           | floor(random() * 4096)::bigint | 28672)
                  || int8send((floor(random() * 2147483648)::bigint << 31)
                              | floor(random() * 2147483648)::bigint | (-9223372036854775807 - 1)),
                  'hex')::uuid
$$
"""
# The history partitions for the seeded range (the migration makes them from a day ago).
SEED_PARTITIONS_SQL = ("SELECT orchwf_ensure_partitions(now() - %(end_ago)s::interval - %(span)s::interval,"
                       " now()) AS made")
SEED_HISTORY_SQL = """
WITH src AS MATERIALIZED (
    SELECT t0, pg_temp.bench_uuid7_at(t0) AS wid, pg_temp.bench_uuid7_at(t0) AS sid
    FROM (SELECT date_trunc('milliseconds',
                            now() - %(end_ago)s::interval - %(span)s::interval * (1 - i::float8 / %(n)s)) AS t0
          FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS i) AS g
), def AS (
    SELECT version_hash FROM orchwf_workflow_definitions WHERE workflow_id = %(workflow)s
), wi AS (
    INSERT INTO orchwf_instance_history
        (id, workflow_id, status, input, output, context, started_at, completed_at, trace_id, correlation_id,
         run_mode, definition_hash, steps_remaining, created_at, updated_at)
    SELECT wid, %(workflow)s, 'completed', '{}',
           jsonb_build_object('t_s', extract(epoch FROM t0 + interval '12 ms')),
           jsonb_build_object('s', jsonb_build_object('t_s', extract(epoch FROM t0 + interval '12 ms')),
                              't_s', extract(epoch FROM t0 + interval '12 ms')),
           t0, t0 + interval '15 ms', pg_temp.bench_uuid7_at(t0)::text, pg_temp.bench_uuid7_at(t0)::text,
           'daemon', (SELECT version_hash FROM def), 0, t0, t0 + interval '15 ms'
    FROM src
), si AS (
    INSERT INTO orchwf_step_history
        (id, step_id, workflow_inst_id, status, input, output, started_at, completed_at, attempts, max_attempts,
         created_at, updated_at, instance_created_at)
    SELECT sid, 's', wid, 'completed', '{}', jsonb_build_object('t_s', extract(epoch FROM t0 + interval '12 ms')),
           t0 + interval '10 ms', t0 + interval '15 ms', 1, 1, t0, t0 + interval '15 ms', t0
    FROM src
)
INSERT INTO orchwf_event_history (id, workflow_inst_id, step_inst_id, event_type, event_data, "timestamp", created_at,
                                  instance_created_at)
SELECT pg_temp.bench_uuid7_at(src.t0 + e.after), src.wid, e.step_inst_id, e.event_type, e.event_data,
       src.t0 + e.after, src.t0 + e.after, src.t0
FROM src CROSS JOIN LATERAL (VALUES
    (NULL::uuid, 'workflow.started', jsonb_build_object('workflow_id', %(workflow)s), interval '0 ms'),
    (src.sid, 'step.started', '{"step_id": "s"}'::jsonb, interval '10 ms'),
    (src.sid, 'step.completed', '{"duration_ms": 0}'::jsonb, interval '15 ms'),
    (NULL::uuid, 'workflow.completed', '{"duration_ms": 15}'::jsonb, interval '15 ms')
) AS e(step_inst_id, event_type, event_data, after)
"""
# Seeded instances whose created_at is not the time of their ID (must be none).
SEED_MISMATCHES_SQL = ("SELECT count(*) AS n FROM orchwf_instance_history"
                       " WHERE created_at IS DISTINCT FROM orchwf_uuid7_time(id)")
SEED_CHUNK = 250_000


def _cli_default_concurrency() -> int | None:
    """``orchwf worker``'s default ``--concurrency``, read from the CLI itself."""
    try:
        from orchwf.cli.main import cli

        command = cli.commands["worker"]  # type: ignore[attr-defined]
        for param in command.params:
            if param.name == "concurrency":
                return int(param.default)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - only a label
        return None
    return None


class OrchwfSystem(System):
    name = "orchwf"
    knob = "--concurrency"
    app = APP  # the module given to --app
    env: dict[str, str] | None = None  # added to the workers' environment
    runtime_tables = RUNTIME_TABLES
    history_tables = HISTORY_TABLES

    def __init__(self, concurrency: int | None = None, workers: int = WORKERS, setup_sql: str = "") -> None:
        super().__init__(concurrency, workers)
        self.setup_sql = setup_sql  # run after the migrations (ablations for the profile)
        self.settings = {
            "worker": " ".join(self._worker_flags()) + f"  [{self.knob_label()}]",
            "client": "orchwf.client.enqueue_many / enqueue (psycopg 3); web enqueue: enqueue in a transaction "
                      "on a psycopg_pool connection",
            "durability": "all tables logged, synchronous_commit as configured on the server",
        }

    def default_concurrency(self) -> int | None:
        return _cli_default_concurrency()

    def _worker_flags(self) -> list[str]:
        flags = ["orchwf", "worker", "--workers", str(self.workers)]
        if self.concurrency is not None:
            flags += ["--concurrency", str(self.concurrency)]
        return flags + ["--metrics-port", "0"]

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
        self.conn = psycopg.connect(self.dsn, autocommit=True)  # tuple rows: orchwf.client uses it

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _rows(self, query: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Rows by name, on the harness's connection."""
        assert self.conn is not None
        return rows(self.conn, query, params)

    def _one(self, query: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        assert self.conn is not None
        return one(self.conn, query, params)

    # -- enqueue --------------------------------------------------------------------------

    def enqueue_batch(self, n: int, batch: int = 1000, workflow: str = WORKFLOW) -> float:
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

    def load(self, n: int, batch: int = 1000, workflow: str = WORKFLOW) -> float:
        """Enqueue ``n`` instances in ONE transaction (ANALYZE included): workers see them all at once."""
        from orchwf.client import enqueue_many

        assert self.conn is not None
        t0 = time.perf_counter()
        with self.conn.transaction():
            for i in range(0, n, batch):
                enqueue_many(self.conn, workflow, [{} for _ in range(min(batch, n - i))])
            self.conn.execute("ANALYZE")
        return time.perf_counter() - t0

    def enqueue_one(self, workflow: str = WORKFLOW) -> tuple[Any, float]:
        """Enqueue one instance in its own transaction; return (id, commit wall time)."""
        from orchwf.client import enqueue

        assert self.conn is not None
        with self.conn.transaction():
            iid = enqueue(self.conn, workflow, {})
        return iid, time.time()

    def enqueue_timed_batch(self, k: int, workflow: str = WORKFLOW) -> tuple[list[Any], float]:
        from orchwf.client import enqueue_many

        assert self.conn is not None
        with self.conn.transaction():
            ids = enqueue_many(self.conn, workflow, [{} for _ in range(k)])
        return ids, time.time()

    def web_enqueue(self, n: int) -> float:
        from psycopg_pool import ConnectionPool

        from orchwf.client import enqueue

        with ConnectionPool(self.dsn, min_size=2, max_size=4, open=True) as pool:
            pool.wait()

            def one() -> None:
                with pool.connection() as conn, conn.transaction():
                    enqueue(conn, WORKFLOW, {})

            for _ in range(20):  # warm up connections and plans
                one()
            t0 = time.perf_counter()
            for _ in range(n):
                one()
            return time.perf_counter() - t0

    # -- workers --------------------------------------------------------------------------

    def launch(self, logdir: Path) -> Proc:
        args = [sys.executable, "-m", *self._worker_flags(), "--app", self.app, "--dsn", self.dsn,
                "--log-level", "WARNING"]
        logfile = logdir / "orchwf-worker.log"
        return Proc("orchwf", spawn(args, logfile, self.env), logfile)

    def wait_ready(self, proc: Proc) -> None:
        wait_until(lambda: len(children(proc.popen.pid)) >= self.workers or proc.popen.poll() is not None,
                   30, what="orchwf workers to fork")
        wait_until(lambda: self._one(WORKERS_SQL)["n"] >= self.workers or proc.popen.poll() is not None,
                   30, what="orchwf workers to connect")
        if proc.popen.poll() is not None:
            raise RuntimeError(f"orchwf worker exited: {proc.tail()}")

    def process_roles(self, proc: Proc) -> dict[str, list[int]]:
        return {"supervisor": [proc.popen.pid], "worker": children(proc.popen.pid)}

    # -- observation ----------------------------------------------------------------------

    def remaining(self) -> int:
        return int(self._one(REMAINING_SQL)["n"])

    def backlog(self) -> int:
        return int(self._one(BACKLOG_SQL)["n"])

    def failed(self) -> int:
        return int(self._one(FAILED_SQL)["n"])

    def first_start(self, since: float, proc: Proc | None = None) -> float:
        return float(self._one(FIRST_START_SQL, {"since": since})["t"])

    def last_completion(self, since: float) -> float:
        return float(self._one(LAST_COMPLETION_SQL, {"since": since})["t"])

    def completions_per_second(self, since: float, seconds: int) -> list[int]:
        counts = [0] * seconds
        for row in self._rows(COMPLETIONS_PER_SECOND_SQL, {"since": since, "until": since + seconds}):
            if 0 <= row["sec"] < seconds:
                counts[row["sec"]] = int(row["n"])
        return counts

    def queue_waits(self, t0: float, bucket: float, samples: list[tuple[list[Any], float]],
                    proc: Proc | None = None) -> list[dict[str, float]]:
        """Every step's wait, from the database (the samples are not needed)."""
        return [{"bucket": int(r["bucket"]), "n": int(r["n"]), "p50": float(r["p50"]), "p99": float(r["p99"])}
                for r in self._rows(QUEUE_WAITS_SQL, {"t0": t0, "bucket": bucket}) if r["bucket"] >= 0]

    def start_times(self, ids: list[Any], proc: Proc | None = None) -> dict[str, float]:
        """Instance id -> wall time its (single) step started (recorded by the step)."""
        rows = self._rows(START_TIMES_SQL, {"ids": [str(i) for i in ids]})
        return {r["id"]: r["t"] for r in rows}

    def drain_window(self) -> tuple[float, float]:
        """(first step start, last step completion) as wall-clock seconds."""
        row = self._one(DRAIN_WINDOW_SQL)
        return float(row["first"]), float(row["last"])

    def steps_per_second(self, since: float) -> list[tuple[float, int]]:
        """(second since ``since``, steps completed in it): the DAG's throughput over time
        (its instances finish only with their join, so counting instances would mislead)."""
        rows = self._rows(STEPS_PER_SECOND_SQL, {"since": since})
        return [(float(r["sec"]) + 0.5, int(r["n"])) for r in rows if r["sec"] >= 0]

    def dag_delays(self, ids: list[Any] | None = None) -> dict[str, Any]:
        """Per DAG instance (of ``ids``, else all): child start minus parent completed_at
        (the timestamp of the finish transaction that released it; for the join, of its
        last parent). One pass over the steps, grouped by instance."""
        rows = self._rows(DAG_DELAYS_SQL, {"ids": None if ids is None else [str(i) for i in ids]})
        delays: list[float] = []
        for r in rows:
            if r["start_done"] is not None:
                delays.extend((t - r["start_done"]) * 1000.0 for t in r["fan_starts"] or [] if t is not None)
            if r["last_fan_done"] is not None and r["join_start"] is not None:
                delays.append((r["join_start"] - r["last_fan_done"]) * 1000.0)
        return {"delays_ms": delays}

    # -- history --------------------------------------------------------------------------

    def seed_history(self, n: int) -> float:
        """``n`` finished single-step workflows in the history tables, written by the
        server (INSERT ... SELECT generate_series, in chunks), then VACUUM ANALYZE."""
        assert self.conn is not None
        t0 = time.perf_counter()
        params = {"span": HISTORY_SPAN, "end_ago": HISTORY_END_AGO, "workflow": WORKFLOW}
        self.conn.execute(UUID7_AT_SQL)
        self.conn.execute(SEED_PARTITIONS_SQL, params)
        for lo in range(1, n + 1, SEED_CHUNK):
            hi = min(n, lo + SEED_CHUNK - 1)
            self.conn.execute(SEED_HISTORY_SQL, {**params, "lo": lo, "hi": hi, "n": n})
            log(f"orchwf: seeded {hi:,} of {n:,} finished workflows ({time.perf_counter() - t0:.0f}s)")
        mismatches = int(self._one(SEED_MISMATCHES_SQL)["n"])
        if mismatches:
            raise RuntimeError(f"{mismatches:,} instances in history whose created_at is not the time of their ID")
        self.housekeeping()
        return time.perf_counter() - t0
