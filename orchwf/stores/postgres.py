"""DBStateManager: the StateManager contract on PostgreSQL (psycopg 3).

Same semantics as InMemoryStateManager (stores/memory.py); what is Postgres-specific:

* Transactions are real. Inside ``with_transaction(fn)`` every call made by ``fn`` on
  the same thread uses the transaction's connection (kept in a thread-local); a nested
  ``with_transaction`` is a savepoint. Outside, each call runs on its own (one statement
  in autocommit, or a short transaction when it needs several).
* Thread-safe. Given a conninfo, the store opens a ``psycopg_pool.ConnectionPool``
  lazily; each thread borrows its own connection. Given a single connection, calls are
  serialised on a lock, held for the whole of a ``with_transaction``.
* Fork-safe. A pool opened by the parent is never used (or closed) in a child: the child
  opens its own pool on first use. A connection or pool passed in by the caller cannot be
  re-opened, so using it after fork() raises InvalidStateError.
* Its SQL is db/queries.py's (sql/queries/store.sql): every value a bound parameter,
  filter columns from the constant ``FILTER_COLUMNS``.
* ``list_workflows`` returns instances WITHOUT their steps (``steps == []``), like the
  in-memory store; ``get_workflow`` loads them.
* Empty trace/correlation/business IDs are stored as NULL and read back as ``""``.
* Timestamps are ``timestamptz``; datetimes come back timezone-aware in UTC. A naive
  datetime passed in is taken to be UTC.
"""

from __future__ import annotations

import os
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, TypeVar, Union

import psycopg
from psycopg import errors as pg_errors
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from .. import jsonvalue
from ..db.connect import pool
from ..db.queries import FILTER_COLUMNS, Queries, validate_schema
from ..errors import InvalidStateError, StepNotFoundError, ValidationError, WorkflowNotFoundError
from ..types import (
    StepInstance,
    StepStatus,
    WorkflowEvent,
    WorkflowInstance,
    WorkflowStatus,
    utcnow,
)
from .base import check_page, error_text, is_uuid, normalize_filters

__all__ = ["DBStateManager", "FILTER_COLUMNS"]

T = TypeVar("T")
Row = dict[str, Any]
Target = Union[str, "psycopg.Connection[Any]", ConnectionPool]

# Pools opened before a fork(), kept referenced in the child so they are never
# garbage-collected (and closed) there: their sockets belong to the parent.
_ABANDONED: list[object] = []


# -- value conversion ---------------------------------------------------------------------


def _uuid(value: str, what: str) -> uuid.UUID:
    if not is_uuid(value):
        raise ValidationError(f"{what} must be a UUID, got {value!r}")
    return uuid.UUID(value)


def _ts_in(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise ValidationError(f"expected a datetime, got {type(value).__name__}")
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def _ts_out(value: datetime | None) -> datetime | None:
    return value.astimezone(timezone.utc) if value is not None else None


def _text(value: str | None, what: str, *, empty_is_null: bool = False) -> str | None:
    if value is None or (empty_is_null and value == ""):
        return None
    if not isinstance(value, str):
        raise ValidationError(f"{what} must be a string, got {type(value).__name__}")
    if "\x00" in value:
        raise ValidationError(f"{what} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"{what} is not valid Unicode (lone surrogate)") from None
    return value


def _error_in(error: BaseException | str) -> str:
    """Error text is recorded, never refused: NULs and lone surrogates are escaped."""
    text = error_text(error).replace("\x00", "\\x00")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _json_in(value: Mapping[str, Any] | None, what: str) -> Jsonb:
    return Jsonb(jsonvalue.check_json_object(value, what), dumps=jsonvalue.dumps)


def _json_out(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _workflow_params(wf: WorkflowInstance, now: datetime) -> dict[str, Any]:
    return {
        "id": _uuid(wf.id, "workflow id"),
        "workflow_id": _text(wf.workflow_id, "workflow_id"),
        "status": _workflow_status(wf.status).value,
        "input": _json_in(wf.input, "workflow input"),
        "output": _json_in(wf.output, "workflow output"),
        "context": _json_in(wf.context, "workflow context"),
        "current_step_id": _text(wf.current_step_id, "current_step_id"),
        "started_at": _ts_in(wf.started_at),
        "completed_at": _ts_in(wf.completed_at),
        "error": _error_in(wf.error) if wf.error is not None else None,
        "retry_count": wf.retry_count,
        "last_retry_at": _ts_in(wf.last_retry_at),
        "metadata": _json_in(wf.metadata, "workflow metadata"),
        "trace_id": _text(wf.trace_id, "trace_id", empty_is_null=True),
        "correlation_id": _text(wf.correlation_id, "correlation_id", empty_is_null=True),
        "business_id": _text(wf.business_id, "business_id", empty_is_null=True),
        "priority": wf.priority,
        "queue": _text(wf.queue, "queue"),
        "idempotency_key": _text(wf.idempotency_key, "idempotency_key"),
        "run_mode": _text(wf.run_mode, "run_mode"),
        "created_at": _ts_in(wf.created_at),
        "updated_at": now,
    }


def _workflow_out(row: Row) -> WorkflowInstance:
    return WorkflowInstance(
        id=str(row["id"]),
        workflow_id=row["workflow_id"],
        status=WorkflowStatus(row["status"]),
        input=_json_out(row["input"]),
        output=_json_out(row["output"]),
        context=_json_out(row["context"]),
        current_step_id=row["current_step_id"],
        started_at=_ts_out(row["started_at"]),  # type: ignore[arg-type]
        completed_at=_ts_out(row["completed_at"]),
        error=row["error"],
        retry_count=row["retry_count"],
        last_retry_at=_ts_out(row["last_retry_at"]),
        metadata=_json_out(row["metadata"]),
        trace_id=row["trace_id"] or "",
        correlation_id=row["correlation_id"] or "",
        business_id=row["business_id"] or "",
        created_at=_ts_out(row["created_at"]),  # type: ignore[arg-type]
        updated_at=_ts_out(row["updated_at"]),  # type: ignore[arg-type]
        priority=row["priority"],
        queue=row["queue"],
        idempotency_key=row["idempotency_key"],
        run_mode=row["run_mode"],
    )


def _step_params(step: StepInstance, now: datetime) -> dict[str, Any]:
    return {
        "id": _uuid(step.id, "step id"),
        "step_id": _text(step.step_id, "step_id"),
        "workflow_inst_id": _uuid(step.workflow_inst_id, "step workflow_inst_id"),
        "status": _step_status(step.status).value,
        "input": _json_in(step.input, "step input"),
        "output": _json_in(step.output, "step output"),
        "started_at": _ts_in(step.started_at),
        "completed_at": _ts_in(step.completed_at),
        "error": _error_in(step.error) if step.error is not None else None,
        "retry_count": step.retry_count,
        "last_retry_at": _ts_in(step.last_retry_at),
        "duration_ms": step.duration_ms,
        "execution_order": step.execution_order,
        "priority": step.priority,
        "attempts": step.attempts,
        "now": now,
    }


def _step_out(row: Row) -> StepInstance:
    return StepInstance(
        id=str(row["id"]),
        step_id=row["step_id"],
        workflow_inst_id=str(row["workflow_inst_id"]),
        status=StepStatus(row["status"]),
        input=_json_out(row["input"]),
        output=_json_out(row["output"]),
        started_at=_ts_out(row["started_at"]),
        completed_at=_ts_out(row["completed_at"]),
        error=row["error"],
        retry_count=row["retry_count"],
        last_retry_at=_ts_out(row["last_retry_at"]),
        duration_ms=row["duration_ms"],
        execution_order=row["execution_order"],
        priority=row["priority"],
        attempts=row["attempts"],
    )


def _event_out(row: Row) -> WorkflowEvent:
    return WorkflowEvent(
        id=str(row["id"]),
        workflow_inst_id=str(row["workflow_inst_id"]),
        event_type=row["event_type"],
        event_data=_json_out(row["event_data"]),
        step_inst_id=str(row["step_inst_id"]) if row["step_inst_id"] is not None else None,
        timestamp=_ts_out(row["timestamp"]),  # type: ignore[arg-type]
    )


# -- the store ----------------------------------------------------------------------------


class DBStateManager:
    """StateManager on PostgreSQL. Pass a conninfo (the store owns a pool), a pool, or
    one connection (calls are then serialised). The schema must have been migrated
    (``orchwf migrate up --schema ...`` or ``orchwf.migrate(conninfo, schema)``).

    ``max_size`` bounds the pool: give it at least as many connections as threads that
    call the store at once. With a single connection, a ``with_transaction`` function
    must not wait for other threads that use the store: they wait for the connection.
    """

    def __init__(
        self,
        target: Target,
        schema: str = "public",
        *,
        min_size: int = 1,
        max_size: int = 10,
    ) -> None:
        self._schema = validate_schema(schema)
        self._q = Queries.of(schema)
        self._conninfo: str | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._pool: ConnectionPool | None = None
        if isinstance(target, str):
            self._conninfo = target
        elif isinstance(target, psycopg.Connection):
            self._conn = target
        elif isinstance(target, ConnectionPool):
            self._pool = target
        else:
            raise ValidationError(
                "DBStateManager needs a conninfo string, a psycopg.Connection or a "
                f"psycopg_pool.ConnectionPool, got {type(target).__name__}"
            )
        self._min_size = min_size
        self._max_size = max_size
        self._closed = False
        self._created_pid = os.getpid()
        self._init_process_state()
        _LIVE_STORES.add(self)

    def _init_process_state(self) -> None:
        """Locks and thread-locals of this process (re-made in a forked child)."""
        self._pid = os.getpid()
        self._pool_lock = threading.Lock()
        self._conn_lock = threading.RLock()
        self._local = threading.local()

    def _forget_parent(self) -> None:
        """In a forked child: drop everything that belongs to the parent process."""
        if self._conninfo is not None and self._pool is not None:
            _ABANDONED.append(self._pool)
            self._pool = None
        self._init_process_state()

    @property
    def schema(self) -> str:
        return self._schema

    # -- connections ----------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise InvalidStateError("DBStateManager is closed")
        if os.getpid() != self._pid:
            self._forget_parent()  # fork without the at-fork hook (e.g. os.fork from C)
        if self._conninfo is None and self._pid != self._created_pid:
            raise InvalidStateError(
                "DBStateManager got a connection or pool from the caller before fork(); it "
                "cannot be used in the child. Pass a conninfo string so each process opens "
                "its own connections."
            )

    def _get_pool(self) -> ConnectionPool:
        if self._pool is not None:
            return self._pool
        with self._pool_lock:
            if self._pool is None:
                assert self._conninfo is not None
                self._pool = pool(self._conninfo, name=f"orchwf-{os.getpid()}", min_size=self._min_size,
                                  max_size=self._max_size)
            return self._pool

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """The connection this thread's store calls use, for SQL the store has no method for.

        Inside ``with_transaction`` it is the transaction's own connection, so statements
        run on it commit or roll back together with the store's writes.
        """
        self._check_usable()
        current = getattr(self._local, "conn", None)
        if current is not None:
            yield current
        elif self._conn is not None:
            with self._conn_lock:
                yield self._conn
        else:
            with self._get_pool().connection() as conn:
                yield conn

    @contextmanager
    def _db(self, atomic: bool = False) -> Iterator[psycopg.Connection[Any]]:
        """A connection for the store's statements; ``atomic``: several statements that
        must see one state.

        Inside with_transaction, statements join that transaction directly. Outside, a
        single statement runs in autocommit; a connection the caller configured without
        autocommit always gets an explicit transaction, so it is never left open.
        """
        with self.connection() as conn:
            in_tx = getattr(self._local, "conn", None) is conn
            if not in_tx and (atomic or not conn.autocommit):
                with conn.transaction():
                    yield conn
            else:
                yield conn

    def with_transaction(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in one database transaction; an exception rolls it back and propagates.

        Nested calls on the same thread become savepoints. A failed COMMIT raises.
        """
        self._check_usable()
        current = getattr(self._local, "conn", None)
        if current is not None:
            with current.transaction():  # a savepoint
                return fn()
        with self.connection() as conn:
            self._local.conn = conn
            try:
                with conn.transaction():
                    return fn()
            finally:
                self._local.conn = None

    def close(self) -> None:
        """Close the pool this store opened; a caller's connection or pool stays open."""
        self._closed = True
        if self._conninfo is not None and self._pool is not None and os.getpid() == self._pid:
            self._pool.close()
        if self._conninfo is not None:
            self._pool = None

    def __enter__(self) -> DBStateManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- workflows ------------------------------------------------------------------------

    def save_workflow(self, workflow: WorkflowInstance) -> None:
        params = _workflow_params(workflow, utcnow())
        try:
            with self._db() as conn:
                self._q.save_workflow(conn, params)
        except pg_errors.UniqueViolation as exc:
            raise ValidationError(
                f"workflow {workflow.workflow_id!r} already has an instance with idempotency key "
                f"{workflow.idempotency_key!r}"
            ) from exc
        except pg_errors.CheckViolation as exc:
            raise ValidationError(f"invalid workflow instance: {exc.diag.message_primary}") from exc

    def get_workflow(self, workflow_inst_id: str) -> WorkflowInstance:
        key = _instance_key(workflow_inst_id)
        with self._db(atomic=True) as conn:
            row = self._q.get_workflow(conn, key)
            if row is None:
                raise WorkflowNotFoundError(workflow_inst_id)
            workflow = _workflow_out(row)
            workflow.steps = [_step_out(r) for r in self._q.workflow_steps(conn, key)]
        return workflow

    def _update_workflow(self, workflow_inst_id: str, **change: Any) -> None:
        key = _instance_key(workflow_inst_id)
        with self._db() as conn:
            if self._q.update_workflow(conn, key, utcnow(), **change) == 0:
                raise WorkflowNotFoundError(workflow_inst_id)

    def update_workflow_status(self, workflow_inst_id: str, status: WorkflowStatus) -> None:
        self._update_workflow(workflow_inst_id, status=_workflow_status(status).value)

    def update_workflow_output(self, workflow_inst_id: str, output: Mapping[str, Any]) -> None:
        value = _json_in(dict(output) if output is not None else None, "workflow output")
        self._update_workflow(workflow_inst_id, output=value)

    def update_workflow_error(self, workflow_inst_id: str, error: BaseException | str) -> None:
        self._update_workflow(workflow_inst_id, status=WorkflowStatus.FAILED.value, error=_error_in(error))

    def list_workflows(
        self, filters: Mapping[str, Any] | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[list[WorkflowInstance], int]:
        """One page, newest first (created_at DESC, id DESC), and the filtered total.

        Instances come without their steps; use get_workflow for those.
        """
        wanted = normalize_filters(filters)
        check_page(limit, offset)
        for key, value in wanted.items():
            _text(value, f"filter {key!r}")
        with self._db(atomic=True) as conn:
            rows, total = self._q.list_workflows(conn, dict(wanted), limit, offset)
        return [_workflow_out(r) for r in rows], total

    # -- steps ----------------------------------------------------------------------------

    def save_step(self, step: StepInstance) -> None:
        if not is_uuid(step.workflow_inst_id):
            raise WorkflowNotFoundError(str(step.workflow_inst_id))
        params = _step_params(step, utcnow())
        try:
            with self._db() as conn:
                saved = self._q.save_step(conn, params)
        except pg_errors.UniqueViolation as exc:
            raise ValidationError(
                f"workflow instance {step.workflow_inst_id} already has a step {step.step_id!r}"
            ) from exc
        except pg_errors.CheckViolation as exc:
            raise _leased(step.id, exc) from exc
        if saved == 0:
            raise WorkflowNotFoundError(step.workflow_inst_id)

    def get_step(self, step_inst_id: str) -> StepInstance:
        if not is_uuid(step_inst_id):
            raise StepNotFoundError(str(step_inst_id))
        with self._db() as conn:
            row = self._q.get_step(conn, uuid.UUID(step_inst_id))
        if row is None:
            raise StepNotFoundError(step_inst_id)
        return _step_out(row)

    def get_workflow_steps(self, workflow_inst_id: str) -> list[StepInstance]:
        """The instance's steps by execution_order; WorkflowNotFoundError if it is unknown."""
        key = _instance_key(workflow_inst_id)
        with self._db(atomic=True) as conn:
            rows = self._q.workflow_steps(conn, key)
            if not rows and not self._q.workflow_exists(conn, key):
                raise WorkflowNotFoundError(workflow_inst_id)
        return [_step_out(r) for r in rows]

    def _update_step(self, step_inst_id: str, **change: Any) -> None:
        key = _step_key(step_inst_id)
        try:
            with self._db() as conn:
                if self._q.update_step(conn, key, utcnow(), **change) == 0:
                    raise StepNotFoundError(step_inst_id)
        except pg_errors.CheckViolation as exc:
            raise _leased(step_inst_id, exc) from exc

    def update_step_status(self, step_inst_id: str, status: StepStatus) -> None:
        self._update_step(step_inst_id, status=_step_status(status).value)

    def update_step_output(self, step_inst_id: str, output: Mapping[str, Any]) -> None:
        value = _json_in(dict(output) if output is not None else None, "step output")
        self._update_step(step_inst_id, output=value)

    def update_step_error(self, step_inst_id: str, error: BaseException | str) -> None:
        self._update_step(step_inst_id, status=StepStatus.FAILED.value, error=_error_in(error))

    # -- events ---------------------------------------------------------------------------

    def save_event(self, event: WorkflowEvent) -> None:
        """Append an event; saving one with an ID already stored is a no-op.

        Unknown workflow -> WorkflowNotFoundError; unknown step -> StepNotFoundError.
        """
        key = _instance_key(event.workflow_inst_id)
        step_key = _uuid(event.step_inst_id, "event step_inst_id") if event.step_inst_id is not None else None
        params = {
            "id": _uuid(event.id, "event id"),
            "workflow_inst_id": key,
            "step_inst_id": step_key,
            "event_type": _text(event.event_type, "event_type"),
            "event_data": _json_in(event.event_data, "event data"),
            "timestamp": _ts_in(event.timestamp),
        }
        with self._db() as conn:
            if self._q.save_event(conn, params) == 1:
                return
            # not stored: tell an unknown instance or step from an event already there
            if not self._q.workflow_exists(conn, key):
                raise WorkflowNotFoundError(event.workflow_inst_id)
            if step_key is not None and not self._q.step_exists(conn, step_key):
                raise StepNotFoundError(str(event.step_inst_id))
            # else: the event was already stored

    def get_workflow_events(self, workflow_inst_id: str) -> list[WorkflowEvent]:
        """The instance's events, oldest first (ties in emission order)."""
        key = _instance_key(workflow_inst_id)
        with self._db(atomic=True) as conn:
            rows = self._q.workflow_events(conn, key)
            if not rows and not self._q.workflow_exists(conn, key):
                raise WorkflowNotFoundError(workflow_inst_id)
        return [_event_out(r) for r in rows]


def _instance_key(workflow_inst_id: str) -> uuid.UUID:
    """An instance ID as the database keys it; anything that is not a UUID is unknown."""
    if not is_uuid(workflow_inst_id):
        raise WorkflowNotFoundError(str(workflow_inst_id))
    return uuid.UUID(workflow_inst_id)


def _step_key(step_inst_id: str) -> uuid.UUID:
    if not is_uuid(step_inst_id):
        raise StepNotFoundError(str(step_inst_id))
    return uuid.UUID(step_inst_id)


def _leased(step_inst_id: str, exc: pg_errors.CheckViolation) -> Exception:
    if exc.diag.constraint_name == "orchwf_ls_lease_consistent":
        return InvalidStateError(
            f"step {step_inst_id} is leased by a daemon worker; only the worker (or the "
            "daemon's rescue) may move it out of running"
        )
    return ValidationError(f"invalid step instance: {exc.diag.message_primary}")


def _workflow_status(status: Any) -> WorkflowStatus:
    try:
        return WorkflowStatus(status)
    except ValueError:
        allowed = ", ".join(s.value for s in WorkflowStatus)
        raise ValidationError(f"unknown workflow status {status!r}; allowed: {allowed}") from None


def _step_status(status: Any) -> StepStatus:
    try:
        return StepStatus(status)
    except ValueError:
        allowed = ", ".join(s.value for s in StepStatus)
        raise ValidationError(f"unknown step status {status!r}; allowed: {allowed}") from None


def _after_fork_in_child() -> None:
    # Runs in the child right after fork(), before any other thread exists there.
    for store in list(_LIVE_STORES):
        store._forget_parent()


_LIVE_STORES: weakref.WeakSet[DBStateManager] = weakref.WeakSet()
os.register_at_fork(after_in_child=_after_fork_in_child)
