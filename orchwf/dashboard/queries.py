"""The dashboard's SQL: reads for the pages, and the three actions.

Every table and function name is schema-qualified with ``psycopg.sql.Identifier`` and
every value is a bound parameter. Reads stay cheap on a big history: the overview uses
the status, finished and claim indexes; big JSON documents are cut in the database
(``MAX_JSON_BYTES``) so a 100 MB output is never shipped to the dashboard.

Rows are plain dicts keyed by column name (``Row``); pages.py documents what it reads.
"""

from __future__ import annotations

from typing import Any

from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from ..db.errors import translate_errors
from ..stores.base import is_uuid

Row = dict[str, Any]

STATUSES = ("pending", "running", "retrying", "completed", "failed", "cancelled")
FILTERS = ("workflow_id", "status", "trace_id", "correlation_id", "business_id")
MAX_JSON_BYTES = 64 * 1024      # bigger documents arrive as their first characters only
MAX_ERROR_CHARS = 20_000
MAX_EVENTS = 500                # the newest events of an instance
MAX_CLAIMS = 1000
COUNT_CAP = 10_000              # list totals are exact up to this, then "10000+"
LIVE_SECONDS = 60               # a worker with an older heartbeat is stale


def _json(column: str, alias: str) -> str:
    """``alias`` (the document, if small), ``alias_head`` (pretty text, cut) and ``alias_size``."""
    return (
        f"CASE WHEN pg_column_size({column}) <= %(max_json)s THEN {column} END AS {alias}, "
        f"CASE WHEN pg_column_size({column}) > %(max_json)s "
        f"THEN left(jsonb_pretty({column}), %(max_json)s) END AS {alias}_head, "
        f"pg_column_size({column}) AS {alias}_size"
    )


_OVERVIEW = """
SELECT
  (SELECT coalesce(jsonb_object_agg(a.status, a.n), '{{}}') FROM (
      SELECT status, count(*) AS n FROM {instances}
      WHERE status IN ('pending', 'running', 'retrying') GROUP BY status) a) AS active,
  (SELECT coalesce(jsonb_object_agg(f.status, f.n), '{{}}') FROM (
      SELECT status, count(*) AS n FROM {instances}
      WHERE status IN ('completed', 'failed', 'cancelled')
        AND completed_at >= now() - %(hour)s * interval '1 second'
      GROUP BY status) f) AS last_hour,
  (SELECT coalesce(jsonb_object_agg(f.status, f.n), '{{}}') FROM (
      SELECT status, count(*) AS n FROM {instances}
      WHERE status IN ('completed', 'failed', 'cancelled')
        AND completed_at >= now() - %(window)s * interval '1 second'
      GROUP BY status) f) AS last_window,
  (SELECT coalesce(jsonb_agg(jsonb_build_object(
        'queue', q.queue, 'ready', q.ready,
        'oldest_age', extract(epoch FROM now() - q.oldest_ready_at)::float8) ORDER BY q.queue), '[]')
   FROM {queue_stats}(%(cap)s) q) AS queues,
  (SELECT count(*) FROM {steps} WHERE status = 'running') AS running_steps,
  (SELECT count(*) FROM {steps} WHERE run_after IS NOT NULL) AS scheduled_steps,
  (SELECT count(*) FROM {workers}
   WHERE role = 'worker' AND heartbeat_at > now() - %(live)s * interval '1 second') AS live_workers
"""

_LIST = """
SELECT id::text AS id, workflow_id, status, queue, priority, run_mode, created_at, started_at,
       completed_at, left(error, 300) AS error, retry_count, trace_id, correlation_id, business_id
FROM {instances} {where}
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s OFFSET %(offset)s
"""
_COUNT = "SELECT count(*) AS n FROM (SELECT 1 FROM {instances} {where} LIMIT %(cap)s) c"

_INSTANCE = """
SELECT i.id::text AS id, i.workflow_id, i.status, i.queue, i.priority, i.run_mode, i.created_at,
       i.started_at, i.completed_at, left(i.error, %(max_error)s) AS error, i.retry_count,
       i.trace_id, i.correlation_id, i.business_id, i.idempotency_key, i.steps_remaining,
       {input}, {output}, {metadata},
       d.name AS workflow_name,
       (SELECT jsonb_object_agg(s->>'id', s->'dependencies')
        FROM jsonb_array_elements(d.definition->'steps') s) AS definition_deps
FROM {instances} i LEFT JOIN {definitions} d ON d.workflow_id = i.workflow_id
WHERE i.id = %(id)s
"""

_STEPS = """
SELECT s.id::text AS id, s.step_id, s.status, s.attempts, s.max_attempts, s.retry_count, s.crashes,
       s.required, s.duration_ms, s.started_at, s.completed_at, s.last_retry_at, s.run_after,
       s.lease_owner, s.lease_expires_at, s.dependencies, s.execution_order,
       left(s.error, %(max_error)s) AS error, {input}, {output}
FROM {steps} s
WHERE s.workflow_inst_id = %(id)s
ORDER BY s.execution_order, s.step_id
"""

_EVENTS = """
SELECT * FROM (
    SELECT e.seq, e.step_inst_id::text AS step_inst_id, e.event_type, e."timestamp" AS at,
           {data}
    FROM {events} e
    WHERE e.workflow_inst_id = %(id)s
    ORDER BY e."timestamp" DESC, e.seq DESC
    LIMIT %(max_events)s) newest
ORDER BY at, seq
"""
_EVENT_COUNT = "SELECT count(*) AS n FROM {events} WHERE workflow_inst_id = %(id)s"

_WORKERS = """
SELECT w.worker_id, w.role, w.host, w.pid, w.supervisor_id, w.queues, w.workflows, w.concurrency,
       w.started_at, w.heartbeat_at,
       extract(epoch FROM now() - w.heartbeat_at)::float8 AS heartbeat_age
FROM {workers} w
ORDER BY w.host, w.supervisor_id, w.role DESC, w.started_at
"""
_CLAIMS = """
SELECT s.lease_owner, s.workflow_inst_id::text AS instance_id, i.workflow_id, s.step_id, s.attempts,
       s.started_at, extract(epoch FROM s.lease_expires_at - now())::float8 AS lease_expires_in
FROM {steps} s JOIN {instances} i ON i.id = s.workflow_inst_id
WHERE s.status = 'running'
ORDER BY s.lease_owner, s.lease_expires_at
LIMIT %(max_claims)s
"""


class Queries:
    """The dashboard's reads and actions over a connection pool (autocommit connections)."""

    def __init__(self, pool: ConnectionPool, schema: str) -> None:
        self.pool = pool
        self.schema = schema
        self._names = {
            name: sql.Identifier(schema, f"orchwf_{name}")
            for name in ("workflow_instances", "step_instances", "workflow_events", "workers",
                         "workflow_definitions", "queue_stats")
        }

    def _sql(self, text: str, **columns: str) -> sql.Composed:
        n = self._names
        return sql.SQL(text).format(  # type: ignore[arg-type]
            instances=n["workflow_instances"], steps=n["step_instances"], events=n["workflow_events"],
            workers=n["workers"], definitions=n["workflow_definitions"], queue_stats=n["queue_stats"],
            **{k: sql.SQL(v) for k, v in columns.items()},  # type: ignore[arg-type]
        )

    def _all(self, query: sql.Composed, params: dict[str, Any]) -> list[Row]:
        with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(query, params)
            return cur.fetchall()

    # -- reads ----------------------------------------------------------------------------

    def overview(self, window_seconds: float = 300) -> Row:
        """Active counts, finished counts (last hour and last window), queues, workers."""
        params = {"hour": 3600, "window": window_seconds, "cap": COUNT_CAP * 10, "live": LIVE_SECONDS}
        row = self._all(self._sql(_OVERVIEW), params)[0]
        row["window_seconds"] = window_seconds
        return row

    def list_instances(self, filters: dict[str, str], limit: int, offset: int) -> tuple[list[Row], int]:
        """One page, newest first, and the total (exact up to ``COUNT_CAP``)."""
        conditions = [sql.SQL("{} = {}").format(sql.Identifier(key), sql.Placeholder(key))
                      for key in FILTERS if filters.get(key)]
        where = sql.SQL("WHERE ") + sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("")
        params: dict[str, Any] = {k: filters[k] for k in FILTERS if filters.get(k)}
        params |= {"limit": limit, "offset": offset, "cap": COUNT_CAP + 1}
        n = self._names
        rows = self._all(sql.SQL(_LIST).format(instances=n["workflow_instances"], where=where), params)
        total = self._all(sql.SQL(_COUNT).format(instances=n["workflow_instances"], where=where), params)
        return rows, int(total[0]["n"])

    def workflow_ids(self) -> list[str]:
        """Registered workflow IDs, for the list's filter suggestions."""
        query = sql.SQL("SELECT workflow_id FROM {} ORDER BY workflow_id LIMIT 500").format(
            self._names["workflow_definitions"])
        return [r["workflow_id"] for r in self._all(query, {})]

    def instance(self, instance_id: str) -> Row | None:
        """The instance with ``steps``, ``events`` (the newest MAX_EVENTS) and ``event_count``."""
        if not is_uuid(instance_id):
            return None
        params = {"id": instance_id, "max_json": MAX_JSON_BYTES, "max_error": MAX_ERROR_CHARS,
                  "max_events": MAX_EVENTS}
        with self.pool.connection() as conn, conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            # One snapshot for the instance, its steps and its events.
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            cur.execute(self._sql(_INSTANCE, input=_json("i.input", "input"),
                                  output=_json("i.output", "output"),
                                  metadata=_json("i.metadata", "metadata")), params)
            inst = cur.fetchone()
            if inst is None:
                return None
            cur.execute(self._sql(_STEPS, input=_json("s.input", "input"),
                                  output=_json("s.output", "output")), params)
            inst["steps"] = cur.fetchall()
            cur.execute(self._sql(_EVENTS, data=_json("e.event_data", "data")), params)
            inst["events"] = cur.fetchall()
            cur.execute(self._sql(_EVENT_COUNT), params)
            count = cur.fetchone()
            inst["event_count"] = int(count["n"]) if count else 0
        return inst

    def workers(self) -> tuple[list[Row], list[Row]]:
        """Registered processes (with ``live``), and the running steps (claims) by owner."""
        workers = self._all(self._sql(_WORKERS), {})
        for w in workers:
            w["live"] = w["heartbeat_age"] < LIVE_SECONDS
        claims = self._all(self._sql(_CLAIMS), {"max_claims": MAX_CLAIMS})
        return workers, claims

    # -- actions (sql/002_daemon.sql, sql/003_ops.sql) -------------------------------------

    def _call(self, function: str, *args: str) -> str:
        query = sql.SQL("SELECT {}({})").format(
            sql.Identifier(self.schema, function), sql.SQL(", ").join([sql.Placeholder()] * len(args)))
        with self.pool.connection() as conn, translate_errors():
            row = conn.execute(query, args).fetchone()
        return str(row[0]) if row else ""

    def cancel(self, instance_id: str) -> str:
        return self._call("orchwf_cancel_workflow", instance_id)

    def resume(self, instance_id: str) -> str:
        return self._call("orchwf_resume_workflow", instance_id)

    def retry_step(self, instance_id: str, step_id: str) -> str:
        return self._call("orchwf_retry_step", instance_id, step_id)
