"""The supervisor's periodic round: the heartbeat of its processes, the rescuer, the
scheduler and the suspect watch in ONE round trip (orchwf_maintain)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from ...db.queries import Queries
from .rescuer import RescueResult
from .scheduler import ScheduleResult


@dataclass
class RoundResult:
    rescue: RescueResult
    schedule: ScheduleResult
    suspects: bool


class MaintenanceRound:
    def __init__(self, schema: str, supervisor_id: str, queues: list[str], workflows: list[str]) -> None:
        self.q = Queries.of(schema)
        self.supervisor_id = supervisor_id
        self.queues = queues
        self.workflows = workflows

    def run_once(self, conn: psycopg.Connection[Any], rescue: bool) -> RoundResult:
        """``rescue``: also rescue expired leases (not in the first lease period after a
        reconnect, when the workers may not have renewed theirs yet)."""
        row = self.q.maintain(conn, self.supervisor_id, rescue, self.queues, self.workflows)
        return RoundResult(RescueResult(row.rescued), ScheduleResult(row.promoted, row.next_due), row.suspects)
