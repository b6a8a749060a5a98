"""A worker's conversation with the database: one connection, its reconnects, and the
SQL API's claim, finish, heartbeat and orphan release (through db/queries.py).

Every write under a claim is fenced by its lease token in the database; this module
only carries the calls and turns a lost connection into "retry later" (None), with a
backoff that resets once the database answers a claim.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Collection
from typing import Any

import psycopg

from ..db.connect import connect
from ..db.dsn import redact
from ..db.queries import ClaimRequest, Queries
from ..db.rows import ClaimedStep, ProcessRegistration, StepResult
from .config import DaemonConfig

log = logging.getLogger("orchwf.worker")

Acks = dict[uuid.UUID, bool]


class WorkerProtocol:
    def __init__(self, config: DaemonConfig, worker_id: str, supervisor_id: str, index: int,
                 workflows: list[str], quarantine: bool, on_connection: Callable[[bool], None],
                 versions: list[str] | None = None) -> None:
        """``on_connection(up)`` tells the metrics whether the connection is up;
        ``versions``: the definition versions (hashes) this code has, which it claims."""
        self.config = config
        self.worker_id = worker_id
        self.supervisor_id = supervisor_id
        self.index = index
        self.workflows = workflows
        self.versions = sorted(versions or [])
        self.quarantine = quarantine
        self.on_connection = on_connection
        self.q = Queries.of(config.schema)
        self.conn: psycopg.Connection[Any] | None = None
        self.reconnect_at = 0.0
        self.reconnect_delay = 0.1

    # -- the connection ------------------------------------------------------------------

    def connection(self, inflight: Collection[str]) -> tuple[psycopg.Connection[Any] | None, bool]:
        """The connection (None while backing off), and whether it was opened just now.

        On a new connection the process registers, and gives back the claims the database
        says it holds but ``inflight`` does not (a claim whose reply was lost with the old
        connection). The caller then renews every lease at once, before a supervisor that
        reconnected first takes its steps for dead.
        """
        if self.conn is not None and not self.conn.closed:
            return self.conn, False
        if time.monotonic() < self.reconnect_at:
            return None, False
        try:
            self.conn = connect(self.config.dsn, application_name=f"orchwf-worker {self.index}",
                                prepare=self.config.listen)
            self.q.register_process(self.conn, ProcessRegistration(
                worker_id=self.worker_id, supervisor_id=self.supervisor_id, host=self.config.hostname,
                pid=os.getpid(), role="quarantine" if self.quarantine else "worker",
                queues=list(self.config.queues), workflows=self.workflows, concurrency=self.config.concurrency,
                versions=self.versions))
            self.q.release_orphans(self.conn, self.worker_id, list(inflight))
        except psycopg.Error as exc:
            self.failed(exc)
            return None, False
        self.on_connection(True)
        return self.conn, True

    def failed(self, exc: BaseException) -> None:
        """Drop the connection; the next call reconnects after a growing delay."""
        log.warning("worker %s: database error (%s); retrying in %.1fs",
                    self.worker_id, redact(str(exc)).strip(), self.reconnect_delay)
        self.on_connection(False)
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001 - the connection is being discarded anyway
                pass
        self.conn = None
        self.reconnect_at = time.monotonic() + self.reconnect_delay
        self.reconnect_delay = min(self.reconnect_delay * 2, 5.0)

    def answered(self) -> None:
        """The database accepted a claim: reset the backoff. (Not on connect: a database
        that accepts connections but refuses the claim, read-only or without a grant,
        must not be retried ten times a second.)"""
        self.reconnect_delay = 0.1

    def retry_now(self) -> None:
        self.reconnect_at = 0.0

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.q.unregister_process(self.conn, self.worker_id)
                self.conn.close()
            except psycopg.Error:
                pass

    # -- the calls -----------------------------------------------------------------------

    def claim_request(self, limit: int) -> ClaimRequest:
        return ClaimRequest(self.worker_id, list(self.config.queues), self.workflows, limit,
                            self.config.lease_seconds, self.quarantine, self.versions or None)

    def claim(self, conn: psycopg.Connection[Any], limit: int) -> list[ClaimedStep] | None:
        """Up to ``limit`` steps (committed), or None if the database failed."""
        try:
            return self.q.claim_steps(conn, self.claim_request(limit))
        except psycopg.Error as exc:
            self.failed(exc)
            return None

    def finish(self, conn: psycopg.Connection[Any], results: list[StepResult], claim_limit: int
               ) -> tuple[Acks, list[ClaimedStep]] | None:
        """Commit ``results`` in one fenced call, and claim up to ``claim_limit`` steps in
        the same transaction (0: none). None: the connection failed, nothing happened.

        A database that refuses the batch (an error in a statement, not a lost
        connection) gets the results one by one instead (``finish_one``).
        """
        try:
            if claim_limit > 0:
                return self.q.finish_and_claim(conn, results, self.claim_request(claim_limit))
            return self.q.finish_steps(conn, results), []
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError) or conn.closed or conn.broken:
                self.failed(exc)
                return None
            raise RefusedBatch(exc) from exc

    def finish_one(self, conn: psycopg.Connection[Any], result: StepResult) -> Acks | None:
        """One result on its own; None: the connection failed. Raises psycopg.Error when
        the database refuses this result."""
        try:
            return self.q.finish_steps(conn, [result])
        except psycopg.Error as exc:
            if isinstance(exc, psycopg.OperationalError) or conn.closed or conn.broken:
                self.failed(exc)
                return None
            raise

    def rate_limited_poll(self, conn: psycopg.Connection[Any], floor: float) -> float | None:
        """How often to poll while one of this worker's queues is rate limited (None: none
        is, or the database failed)."""
        try:
            return self.q.rate_limited_poll(conn, list(self.config.queues), floor)
        except psycopg.Error as exc:
            self.failed(exc)
            return None

    def heartbeat(self, conn: psycopg.Connection[Any], ids: list[str], tokens: list[int]) -> list[uuid.UUID] | None:
        """Renew leases; the steps whose lease was lost, or None if the database failed."""
        try:
            return self.q.heartbeat(conn, self.worker_id, ids, tokens, self.config.lease_seconds)
        except psycopg.Error as exc:
            self.failed(exc)
            return None


class RefusedBatch(Exception):
    """The database refused a batch of results (not a lost connection)."""

    def __init__(self, cause: psycopg.Error) -> None:
        super().__init__(str(cause))
        self.cause = cause
