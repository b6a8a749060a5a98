"""The dashboard's reads and actions, over a connection pool.

Its SQL is db/queries.py's (sql/queries/dashboard.sql): every value a bound parameter,
filter columns from a constant list. Reads stay cheap on a big history: indexes and the
small runtime tables; big JSON documents are cut in the database (``MAX_JSON_BYTES``) so
a 100 MB output is never shipped to the dashboard.

Rows are plain dicts keyed by column name (``Row``); pages.py documents what it reads.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import psycopg
from psycopg import Connection
from psycopg_pool import ConnectionPool

from ..daemon.maintenance.stats import EVERY, KEEP_SECONDS, LAG_SECONDS
from ..db.errors import translate_errors
from ..db.queries import Queries as Statements
from ..stores.base import is_uuid
from ..types import WorkflowStatus

Row = dict[str, Any]

STATUSES = tuple(s.value for s in WorkflowStatus)
FILTERS = ("workflow_id", "status", "trace_id", "correlation_id", "business_id")
MAX_JSON_BYTES = 64 * 1024      # bigger documents arrive as their first characters only
MAX_ERROR_CHARS = 20_000
MAX_EVENTS = 500                # the newest events of an instance
MAX_CLAIMS = 1000
COUNT_CAP = 10_000              # list totals are exact up to this, then "10000+"
LIVE_SECONDS = 60               # a worker with an older heartbeat is stale
TREND_MINUTES = 60              # the overview's charts: the last hour
MAX_SCHEDULES = 50              # the overview lists the soonest schedules
MAX_KEYS = 50                   # the overview lists the busiest concurrency keys
STALE_SECONDS = EVERY * 1.5     # trends older than this are rolled up by the dashboard itself


class Queries:
    """The dashboard's reads and actions over a connection pool (autocommit connections)."""

    def __init__(self, pool: ConnectionPool, schema: str) -> None:
        self.pool = pool
        self.schema = schema
        self.q = Statements.of(schema)

    # -- reads ----------------------------------------------------------------------------

    def overview(self, window_seconds: float = 300) -> Row:
        """Active counts, finished counts (last hour and last window), queues, workers, and
        the rollup's last ``TREND_MINUTES`` (``trend``, ``backlog_trend``) for the charts, and
        the soonest ``schedules``."""
        with self.pool.connection() as conn:
            self._refresh_trends(conn)
            with conn.transaction():
                self.q.snapshot(conn)
                row = self.q.dashboard_overview(conn, window_seconds, COUNT_CAP * 10, LIVE_SECONDS)
            row["trend"], row["backlog_trend"] = self.q.dashboard_trend(conn, TREND_MINUTES)
            row["schedules"] = self.q.dashboard_schedules(conn, MAX_SCHEDULES)
            row["keys"] = [asdict(k) for k in self.q.concurrency_keys(conn, MAX_KEYS)]
            row["unserved"] = self.q.unserved_versions(conn, LIVE_SECONDS)
        row["window_seconds"] = window_seconds
        return row

    def _refresh_trends(self, conn: Connection[Any]) -> None:
        """Roll the trends up when no daemon has for a while (an in-process engine's
        database): a running daemon's maintenance keeps them fresher than ``STALE_SECONDS``,
        so then this does nothing. A role that may not write shows what is there."""
        try:
            self.q.roll_up_stats(conn, LAG_SECONDS, KEEP_SECONDS, if_older_than=STALE_SECONDS)
        except (psycopg.errors.InsufficientPrivilege, psycopg.errors.ReadOnlySqlTransaction):
            pass

    def list_instances(self, filters: dict[str, str], limit: int, offset: int) -> tuple[list[Row], int]:
        """One page, newest first, and the total (exact up to ``COUNT_CAP``)."""
        wanted = {k: filters[k] for k in FILTERS if filters.get(k)}
        with self.pool.connection() as conn:
            return self.q.dashboard_list(conn, wanted, limit, offset, COUNT_CAP + 1)

    def workflow_ids(self) -> list[str]:
        """Registered workflow IDs, for the list's filter suggestions."""
        with self.pool.connection() as conn:
            return self.q.dashboard_workflow_ids(conn)

    def instance(self, instance_id: str) -> Row | None:
        """The instance with ``steps``, ``events`` (the newest MAX_EVENTS) and ``event_count``."""
        if not is_uuid(instance_id):
            return None
        with self.pool.connection() as conn, conn.transaction():
            # One snapshot for the instance, its steps and its events.
            self.q.snapshot(conn)
            return self.q.dashboard_instance(conn, instance_id, MAX_JSON_BYTES, MAX_ERROR_CHARS, MAX_EVENTS)

    def workers(self) -> tuple[list[Row], list[Row]]:
        """Registered processes (with ``live``), and the running steps (claims) by owner."""
        with self.pool.connection() as conn:
            workers = self.q.dashboard_processes(conn)
            claims = self.q.dashboard_claims(conn, MAX_CLAIMS)
        for w in workers:
            w["live"] = w["heartbeat_age"] < LIVE_SECONDS
        return workers, claims

    # -- actions (the SQL API) --------------------------------------------------------------

    def cancel(self, instance_id: str) -> str:
        with self.pool.connection() as conn, translate_errors():
            return self.q.cancel_workflow(conn, instance_id)

    def resume(self, instance_id: str) -> str:
        with self.pool.connection() as conn, translate_errors():
            return self.q.resume_workflow(conn, instance_id)

    def retry_step(self, instance_id: str, step_id: str) -> str:
        with self.pool.connection() as conn, translate_errors():
            return self.q.retry_step(conn, instance_id, step_id)

    def pause_queue(self, queue: str) -> bool:
        from ..client import check_queue_name

        check_queue_name(queue)
        with self.pool.connection() as conn, translate_errors():
            return self.q.pause_queue(conn, queue)

    def resume_queue(self, queue: str) -> bool:
        from ..client import check_queue_name

        check_queue_name(queue)
        with self.pool.connection() as conn, translate_errors():
            return self.q.resume_queue(conn, queue)
