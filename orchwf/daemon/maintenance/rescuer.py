"""The rescuer: takes back claims whose worker is gone.

A dead worker's claims (the supervisor reaped it) go back at once; claims whose lease
expired (a worker on another host, or one that hung) go back on the periodic round.
Either way through the same fenced finish as a worker's own result: retried while the
crash budget lasts (lifecycle.crash_budget), else failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from ...db.queries import Queries
from ...db.rows import RescuedStep


@dataclass
class RescueResult:
    rescued: int  # claims whose lease had expired


class Rescuer:
    def __init__(self, schema: str) -> None:
        self.q = Queries.of(schema)

    def run_once(self, conn: psycopg.Connection[Any]) -> RescueResult:
        """Rescue every claim whose lease expired (at most 1,000 a call)."""
        return RescueResult(self.q.rescue_expired(conn))

    def release_dead(self, conn: psycopg.Connection[Any], worker_id: str) -> list[RescuedStep]:
        """Every claim of a process known to be dead, then its registration."""
        rows = self.q.rescue_process_steps(conn, worker_id)
        self.q.unregister_process(conn, worker_id)
        return rows
