"""The scheduler: steps whose retry backoff (or scheduled start) is due become ready.

It also learns when the next one is due, so the supervisor comes back then rather than
on its fixed interval, and a NOTIFY on orchwf_scheduled (a new backoff) brings it back
at once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import psycopg

from ...db.queries import Queries

IDLE_INTERVAL = 2.0  # seconds between rounds when nothing happens (about 0.5 queries/s)
BUSY_INTERVAL = 1.0  # ... when the last round found work


@dataclass
class ScheduleResult:
    promoted: int
    next_due: float | None  # seconds until the next scheduled step, None: none


class Scheduler:
    def __init__(self, schema: str) -> None:
        self.q = Queries.of(schema)

    def run_once(self, conn: psycopg.Connection[Any]) -> ScheduleResult:
        promoted, next_due = self.q.promote_scheduled(conn)
        return ScheduleResult(promoted, next_due)

    @staticmethod
    def next_round(result: ScheduleResult, found_work: bool) -> float:
        """Seconds until the next round: jittered, sooner when a step is due sooner."""
        interval = (BUSY_INTERVAL if found_work else IDLE_INTERVAL) * random.uniform(0.9, 1.1)
        if result.next_due is not None:
            interval = min(interval, max(0.01, float(result.next_due)))
        return interval
