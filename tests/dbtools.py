"""Database shortcuts for tests that need a state no public call makes quickly, such as
thousands of finished instances, or instances finished at a chosen time. They use the
SQL API's own functions, so the rows are exactly what orchwf itself writes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg


def finish(conn_or_dsn: Any, ids: list[str], status: str = "completed", completed_at: datetime | str | None = None,
           offset: str = "0 s") -> None:
    """End live instances as ``status`` at ``completed_at`` (+ ``offset``; default now)
    and move them to history, as the finish does."""
    sql = ("WITH ended AS (UPDATE orchwf_live_instances SET status = %(status)s,"
           " completed_at = coalesce(%(at)s::timestamptz, now()) + %(offset)s::interval, steps_remaining = 0"
           " WHERE id = ANY(%(ids)s::uuid[]) RETURNING id)"
           " SELECT orchwf_archive_instances(array_agg(id)) FROM ended")
    params = {"status": status, "at": completed_at, "offset": offset, "ids": ids}
    if isinstance(conn_or_dsn, str):
        with psycopg.connect(conn_or_dsn, autocommit=True) as conn:
            conn.execute(sql, params)
    else:
        conn_or_dsn.execute(sql, params)
