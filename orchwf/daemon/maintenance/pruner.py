"""The pruner: retention of finished history, and of rows of processes gone silent."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from ...db.queries import Queries

EVERY = 300.0  # seconds between runs
SILENT_PROCESS_SECONDS = 3600.0  # a process row without a heartbeat this long is forgotten


@dataclass
class PruneResult:
    pruned: int  # finished instances removed


class Pruner:
    def __init__(self, schema: str, retention_seconds: float) -> None:
        self.q = Queries.of(schema)
        self.retention_seconds = retention_seconds
        self.next_run = 0.0

    def due(self, now: float) -> bool:
        return self.retention_seconds > 0 and now >= self.next_run

    def run_once(self, conn: psycopg.Connection[Any], now: float = 0.0) -> PruneResult:
        self.next_run = now + EVERY
        pruned = self.q.prune(conn, self.retention_seconds)
        self.q.forget_silent_processes(conn, SILENT_PROCESS_SECONDS)
        return PruneResult(pruned)
