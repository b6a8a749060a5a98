"""The pruner: retention of finished history, and of rows of processes gone silent.

History is partitioned by the instances' created_at (docs/schema.md), so retention
drops whole partitions, never a DELETE: a range goes once every instance created in it
finished more than --retention ago. Each of its three partitions is detached with
``DETACH PARTITION ... CONCURRENTLY`` (reads and writes of history go on meanwhile),
then dropped. A detach interrupted halfway (the process died) is finished on the next
run. Each range is checked once more under its advisory lock, which a resume of one of
its instances takes too (orchwf_history_range_key): a resume lands before that check
(the range is kept) or after the drop (the instance is gone), never in between. A role
that does not own the tables cannot detach: then the SQL API's
orchwf_drop_expired_partitions does it as the owner, without CONCURRENTLY and with a
bounded lock wait.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from ...db.queries import Queries

log = logging.getLogger("orchwf.supervisor")

EVERY = 300.0  # seconds between runs
SILENT_PROCESS_SECONDS = 3600.0  # a process row without a heartbeat this long is forgotten
IDLE_KEY_SECONDS = 3600.0  # a concurrency key with no slot held nor waiter this long is forgotten


@dataclass
class PruneResult:
    pruned: int  # finished instances dropped (the planner's estimate for a large range)
    partitions: int  # ranges of history dropped


class Pruner:
    def __init__(self, schema: str, retention_seconds: float) -> None:
        self.q = Queries.of(schema)
        self.retention_seconds = retention_seconds
        self.next_run = 0.0

    def due(self, now: float) -> bool:
        return self.retention_seconds > 0 and now >= self.next_run

    def run_once(self, conn: psycopg.Connection[Any], now: float = 0.0) -> PruneResult:
        """Drop the expired ranges; ``conn`` must be in autocommit (CONCURRENTLY)."""
        self.next_run = now + EVERY
        result = self.drop_expired(conn, self.retention_seconds)
        self.q.forget_silent_processes(conn, SILENT_PROCESS_SECONDS)
        self.q.forget_idle_keys(conn, IDLE_KEY_SECONDS)
        return result

    def drop_expired(self, conn: psycopg.Connection[Any], older_than_seconds: float) -> PruneResult:
        pruned = partitions = 0
        for part in self.q.expired_partitions(conn, older_than_seconds):
            rows = self.q.partition_rows(conn, part["lower"])
            try:
                with self.q.history_range_locked(conn, part["lower"]) as locked:
                    if not locked:
                        log.info("retention: history created %s to %s is being resumed from; next run",
                                 part["lower"].isoformat(), part["upper"].isoformat())
                        continue
                    if not self.q.partition_expired(conn, part["lower"], older_than_seconds):
                        log.info("retention: kept history created %s to %s: an instance of it is live again (resumed)",
                                 part["lower"].isoformat(), part["upper"].isoformat())
                        continue
                    self._drop_range(conn, part)
            except pg_errors.InsufficientPrivilege:
                log.info("retention: this role does not own history's tables; dropping as their owner "
                         "(without CONCURRENTLY)")
                return PruneResult(pruned + self.q.drop_expired_partitions(conn, older_than_seconds),
                                   partitions + 1)
            pruned += rows
            partitions += 1
            log.info("retention: dropped history created %s to %s (about %d instances)",
                     part["lower"].isoformat(), part["upper"].isoformat(), rows)
        return PruneResult(pruned, partitions)

    def _drop_range(self, conn: psycopg.Connection[Any], part: dict[str, Any]) -> None:
        """Detach and drop a range's three partitions (finishing an interrupted detach),
        then forget the range. The caller holds the range's lock."""
        for child in self.q.partition_children(conn, part["suffix"]):
            if child["state"] in ("attached", "detaching"):
                self.q.detach_partition(conn, child["parent"], child["child"],
                                        finalize=child["state"] == "detaching")
            if child["state"] != "gone":
                self.q.drop_partition(conn, child["child"])
        self.q.forget_partition(conn, part["lower"])
