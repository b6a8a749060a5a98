"""The host's one LISTEN connection. Workers never LISTEN: the supervisor wakes them over
their pipes, so a host holds one notification connection however many workers it runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg

from ...db.connect import connect
from ...db.queries import Queries

log = logging.getLogger("orchwf.supervisor")


@dataclass
class Notifications:
    ready: bool = False      # orchwf_ready: steps became ready
    scheduled: bool = False  # orchwf_scheduled: a step waits for a time (learn when)


class Listener:
    CHANNELS = ("orchwf_ready", "orchwf_scheduled")

    def __init__(self, dsn: str, schema: str) -> None:
        self.dsn = dsn
        self.q = Queries.of(schema)
        self.conn: psycopg.Connection[Any] | None = None

    @property
    def up(self) -> bool:
        return self.conn is not None and not self.conn.closed

    def open(self) -> None:
        """Connect and LISTEN (raises psycopg.Error). Notifications sent while it was down
        are lost: the caller wakes the workers once after this."""
        self.conn = connect(self.dsn, application_name="orchwf-listener")
        for channel in self.CHANNELS:
            self.q.listen(self.conn, channel)

    def fileno(self) -> int:
        assert self.conn is not None
        return self.conn.fileno()

    def run_once(self) -> Notifications:
        """Drain what arrived (raises psycopg.Error when the connection broke)."""
        assert self.conn is not None
        got = Notifications()
        for note in self.conn.notifies(timeout=0):
            if note.channel == "orchwf_scheduled":
                got.scheduled = True
            else:
                got.ready = True
        return got

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001 - discarding a broken connection
                pass
        self.conn = None
