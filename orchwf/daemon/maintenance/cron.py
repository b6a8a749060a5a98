"""The cron service: start the instances of due schedules (docs/schedules.md).

Every supervisor runs it. One run, in one transaction: lock the due schedules
(``FOR UPDATE SKIP LOCKED``: another host skips them, then finds them moved on), and for
each enqueue the instances its misfire policy fires, with the idempotency key
``cron:<name>:<tick>``, and move its ``next_run_at`` past them. Killed anywhere in
between, the transaction rolls back whole: the tick is neither lost nor started twice.
Due means by the database's clock, so hosts whose clocks disagree agree on the ticks.

It runs when the earliest schedule is due, and at least every ``EVERY`` seconds (to see
schedules added or changed elsewhere); an idle host costs one query per ``EVERY``.

``ORCHWF_CRON_CLOCK_SPEED`` (tests only) runs the schedules' clock faster than the
database's, from ``ORCHWF_CRON_CLOCK_ANCHOR`` (epoch seconds): with 60, a minute of
ticks passes each second, so tests see many ticks of a real five-field schedule.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg

from ...client import enqueue_many
from ...cron import CronSchedule
from ...db.queries import Queries
from ...db.rows import ScheduleRow
from ...errors import OrchwfError
from ...schedules import tick_key, ticks_to_fire

log = logging.getLogger("orchwf.supervisor")

EVERY = 30.0          # the longest wait between two runs
SOONEST = 0.2         # the shortest
BATCH = 100           # schedules per run (more: the next run follows at once)


@dataclass
class CronResult:
    started: int            # instances enqueued
    fired: int              # schedules that were due
    next_in: float | None   # seconds until the earliest schedule is due (None: none)


class Clock:
    """The schedules' clock: the database's, or (tests) a faster one from an anchor."""

    def __init__(self, speed: float = 1.0, anchor: float = 0.0) -> None:
        if speed <= 0:
            raise ValueError("the clock speed must be positive")
        self.speed = speed
        self.anchor = datetime.fromtimestamp(anchor, timezone.utc)

    @classmethod
    def from_env(cls) -> Clock:
        speed = float(os.environ.get("ORCHWF_CRON_CLOCK_SPEED") or 1.0)
        return cls(speed, float(os.environ.get("ORCHWF_CRON_CLOCK_ANCHOR") or 0.0))

    def now(self, db_now: datetime) -> datetime:
        if self.speed == 1.0:
            return db_now
        return self.anchor + (db_now - self.anchor) * self.speed

    def real_seconds(self, seconds: float) -> float:
        return seconds / self.speed


class CronService:
    def __init__(self, schema: str, clock: Clock | None = None) -> None:
        self.q = Queries.of(schema)
        self.schema = schema
        self.clock = clock or Clock.from_env()
        self.next_run = 0.0

    def due(self, now: float) -> bool:
        return now >= self.next_run

    def run_once(self, conn: psycopg.Connection[Any], now: float = 0.0) -> CronResult:
        started = fired = 0
        with conn.transaction():
            at = self.clock.now(self.q.db_now(conn))
            rows = self.q.due_schedules(conn, at, BATCH)
            for row in rows:
                started += self._fire(conn, row, at)
                fired += 1
            earliest = self.q.next_schedule_due(conn)
        next_in = None if earliest is None else (earliest - at).total_seconds()
        wait = EVERY if next_in is None else min(EVERY, max(SOONEST, self.clock.real_seconds(next_in)))
        self.next_run = now + (0.0 if len(rows) == BATCH else wait)
        return CronResult(started, fired, next_in)

    def _fire(self, conn: psycopg.Connection[Any], row: ScheduleRow, at: datetime) -> int:
        """One schedule's due ticks, in a savepoint: a schedule that fails (its workflow
        was never registered, or is gone) records the error and waits for its next tick,
        and the others go on."""
        try:
            cron = CronSchedule.parse(row.cron, row.timezone)
        except OrchwfError as exc:  # e.g. a time zone this host's tzdata does not have
            self._failed(conn, row, at + timedelta(minutes=1), str(exc))
            return 0
        ticks, next_run = ticks_to_fire(cron, row.misfire, row.next_run_at, at)
        if not ticks:
            self.q.schedule_fired(conn, row.name, next_run, None, None, None)
            return 0
        try:
            with conn.transaction():
                ids = enqueue_many(conn, row.workflow_id, [row.input] * len(ticks),
                                   metadata={"orchwf_schedule": row.name},
                                   idempotency_keys=[tick_key(row.name, t) for t in ticks], schema=self.schema)
        except OrchwfError as exc:
            self._failed(conn, row, next_run, str(exc))
            return 0
        self.q.schedule_fired(conn, row.name, next_run, ticks[-1], ids[-1], None)
        if len(ticks) > 1 or at - ticks[-1] > timedelta(minutes=1):
            log.info("schedule %s: started %d instance(s) for ticks %s to %s (misfire=%s)", row.name, len(ticks),
                     ticks[0].isoformat(), ticks[-1].isoformat(), row.misfire)
        return len(ticks)

    def _failed(self, conn: psycopg.Connection[Any], row: ScheduleRow, next_run: datetime, error: str) -> None:
        log.warning("schedule %s: %s; next try at %s", row.name, error, next_run.isoformat())
        self.q.schedule_fired(conn, row.name, next_run, None, None, error[:2000])
