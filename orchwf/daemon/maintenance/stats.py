"""The stats rollup: the dashboard's per-minute trends of the last hour.

Every ``EVERY`` seconds one supervisor (the others find the rollup's advisory lock taken
and skip) adds what happened since its last run to ``orchwf_stats_minutes`` (instances
finished, failed and cancelled, from history's BRIN index on completed_at; the claims'
queue-wait samples, into a histogram per open minute for p50 and p99) and samples each
queue's backlog into ``orchwf_queue_minutes`` (sql/api/stats.sql). Each finish and sample
is counted once, so a run costs about ``2 * LAG_SECONDS`` of throughput, not the minutes
it covers. The overview reads those small tables instead of history, so it costs the same
with two million finished instances as with none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from ...db.queries import Queries

EVERY = 10.0            # seconds between runs: how fresh the overview's counts are
LAG_SECONDS = 10.0      # finishes this recent are counted again next run (late commits)
KEEP_SECONDS = 2 * 86400.0  # rows older than this are deleted


@dataclass
class StatsResult:
    minutes: int  # minutes written (0: another supervisor ran it, or nothing was open)


class StatsRollup:
    def __init__(self, schema: str, every: float = EVERY) -> None:
        self.q = Queries.of(schema)
        self.every = every
        self.next_run = 0.0

    def due(self, now: float) -> bool:
        return now >= self.next_run

    def run_once(self, conn: psycopg.Connection[Any], now: float = 0.0) -> StatsResult:
        self.next_run = now + self.every
        return StatsResult(self.q.roll_up_stats(conn, LAG_SECONDS, KEEP_SECONDS))
