"""The suspect watch: is a quarantine worker needed?

The steps a dead worker was running come back as suspects, which only a quarantine
worker claims, one at a time, so a step that kills its process cannot take others down
with it again (docs/reliability.md). This service tells the supervisor when suspects
wait in its queues.
"""

from __future__ import annotations

from typing import Any

import psycopg

from ...db.queries import Queries


class SuspectWatch:
    def __init__(self, schema: str, queues: list[str], workflows: list[str]) -> None:
        self.q = Queries.of(schema)
        self.queues = queues
        self.workflows = workflows

    def run_once(self, conn: psycopg.Connection[Any]) -> bool:
        """True while suspects of these queues and workflows wait."""
        return self.q.suspects_waiting(conn, self.queues, self.workflows)
