"""The data-access layer: the only Python code that talks SQL.

Every statement orchwf runs is a named query of ``sql/queries/*.sql`` (``-- name: X``),
loaded once and qualified for a schema here; ``Queries`` has one method per operation,
which takes the connection to run on (pools, transactions and reconnects are the
caller's business) and returns dataclasses of ``db/rows.py``, built by column name.

Values are always bound parameters. The only identifiers composed into SQL text are the
schema (validated, then quoted by ``psycopg.sql.Identifier``) and, for the listing
filters, column names taken from a constant allow-list.
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Final, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import class_row, dict_row
from psycopg.types.json import Jsonb

from ..errors import ValidationError
from .rows import (
    ClaimedStep,
    CompensableStep,
    ConcurrencyKey,
    DemoSummary,
    MaintainRow,
    ProcessRegistration,
    ProcessRow,
    QueueControl,
    QueueStats,
    RescuedStep,
    RunningClaim,
    ScheduleRow,
    Stats,
    StepDetails,
    StepResult,
)
from .sqlfiles import load_queries

__all__ = ["CHANNELS", "ClaimRequest", "FILTER_COLUMNS", "Queries", "validate_schema"]

T = TypeVar("T")

_SCHEMA_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

Conn = psycopg.Connection[Any]
Cursor = psycopg.Cursor[Any]


def validate_schema(schema: str) -> str:
    """Return ``schema`` if it is a plain identifier, else raise ValidationError.

    Only unquoted-identifier characters are allowed, so the name means the same thing to
    orchwf, to psql and to a DBA reading ``orchwf migrate up --dry-run``.
    """
    if not isinstance(schema, str) or not _SCHEMA_RE.match(schema):
        raise ValidationError(
            f"invalid schema name {schema!r}: use letters, digits and underscores, "
            "starting with a letter or underscore, at most 63 characters"
        )
    if schema.lower().startswith("pg_"):
        raise ValidationError(f"invalid schema name {schema!r}: names starting with pg_ are reserved")
    return schema


@functools.lru_cache(maxsize=1)
def _texts() -> dict[str, str]:
    return load_queries()


#: Named queries with placeholders filled per call: filters, a channel, a database name.
_PER_CALL: Final = frozenset({"list_workflows", "count_workflows", "dashboard_list", "dashboard_count",
                              "listen", "create_database", "detach_partition", "finalize_detach",
                              "drop_partition"})


class Queries:
    """orchwf's statements for one schema. Cheap to get: ``Queries.of(schema)`` is cached."""

    def __init__(self, schema: str = "public") -> None:
        self.schema = validate_schema(schema)
        ident = sql.Identifier(schema)
        # Statements with placeholders besides {schema} are composed per call (_compose).
        self._sql: Final[dict[str, sql.Composed]] = {
            name: sql.SQL(text).format(schema=ident)  # type: ignore[arg-type]
            for name, text in _texts().items() if name not in _PER_CALL
        }

    @classmethod
    @functools.lru_cache(maxsize=64)
    def of(cls, schema: str = "public") -> Queries:
        return cls(schema)

    def statement(self, name: str) -> sql.Composed:
        """The composed statement ``name`` (for callers that print it, like the dry run)."""
        return self._sql[name]

    def text(self, name: str, conn: Conn) -> str:
        return self._sql[name].as_string(conn)

    def _run(self, conn: Conn | Cursor, name: str, params: Any = None, *, binary: bool = False) -> Cursor:
        return conn.execute(self._sql[name], params, binary=binary)  # type: ignore[arg-type]

    # -- composing ----------------------------------------------------------------------

    def _compose(self, query: str, **parts: sql.Composable) -> sql.Composed:
        """A statement with placeholders besides {schema} (filters, a channel, a name)."""
        return sql.SQL(_texts()[query]).format(schema=sql.Identifier(self.schema), **parts)  # type: ignore[arg-type]

    def _one(self, conn: Conn, name: str, params: Any = None) -> dict[str, Any] | None:
        with conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(self._sql[name], params).fetchone()  # type: ignore[arg-type]

    def _all(self, conn: Conn, name: str, params: Any = None, statement: sql.Composed | None = None
             ) -> list[dict[str, Any]]:
        with conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(statement if statement is not None else self._sql[name], params).fetchall()  # type: ignore[arg-type]

    def _rows(self, conn: Conn, name: str, cls: type[T], params: Any = None, *, binary: bool = False) -> list[T]:
        with conn.cursor(row_factory=class_row(cls)) as cur:
            return cur.execute(self._sql[name], params, binary=binary).fetchall()  # type: ignore[arg-type]

    def _value(self, conn: Conn, name: str, params: Any = None) -> Any:
        with conn.cursor() as cur:
            row = cur.execute(self._sql[name], params).fetchone()  # type: ignore[arg-type]
        return row[0] if row else None

    # -- processes (orchwf_workers) -----------------------------------------------------

    def register_process(self, conn: Conn, process: ProcessRegistration) -> None:
        self._run(conn, "register_process", asdict(process))

    def unregister_process(self, conn: Conn, worker_id: str) -> None:
        self._run(conn, "unregister_process", {"worker_id": worker_id})

    def forget_idle_keys(self, conn: Conn, idle_seconds: float) -> int:
        return int(self._value(conn, "forget_idle_keys", {"idle": idle_seconds}) or 0)

    def forget_silent_processes(self, conn: Conn, older_than_seconds: float) -> None:
        self._run(conn, "forget_silent_processes", {"older_than": older_than_seconds})

    def processes(self, conn: Conn) -> list[ProcessRow]:
        return self._rows(conn, "processes", ProcessRow)

    def running_claims(self, conn: Conn, limit: int) -> list[RunningClaim]:
        return self._rows(conn, "running_claims", RunningClaim, {"limit": limit})

    # -- a worker's protocol ------------------------------------------------------------

    def release_orphans(self, conn: Conn, worker_id: str, keep: list[str]) -> int:
        return int(self._value(conn, "release_orphans", {"worker_id": worker_id, "keep": keep}) or 0)

    def claim_steps(self, conn: Conn, claim: ClaimRequest) -> list[ClaimedStep]:
        return self._rows(conn, "claim_steps", ClaimedStep, claim.params(), binary=True)

    def finish_steps(self, conn: Conn, results: list[StepResult]) -> dict[uuid.UUID, bool]:
        """Commit results (one transaction); which the database accepted, by step ID.
        A result whose lease was lost (rescued, cancelled) is not accepted."""
        with conn.cursor() as cur:
            rows = cur.execute(self._sql["finish_steps"], _results(results), binary=True).fetchall()  # type: ignore[arg-type]
        return {row[0]: bool(row[1]) for row in rows}

    def finish_and_claim(self, conn: Conn, results: list[StepResult], claim: ClaimRequest
                         ) -> tuple[dict[uuid.UUID, bool], list[ClaimedStep]]:
        """The finish, then a claim, in ONE transaction and round trip."""
        with conn.cursor(row_factory=dict_row) as cur:
            rows = cur.execute(self._sql["finish_and_claim"], _results(results) | claim.params(),  # type: ignore[arg-type]
                               binary=True).fetchall()
        acks = {r["step_inst_id"]: bool(r["accepted"]) for r in rows if r["accepted"] is not None}
        claimed = [ClaimedStep(**{k: v for k, v in r.items() if k != "accepted"})
                   for r in rows if r["accepted"] is None]
        return acks, claimed

    def heartbeat(self, conn: Conn, worker_id: str, ids: list[str], tokens: list[int],
                  lease_seconds: float) -> list[uuid.UUID]:
        """Renew leases; return the steps whose lease was lost."""
        params = {"worker_id": worker_id, "ids": ids, "tokens": tokens, "lease_seconds": lease_seconds}
        with conn.cursor() as cur:
            return [row[0] for row in cur.execute(self._sql["heartbeat"], params).fetchall()]  # type: ignore[arg-type]

    def steps_to_compensate(self, conn: Conn, instance_id: str) -> list[CompensableStep]:
        return self._rows(conn, "steps_to_compensate", CompensableStep, {"instance_id": instance_id})

    def record_event(self, conn: Conn, instance_id: str, step_inst_id: Any, event_type: str,
                     data: dict[str, Any]) -> None:
        self._run(conn, "record_event", {"instance_id": instance_id, "step_inst_id": step_inst_id,
                                          "event_type": event_type, "data": Jsonb(data)})

    # -- the supervisor's maintenance ---------------------------------------------------

    def maintain(self, conn: Conn, supervisor_id: str, rescue: bool, queues: list[str],
                 workflows: list[str]) -> MaintainRow:
        rows = self._rows(conn, "maintain", MaintainRow,
                          {"supervisor_id": supervisor_id, "rescue": rescue, "queues": queues,
                           "workflows": workflows})
        return rows[0] if rows else MaintainRow(0, 0, None, False)

    def rescue_expired(self, conn: Conn) -> int:
        return int(self._value(conn, "rescue_expired") or 0)

    def promote_scheduled(self, conn: Conn) -> tuple[int, float | None]:
        """(steps promoted, seconds until the next one is due or None)."""
        promoted = int(self._value(conn, "promote_scheduled") or 0)
        return promoted, self._value(conn, "next_due")

    def suspects_waiting(self, conn: Conn, queues: list[str], workflows: list[str]) -> bool:
        return bool(self._value(conn, "suspects_waiting", {"queues": queues, "workflows": workflows}))

    def mark_processes_alive(self, conn: Conn, supervisor_id: str) -> None:
        self._run(conn, "mark_processes_alive", {"supervisor_id": supervisor_id})

    def rescue_process_steps(self, conn: Conn, worker_id: str) -> list[RescuedStep]:
        """Every claim of a dead process, in batches of up to 1,000."""
        out: list[RescuedStep] = []
        while True:
            batch = self._rows(conn, "rescue_process_steps", RescuedStep, {"worker_id": worker_id})
            out += batch
            if len(batch) < 1000:
                return out

    def prune(self, conn: Conn, older_than_seconds: float, limit: int = 5000) -> int:
        return int(self._value(conn, "prune", {"older_than": older_than_seconds, "limit": limit}) or 0)

    def roll_up_stats(self, conn: Conn, lag_seconds: float, keep_seconds: float, if_older_than: float = 0.0
                      ) -> int:
        """The dashboard's per-minute trends; the minutes written (0: another caller's turn,
        or the last run is younger than ``if_older_than`` seconds)."""
        return int(self._value(conn, "roll_up_stats", {"lag": lag_seconds, "keep": keep_seconds,
                                                        "if_older": if_older_than}) or 0)

    def expired_partitions(self, conn: Conn, older_than_seconds: float) -> list[dict[str, Any]]:
        """Ranges of history whose instances all finished more than ``older_than`` ago."""
        return self._all(conn, "expired_partitions", {"older_than": older_than_seconds})

    def partition_children(self, conn: Conn, suffix: str) -> list[dict[str, Any]]:
        """Each history table's partition of a range: attached, detaching, detached or gone."""
        return self._all(conn, "partition_children", {"suffix": suffix})

    def partition_rows(self, conn: Conn, lower: datetime) -> int:
        """A range's instances (an estimate for a large one)."""
        return int(self._value(conn, "partition_rows", {"lower": lower}) or 0)

    @contextmanager
    def history_range_locked(self, conn: Conn, lower: datetime) -> Iterator[bool]:
        """Hold the range's advisory lock (orchwf_history_range_key), if no one else
        does: no instance of it moves back from history meanwhile. Yields whether it was
        taken. ``conn`` in autocommit (a session lock)."""
        row = self._one(conn, "lock_history_range", {"lower": lower})
        assert row is not None  # one row, always
        try:
            yield bool(row["locked"])
        finally:
            if row["locked"] and not (conn.closed or conn.broken):
                self._run(conn, "unlock_history_range", {"key": row["key"]})

    def partition_expired(self, conn: Conn, lower: datetime, older_than_seconds: float) -> bool:
        """Whether the range may still be dropped (asked again under its lock)."""
        return bool(self._value(conn, "partition_expired", {"lower": lower, "older_than": older_than_seconds}))

    def detach_partition(self, conn: Conn, parent: str, child: str, *, finalize: bool = False) -> None:
        """DETACH ... CONCURRENTLY (outside a transaction: ``conn`` in autocommit), or
        FINALIZE one that was interrupted."""
        name = "finalize_detach" if finalize else "detach_partition"
        conn.execute(self._compose(name, parent=sql.Identifier(_history(parent)),
                                   child=sql.Identifier(_partition(child))))

    def drop_partition(self, conn: Conn, child: str) -> None:
        conn.execute(self._compose("drop_partition", child=sql.Identifier(_partition(child))))

    def forget_partition(self, conn: Conn, lower: datetime) -> None:
        self._run(conn, "forget_partition", {"lower": lower})

    def drop_expired_partitions(self, conn: Conn, older_than_seconds: float) -> int:
        """Retention in one transaction, as the tables' owner (no CONCURRENTLY)."""
        return int(self._value(conn, "drop_expired_partitions", {"older_than": older_than_seconds}) or 0)

    def extend_partitions(self, conn: Conn) -> int:
        return int(self._value(conn, "extend_partitions") or 0)

    def listen(self, conn: Conn, channel: str) -> None:
        if channel not in CHANNELS:
            raise ValidationError(f"unknown channel {channel!r}")
        conn.execute(self._compose("listen", channel=sql.Identifier(channel)))

    def watch_instance(self, conn: Conn, instance_id: str) -> None:
        """Ask for orchwf_done when this instance ends (for the session's lifetime)."""
        self._run(conn, "watch_instance", {"id": instance_id})

    # -- cron schedules -------------------------------------------------------------------

    def db_now(self, conn: Conn) -> datetime:
        """The database's clock, which every host fires schedules by."""
        return self._value(conn, "db_now")  # type: ignore[no-any-return]

    def upsert_schedule(self, conn: Conn, params: dict[str, Any]) -> None:
        self._run(conn, "upsert_schedule", params)

    def forget_definition_schedules(self, conn: Conn, workflow_id: str, keep: list[str]) -> None:
        self._run(conn, "forget_definition_schedules", {"workflow_id": workflow_id, "keep": keep})

    def delete_schedule(self, conn: Conn, name: str) -> bool:
        return self._value(conn, "delete_schedule", {"name": name}) is not None

    def list_schedules(self, conn: Conn, limit: int = 10_000) -> list[ScheduleRow]:
        return self._rows(conn, "list_schedules", ScheduleRow, {"limit": limit})

    def get_schedule(self, conn: Conn, name: str) -> ScheduleRow | None:
        """The schedule, locked until the caller's transaction ends."""
        rows = self._rows(conn, "get_schedule", ScheduleRow, {"name": name})
        return rows[0] if rows else None

    def set_schedule_paused(self, conn: Conn, name: str, paused: bool, next_run_at: datetime | None) -> bool:
        return self._value(conn, "set_schedule_paused",
                           {"name": name, "paused": paused, "next_run_at": next_run_at}) is not None

    def due_schedules(self, conn: Conn, now: datetime, limit: int) -> list[ScheduleRow]:
        """Due schedules, locked (another host skips them); inside a transaction."""
        return self._rows(conn, "due_schedules", ScheduleRow, {"now": now, "limit": limit})

    def schedule_fired(self, conn: Conn, name: str, next_run_at: datetime, last_run_at: datetime | None,
                       last_instance_id: str | None, last_error: str | None) -> None:
        self._run(conn, "schedule_fired", {"name": name, "next_run_at": next_run_at, "last_run_at": last_run_at,
                                           "last_instance_id": last_instance_id, "last_error": last_error})

    def send_signals(self, conn: Conn, instance_ids: list[str], names: list[str],
                     payloads: list[dict[str, Any]]) -> list[int]:
        rows = self._all(conn, "send_signals", {"instance_ids": instance_ids, "names": names,
                                                "payloads": [Jsonb(p) for p in payloads]})
        return [int(r["signal_id"]) for r in rows]

    def consume_signal(self, conn: Conn, instance_id: str, step_inst_id: Any, name: str | None
                       ) -> dict[str, Any] | None:
        """The oldest waiting signal's payload, now consumed by the step (None: none).
        ``name`` None: the signal the step waits for now (a child's report)."""
        row = self._one(conn, "consume_signal", {"instance_id": instance_id, "step_inst_id": step_inst_id,
                                                 "name": name})
        return None if row is None else row["payload"]

    def child_workflows_of(self, conn: Conn, workflow_id: str) -> list[str]:
        """The workflows a registered definition's child_workflow_steps start."""
        return [r["child"] for r in self._all(conn, "child_workflows_of", {"workflow_id": workflow_id})]

    def workflow_registered(self, conn: Conn, workflow_id: str) -> bool:
        return bool(self._value(conn, "workflow_registered", {"workflow_id": workflow_id}))

    def next_schedule_due(self, conn: Conn) -> datetime | None:
        return self._value(conn, "next_schedule_due")  # type: ignore[no-any-return]

    # -- producers and operators --------------------------------------------------------

    def register_workflow(self, conn: Conn, workflow_id: str, name: str, version: str, version_hash: str,
                          document: dict[str, Any]) -> None:
        self._run(conn, "register_workflow", {"workflow_id": workflow_id, "name": name, "version": version,
                                               "version_hash": version_hash, "definition": Jsonb(document)})

    def enqueue_many(self, conn: Conn, workflow_id: str, inputs: list[Jsonb], metadata: Jsonb,
                     priority: int | None, keys: list[str | None] | None, queue: str | None,
                     run_after: datetime | None) -> list[str]:
        params = {"workflow_id": workflow_id, "inputs": inputs, "metadata": metadata, "priority": priority,
                  "keys": keys, "queue": queue, "run_after": run_after}
        return [str(x) for x in self._value(conn, "enqueue_many", params)]

    def cancel_workflow(self, conn: Conn, instance_id: str) -> str:
        return str(self._value(conn, "cancel_workflow", {"id": instance_id}))

    def resume_workflow(self, conn: Conn, instance_id: str) -> str:
        return str(self._value(conn, "resume_workflow", {"id": instance_id}))

    def pause_queue(self, conn: Conn, queue: str) -> bool:
        return bool(self._value(conn, "pause_queue", {"queue": queue}))

    def resume_queue(self, conn: Conn, queue: str) -> bool:
        return bool(self._value(conn, "resume_queue", {"queue": queue}))

    def set_queue_rate_limit(self, conn: Conn, queue: str, per_second: float | None, burst: int | None) -> None:
        self._run(conn, "set_queue_rate_limit", {"queue": queue, "per_second": per_second, "burst": burst})

    def rate_limited_poll(self, conn: Conn, queues: list[str], floor: float) -> float | None:
        value = self._value(conn, "rate_limited_poll", {"queues": queues, "floor": floor})
        return None if value is None else float(value)

    def queue_controls(self, conn: Conn) -> list[QueueControl]:
        return self._rows(conn, "queue_controls", QueueControl)

    def concurrency_keys(self, conn: Conn, limit: int) -> list[ConcurrencyKey]:
        return self._rows(conn, "concurrency_keys", ConcurrencyKey, {"limit": limit})

    def retry_step(self, conn: Conn, instance_id: str, step_id: str) -> str:
        return str(self._value(conn, "retry_step", {"id": instance_id, "step_id": step_id}))

    def step_details(self, conn: Conn, instance_id: str) -> list[StepDetails]:
        return self._rows(conn, "step_details", StepDetails, {"id": instance_id})

    def stats(self, conn: Conn, depth_cap: int, window_seconds: float, live_seconds: float) -> Stats:
        row = self._one(conn, "stats", {"cap": depth_cap, "window": window_seconds, "live": live_seconds})
        assert row is not None
        return Stats(
            queues=[QueueStats(q, int(n), max(0.0, age or 0.0), bool(paused), rate, burst)
                    for q, n, age, paused, rate, burst in row["queues"]],
            running_steps=int(row["running_steps"]), scheduled_steps=int(row["scheduled_steps"]),
            pending=int(row["pending"]), running=int(row["running"]),
            finished={k: int(v) for k, v in row["finished"].items()},
            live_processes={k: int(v) for k, v in row["live_processes"].items()},
        )

    def unserved_versions(self, conn: Conn, live_seconds: float) -> list[dict[str, Any]]:
        """Live instances, by workflow and version, that no live worker's code can run."""
        return self._all(conn, "unserved_versions", {"live": live_seconds})

    def workflow_versions(self, conn: Conn, live_seconds: float) -> list[dict[str, Any]]:
        return self._all(conn, "workflow_versions", {"live": live_seconds})

    def demo_summary(self, conn: Conn, ids: list[str]) -> DemoSummary:
        params = {"ids": ids}
        totals = self._one(conn, "instance_step_totals", params) or {}
        return DemoSummary(
            outcomes={r["status"]: int(r["n"]) for r in self._all(conn, "instance_outcomes", params)},
            finished_steps=int(totals.get("finished_steps") or 0), retries=int(totals.get("retries") or 0),
            queue_waits_ms=[float(r["wait_ms"]) for r in self._all(conn, "instance_queue_waits", params)],
            compensations=int(self._value(conn, "instance_event_count",
                                          {"ids": ids, "event_type": "step.compensated"}) or 0),
        )

    def finished_count(self, conn: Conn, ids: list[str]) -> int:
        return int(self._value(conn, "finished_count", {"ids": ids}) or 0)

    def database_exists(self, conn: Conn, name: str) -> bool:
        return self._one(conn, "database_exists", {"name": name}) is not None

    def create_database(self, conn: Conn, name: str) -> None:
        conn.execute(self._compose("create_database", database=sql.Identifier(name)))

    # -- the in-process store (DBStateManager) ------------------------------------------

    def save_workflow(self, conn: Conn, params: dict[str, Any]) -> None:
        self._run(conn, "save_workflow", params)

    def get_workflow(self, conn: Conn, instance_id: uuid.UUID) -> dict[str, Any] | None:
        return self._one(conn, "get_workflow", {"id": instance_id})

    def workflow_exists(self, conn: Conn, instance_id: uuid.UUID) -> bool:
        return bool(self._value(conn, "workflow_exists", {"id": instance_id}))

    def update_workflow(self, conn: Conn, instance_id: uuid.UUID, now: datetime, *, status: str | None = None,
                        output: Jsonb | None = None, error: str | None = None) -> int:
        """Change the status, output or error of an instance, live or finished; 0: unknown.
        A final status moves it to history, another one back to the runtime tables."""
        params = {"id": instance_id, "status": status, "output": output, "error": error, "now": now}
        return int(self._value(conn, "update_workflow", params) or 0)

    def list_workflows(self, conn: Conn, filters: dict[str, Any], limit: int, offset: int
                       ) -> tuple[list[dict[str, Any]], int]:
        """One page (newest first) and the filtered total, in one snapshot when the caller
        runs it in a transaction. ``filters`` keys are FILTER_COLUMNS; "" means NULL for the
        ID filters."""
        where, params = _where(filters)
        total = self._all(conn, "", params, self._compose("count_workflows", where=where))
        page = self._all(conn, "", params | {"limit": limit, "offset": offset},
                         self._compose("list_workflows", where=where))
        return page, int(total[0]["n"])

    def save_step(self, conn: Conn, params: dict[str, Any]) -> int:
        """Upsert a step where its instance lives; 0: the instance is unknown."""
        return int(self._value(conn, "save_step", params) or 0)

    def get_step(self, conn: Conn, step_inst_id: uuid.UUID) -> dict[str, Any] | None:
        return self._one(conn, "get_step", {"id": step_inst_id})

    def step_exists(self, conn: Conn, step_inst_id: uuid.UUID) -> bool:
        return self._one(conn, "step_exists", {"id": step_inst_id}) is not None

    def workflow_steps(self, conn: Conn, instance_id: uuid.UUID) -> list[dict[str, Any]]:
        return self._all(conn, "workflow_steps", {"id": instance_id})

    def update_step(self, conn: Conn, step_inst_id: uuid.UUID, now: datetime, *, status: str | None = None,
                    output: Jsonb | None = None, error: str | None = None) -> int:
        """Change the status, output or error of a step, live or finished; 0: unknown."""
        params = {"id": step_inst_id, "status": status, "output": output, "error": error, "now": now}
        return int(self._value(conn, "update_step", params) or 0)

    def save_event(self, conn: Conn, params: dict[str, Any]) -> int:
        """1: stored; 0: the instance or step is unknown, or the event is there already."""
        return int(self._value(conn, "save_event", params) or 0)

    def workflow_events(self, conn: Conn, instance_id: uuid.UUID) -> list[dict[str, Any]]:
        return self._all(conn, "workflow_events", {"id": instance_id})

    # -- the dashboard ------------------------------------------------------------------

    def snapshot(self, conn: Conn) -> None:
        """The rest of the caller's transaction reads one snapshot (read only)."""
        self._run(conn, "snapshot")

    def dashboard_overview(self, conn: Conn, window_seconds: float, cap: int, live_seconds: float
                           ) -> dict[str, Any]:
        row = self._one(conn, "dashboard_overview",
                        {"hour": 3600, "window": window_seconds, "cap": cap, "live": live_seconds})
        assert row is not None
        return row

    def dashboard_trend(self, conn: Conn, minutes: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The last ``minutes`` of the rollup: per minute, and each queue's backlog per minute."""
        params = {"minutes": minutes}
        return self._all(conn, "dashboard_trend", params), self._all(conn, "dashboard_backlog_trend", params)

    def dashboard_schedules(self, conn: Conn, limit: int) -> list[dict[str, Any]]:
        return self._all(conn, "dashboard_schedules", {"limit": limit})

    def dashboard_list(self, conn: Conn, filters: dict[str, Any], limit: int, offset: int, cap: int
                       ) -> tuple[list[dict[str, Any]], int]:
        where, params = _where(filters)
        rows = self._all(conn, "", params | {"limit": limit, "offset": offset},
                         self._compose("dashboard_list", where=where))
        total = self._all(conn, "", params | {"cap": cap}, self._compose("dashboard_count", where=where))
        return rows, int(total[0]["n"])

    def dashboard_workflow_ids(self, conn: Conn) -> list[str]:
        return [r["workflow_id"] for r in self._all(conn, "dashboard_workflow_ids")]

    def dashboard_instance(self, conn: Conn, instance_id: str, max_json: int, max_error: int, max_events: int
                           ) -> dict[str, Any] | None:
        """The instance with ``steps``, ``events`` (the newest ``max_events``) and
        ``event_count``, read in the caller's transaction (one snapshot)."""
        params = {"id": instance_id, "max_json": max_json, "max_error": max_error, "max_events": max_events}
        inst = self._one(conn, "dashboard_instance", params)
        if inst is None:
            return None
        inst["steps"] = self._all(conn, "dashboard_steps", params)
        inst["events"] = self._all(conn, "dashboard_events", params)
        inst["event_count"] = int(self._value(conn, "dashboard_event_count", params) or 0)
        return inst

    def dashboard_claims(self, conn: Conn, max_claims: int) -> list[dict[str, Any]]:
        return self._all(conn, "dashboard_claims", {"max_claims": max_claims})

    def dashboard_processes(self, conn: Conn) -> list[dict[str, Any]]:
        return self._all(conn, "processes")

    # -- metrics ------------------------------------------------------------------------

    def database_metrics(self, conn: Conn, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        return list(conn.execute(self._sql["database_metrics"], params | {"schema": self.schema}).fetchall())  # type: ignore[arg-type]


#: LISTEN/NOTIFY channels of the SQL API.
CHANNELS: Final = ("orchwf_ready", "orchwf_scheduled", "orchwf_done")

#: list_workflows filter key -> column. The ONLY way a filter reaches SQL text.
FILTER_COLUMNS: Final[dict[str, str]] = {
    "workflow_id": "workflow_id",
    "status": "status",
    "trace_id": "trace_id",
    "correlation_id": "correlation_id",
    "business_id": "business_id",
}
_EMPTY_IS_NULL: Final = frozenset({"trace_id", "correlation_id", "business_id"})


#: The partitioned history tables (the only identifiers the partition statements take).
HISTORY_TABLES: Final = ("orchwf_instance_history", "orchwf_step_history", "orchwf_event_history")


_PARTITION_RE = re.compile(r"^orchwf_(instance|step|event)_history_p\d{8}t\d{6}$")


def _history(parent: str) -> str:
    if parent not in HISTORY_TABLES:
        raise ValidationError(f"not a history table: {parent!r}")
    return parent


def _partition(child: str) -> str:
    if not _PARTITION_RE.match(child):
        raise ValidationError(f"not a partition of history: {child!r}")
    return child


def _where(filters: dict[str, Any]) -> tuple[sql.Composable, dict[str, Any]]:
    conditions: list[sql.Composable] = []
    params: dict[str, Any] = {}
    for key, value in filters.items():
        column = sql.Identifier(FILTER_COLUMNS[key])
        if key in _EMPTY_IS_NULL and value == "":
            conditions.append(sql.SQL("{} IS NULL").format(column))
        else:
            conditions.append(sql.SQL("{} = {}").format(column, sql.Placeholder(key)))
            params[key] = value
    if not conditions:
        return sql.SQL(""), params
    return sql.SQL("WHERE ") + sql.SQL(" AND ").join(conditions), params


def _results(results: list[StepResult]) -> dict[str, Any]:
    return {
        "ids": [r.step_inst_id for r in results],
        "tokens": [r.lease_token for r in results],
        "outcomes": [r.outcome for r in results],
        "outputs": [Jsonb(r.output) if r.output is not None else None for r in results],
        "errors": [r.error for r in results],
        "durations": [r.duration_ms for r in results],
        "delays": [r.delay for r in results],
        "inputs": [Jsonb(r.input) if r.input is not None else None for r in results],
    }


@dataclass(frozen=True)
class ClaimRequest:
    """What a worker asks the claim for: up to ``limit`` steps of its queues and workflows."""

    worker_id: str
    queues: list[str]
    workflows: list[str]
    limit: int
    lease_seconds: float
    suspects: bool = False  # a quarantine worker: suspects only
    versions: list[str] | None = None  # the definition versions (hashes) the worker's code has; None: any

    def params(self) -> dict[str, Any]:
        return asdict(self)
