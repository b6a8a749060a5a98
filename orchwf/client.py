"""The producer and operator API: enqueue on the app's own transaction, or via Client.

Everything here calls the SQL API (sql/api/), so a Python producer, psql and any other
language enqueue exactly the same way.
"""

from __future__ import annotations

import json
import math
import select
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from .cron import CronSchedule
from .dag import dependents, validate_definition
from .db.connect import connect
from .db.errors import translate_errors
from .db.queries import Queries
from .db.rows import ConcurrencyKey, QueueControl, ScheduleRow
from .errors import ScheduleNotFoundError, ValidationError, WorkflowNotFoundError
from .jsonvalue import check_json_object
from .schedules import check_definition_schedules, check_name, check_schedule
from .stores.base import is_uuid
from .tracing import with_traceparent
from .types import JSONDict, Schedule, WorkflowDefinition, WorkflowEvent, WorkflowInstance

MAX_KEY_LENGTH = 255
MAX_PRIORITY = 2**29  # priorities are summed in int4 (instance + step + compensation boost)


def definition_document(definition: WorkflowDefinition) -> JSONDict:
    """The definition as stored for producers and the SQL API: the graph plus dependents."""
    doc = definition.to_json()
    children = dependents(definition.steps)
    for step in doc["steps"]:
        step["dependents"] = children[step["id"]]
    return doc


def register_workflow(conn: psycopg.Connection[Any], definition: WorkflowDefinition, *, schema: str = "public") -> None:
    """Upsert a definition so producers can enqueue it by ID without importing its code,
    and make the database's schedules of the workflow its own (``with_schedule``)."""
    validate_definition(definition)
    schedules = check_definition_schedules(definition)
    q = Queries.of(schema)
    with translate_errors(), conn.transaction():
        _check_children(conn, q, definition)
        q.register_workflow(conn, definition.id, definition.name, definition.version,
                            definition.version_hash, definition_document(definition))
        for schedule in schedules:
            save_schedule(conn, q, definition.id, schedule, "definition")
        # Unchanged schedules keep their next run; those the definition dropped go.
        q.forget_definition_schedules(conn, definition.id, [s.name for s in schedules])


def _check_children(conn: psycopg.Connection[Any], q: Queries, definition: WorkflowDefinition) -> None:
    """The workflows its child_workflow_steps start must be registered, and no chain of
    children may lead back to it (a static cycle would start instances without end)."""
    children = {s.child_workflow: s.id for s in definition.steps if s.child_workflow}
    for child, step in children.items():
        if child != definition.id and not q.workflow_registered(conn, child):
            raise ValidationError(f"step {step} of {definition.id} starts workflow {child!r}, which is not "
                                  "registered: register it first")
    seen: set[str] = set()
    frontier = [(child, [definition.id, child]) for child in children]
    while frontier:
        workflow, path = frontier.pop()
        if workflow == definition.id:
            raise ValidationError(f"child workflows form a cycle: {' -> '.join(path)}")
        if workflow in seen:
            continue
        seen.add(workflow)
        frontier += [(c, [*path, c]) for c in q.child_workflows_of(conn, workflow)]


def registration_order(definitions: Iterable[WorkflowDefinition]) -> list[WorkflowDefinition]:
    """``definitions`` with each child workflow before the workflows that start it (the
    order the daemon registers them in); a cycle among them is a ValidationError."""
    by_id = {d.id: d for d in definitions}
    order: list[WorkflowDefinition] = []
    state: dict[str, str] = {}

    def visit(workflow_id: str, path: list[str]) -> None:
        if state.get(workflow_id) == "done" or workflow_id not in by_id:
            return
        if state.get(workflow_id) == "visiting":
            raise ValidationError(f"child workflows form a cycle: {' -> '.join([*path, workflow_id])}")
        state[workflow_id] = "visiting"
        for step in by_id[workflow_id].steps:
            if step.child_workflow:
                visit(step.child_workflow, [*path, workflow_id])
        state[workflow_id] = "done"
        order.append(by_id[workflow_id])

    for workflow_id in by_id:
        visit(workflow_id, [])
    return order


def save_schedule(conn: psycopg.Connection[Any], q: Queries, workflow_id: str, schedule: Schedule,
                  source: str) -> None:
    """Add or replace a validated schedule; its first run is the next tick after now (the
    database's clock). An unchanged cron and time zone keep the next run they have."""
    now = q.db_now(conn)
    q.upsert_schedule(conn, {
        "name": schedule.name, "workflow_id": workflow_id, "cron": schedule.cron, "timezone": schedule.timezone,
        "input": Jsonb(dict(schedule.input)), "misfire": schedule.misfire, "source": source,
        "next_run_at": CronSchedule.parse(schedule.cron, schedule.timezone).next_after(now)})


def add_schedule(conn: psycopg.Connection[Any], workflow_id: str, cron: str, *, timezone: str = "UTC",
                 input: Mapping[str, Any] | None = None, name: str | None = None, misfire: str = "once",
                 schema: str = "public") -> str:
    """Client.add_schedule on the caller's connection (the CLI's)."""
    if not isinstance(workflow_id, str) or not workflow_id:
        raise ValidationError(f"workflow_id must be a non-empty string, got {workflow_id!r}")
    schedule = check_schedule(Schedule(cron, timezone, {} if input is None else input, name or "", misfire),
                              workflow_id)
    q = Queries.of(schema)
    with translate_errors(), conn.transaction():
        if not q.workflow_registered(conn, workflow_id):
            raise WorkflowNotFoundError(workflow_id)
        save_schedule(conn, q, workflow_id, schedule, "client")
    return schedule.name


def remove_schedule(conn: psycopg.Connection[Any], name: str, *, schema: str = "public") -> None:
    check_name(name)
    with translate_errors():
        if not Queries.of(schema).delete_schedule(conn, name):
            raise ScheduleNotFoundError(name)


def set_schedule_paused(conn: psycopg.Connection[Any], name: str, paused: bool, *, schema: str = "public") -> None:
    """Pause, or resume from the next tick after now (ticks while paused are skipped)."""
    check_name(name)
    q = Queries.of(schema)
    with translate_errors(), conn.transaction():
        row = q.get_schedule(conn, name)
        if row is None:
            raise ScheduleNotFoundError(name)
        if row.paused == paused:
            return  # already so: a resume of an active schedule must not move its next run
        next_run = None if paused else CronSchedule.parse(row.cron, row.timezone).next_after(q.db_now(conn))
        q.set_schedule_paused(conn, name, paused, next_run)


def signal(conn: psycopg.Connection[Any], instance_id: str, name: str, payload: Mapping[str, Any] | None = None,
           *, schema: str = "public") -> int:
    """Send the signal ``name`` to an instance inside the caller's transaction (a rollback
    sends nothing); returns its id. See Client.signal."""
    return signal_many(conn, [(instance_id, name, payload)], schema=schema)[0]


def signal_many(conn: psycopg.Connection[Any], signals: Iterable[tuple[str, str, Mapping[str, Any] | None]],
                *, schema: str = "public") -> list[int]:
    """Send ``(instance_id, name, payload)`` signals in one statement inside the caller's
    transaction (all or none); returns their ids in order. See Client.signal_many."""
    ids: list[str] = []
    names: list[str] = []
    payloads: list[JSONDict] = []
    for item in signals:
        if not isinstance(item, tuple) or len(item) != 3:
            raise ValidationError(f"a signal is an (instance_id, name, payload) tuple, got {item!r}")
        instance_id, name, payload = item
        if not is_uuid(instance_id):
            raise WorkflowNotFoundError(str(instance_id))
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_KEY_LENGTH or "\x00" in name:
            raise ValidationError(f"a signal name must be a string of 1 to {MAX_KEY_LENGTH} characters, got {name!r}")
        ids.append(str(instance_id))
        names.append(name)
        payloads.append(check_json_object({} if payload is None else payload, "signal payload"))
    if not ids:
        return []
    with translate_errors():
        return Queries.of(schema).send_signals(conn, ids, names, payloads)


def _check_options(
    workflow_id: str, priority: int | None, queue: str | None, run_after: datetime | None
) -> None:
    if not isinstance(workflow_id, str) or not workflow_id:
        raise ValidationError(f"workflow_id must be a non-empty string, got {workflow_id!r}")
    if len(workflow_id) > MAX_KEY_LENGTH or "\x00" in workflow_id or not _encodable(workflow_id):
        # cannot exist; shown escaped, so printing the error cannot fail on a lone surrogate
        raise WorkflowNotFoundError(workflow_id.encode("utf-8", "backslashreplace").decode("utf-8"))
    if priority is not None:
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise ValidationError(f"priority must be an int, got {priority!r}")
        if abs(priority) > MAX_PRIORITY:
            raise ValidationError(f"priority {priority} is out of range (±{MAX_PRIORITY})")
    if queue is not None:
        check_queue_name(queue)
    if run_after is not None:
        if not isinstance(run_after, datetime) or run_after.tzinfo is None:
            raise ValidationError("run_after must be a timezone-aware datetime")


def check_queue_name(queue: object) -> str:
    """A queue name as enqueue accepts it (orchwf_check_queue_name in SQL says the same)."""
    if (not isinstance(queue, str) or not 1 <= len(queue) <= MAX_KEY_LENGTH or "\x00" in queue
            or not _encodable(queue)):
        raise ValidationError(f"queue must be a string of 1 to {MAX_KEY_LENGTH} characters, got {queue!r}")
    return queue


def pause_queue(conn: psycopg.Connection[Any], queue: str, *, schema: str = "public") -> bool:
    """Pause ``queue`` for every worker on every host, in the caller's transaction.

    From the commit on, no claim takes a step of it; running steps finish, and enqueues
    still work (their steps wait). Returns False when it was paused already.
    """
    check_queue_name(queue)
    with translate_errors():
        return Queries.of(schema).pause_queue(conn, queue)


def resume_queue(conn: psycopg.Connection[Any], queue: str, *, schema: str = "public") -> bool:
    """Resume a paused ``queue``; its waiting steps start at once (a notification wakes
    the workers at the commit). Returns False when it was not paused."""
    check_queue_name(queue)
    with translate_errors():
        return Queries.of(schema).resume_queue(conn, queue)


MAX_RATE = 1_000_000  # starts per second (and burst): the bounds orchwf_set_queue_rate_limit checks


def check_rate_limit(per_second: object, burst: object = None) -> tuple[float, int | None]:
    """A rate (starts per second, > 0) and an optional burst (>= 1), as the SQL API takes them."""
    if isinstance(per_second, bool) or not isinstance(per_second, (int, float)):
        raise ValidationError(f"rate must be a number of starts per second, got {per_second!r}")
    if not math.isfinite(per_second) or not 0 < per_second <= MAX_RATE:
        raise ValidationError(f"rate must be more than 0 and at most {MAX_RATE} per second, got {per_second!r}")
    if burst is not None and (isinstance(burst, bool) or not isinstance(burst, int) or not 1 <= burst <= MAX_RATE):
        raise ValidationError(f"burst must be an int from 1 to {MAX_RATE}, got {burst!r}")
    return float(per_second), burst


def set_queue_rate_limit(conn: psycopg.Connection[Any], queue: str, per_second: float | None, *,
                         burst: int | None = None, schema: str = "public") -> None:
    """Limit how many steps of ``queue`` start per second, on all hosts together (None: no limit).

    A token bucket: at most ``burst`` starts at once (default: one second's worth, at
    least 1), refilled at ``per_second``; so never more than burst + per_second x T
    starts in any T seconds. Stored in the database, in the caller's transaction.
    """
    check_queue_name(queue)
    if per_second is None:
        if burst is not None:
            raise ValidationError("a burst needs a rate")
    else:
        per_second, burst = check_rate_limit(per_second, burst)
    with translate_errors():
        Queries.of(schema).set_queue_rate_limit(conn, queue, per_second, burst)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def _check_metadata_ids(meta: Mapping[str, Any]) -> None:
    """trace_id, correlation_id and business_id become indexed columns: keep them short
    (a value beyond a B-tree entry's ~2.7 kB would fail the INSERT with a raw database error)."""
    for name in ("trace_id", "correlation_id", "business_id"):
        value = meta.get(name)
        if value is None:
            continue
        try:
            text = value if isinstance(value, str) else json.dumps(value)
        except ValueError as exc:  # e.g. an int of more than 4300 digits
            raise ValidationError(f"metadata[{name!r}]: {exc}") from None
        if len(text) > MAX_KEY_LENGTH:
            raise ValidationError(f"metadata[{name!r}] must be at most {MAX_KEY_LENGTH} characters, got {len(text)}")


def _check_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY_LENGTH or "\x00" in key:
        raise ValidationError(f"idempotency_key must be a string of 1 to {MAX_KEY_LENGTH} characters")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("idempotency_key is not valid Unicode") from None
    return key


def enqueue_many(
    conn: psycopg.Connection[Any],
    workflow_id: str,
    inputs: Iterable[Mapping[str, Any] | None],
    *,
    metadata: Mapping[str, Any] | None = None,
    priority: int | None = None,
    idempotency_keys: Sequence[str | None] | None = None,
    queue: str | None = None,
    run_after: datetime | None = None,
    schema: str = "public",
) -> list[str]:
    """Insert instances in one round trip, on the caller's connection and transaction.

    Returns the IDs in input order; a duplicate idempotency key gives the existing ID.
    A span active in the caller becomes the parent of the steps' spans (tracing.py).
    """
    _check_options(workflow_id, priority, queue, run_after)
    docs = [Jsonb(check_json_object(x, f"inputs[{i}]") if x is not None else {}) for i, x in enumerate(inputs)]
    meta = with_traceparent(check_json_object(metadata, "metadata"))
    _check_metadata_ids(meta)
    keys = None
    if idempotency_keys is not None:
        keys = [_check_key(k) for k in idempotency_keys]
        if len(keys) != len(docs):
            raise ValidationError(f"got {len(keys)} idempotency keys for {len(docs)} inputs")
    if not docs:
        return []
    # Binary parameters: a batch of JSON documents costs less to send and to parse.
    with translate_errors():
        try:
            return Queries.of(schema).enqueue_many(conn, workflow_id, docs, Jsonb(meta), priority, keys, queue,
                                                   run_after)
        except ValueError as exc:  # json cannot write it (an int of more than 4300 digits): nothing was sent
            raise ValidationError(f"input or metadata cannot be written as JSON: {exc}") from None


def enqueue(
    conn: psycopg.Connection[Any],
    workflow_id: str,
    input: Mapping[str, Any] | None,
    *,
    metadata: Mapping[str, Any] | None = None,
    priority: int | None = None,
    idempotency_key: str | None = None,
    queue: str | None = None,
    run_after: datetime | None = None,
    schema: str = "public",
) -> str:
    """Insert one workflow instance inside the caller's transaction; a rollback removes it."""
    ids = enqueue_many(
        conn, workflow_id, [input], metadata=metadata, priority=priority,
        idempotency_keys=None if idempotency_key is None else [idempotency_key],
        queue=queue, run_after=run_after, schema=schema,
    )
    return ids[0]


class Client:
    """Producer and operator API over a DSN (or the embedded default when None)."""

    def __init__(self, dsn: str | None = None, *, schema: str = "public") -> None:
        from .db.resolve import resolve_dsn
        from .stores.postgres import DBStateManager

        self.dsn = resolve_dsn(dsn)
        self.schema = schema
        self.q = Queries.of(schema)
        self._store = DBStateManager(self.dsn, schema=schema)

    @contextmanager
    def _connect(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection for one call, in a transaction that commits when the block
        ends (rolls back on an error). Pooled, not opened per call: a new session plans
        orchwf's SQL functions again on their first call in it, which cost a signal 15 ms."""
        with self._store.connection() as conn, conn.transaction():
            yield conn

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def register_workflow(self, definition: WorkflowDefinition) -> None:
        with self._connect() as conn:
            register_workflow(conn, definition, schema=self.schema)

    def enqueue(self, workflow_id: str, input: Mapping[str, Any] | None, **options: Any) -> str:
        with self._connect() as conn:
            return enqueue(conn, workflow_id, input, schema=self.schema, **options)

    def enqueue_many(self, workflow_id: str, inputs: Iterable[Mapping[str, Any] | None], **options: Any) -> list[str]:
        with self._connect() as conn:
            return enqueue_many(conn, workflow_id, inputs, schema=self.schema, **options)

    def get_workflow(self, instance_id: str) -> WorkflowInstance:
        return self._store.get_workflow(instance_id)

    def list_workflows(
        self, filters: Mapping[str, Any] | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[list[WorkflowInstance], int]:
        return self._store.list_workflows(filters, limit, offset)

    def get_workflow_events(self, instance_id: str) -> list[WorkflowEvent]:
        return self._store.get_workflow_events(instance_id)

    def cancel_workflow(self, instance_id: str) -> str:
        """Cancel a pending or running instance; running steps' results are discarded."""
        if not is_uuid(instance_id):
            raise WorkflowNotFoundError(str(instance_id))
        with self._connect() as conn, translate_errors():
            return self.q.cancel_workflow(conn, instance_id)

    def resume_workflow(self, instance_id: str) -> str:
        """Re-run the failed, cancelled and pending steps of a failed or cancelled instance."""
        if not is_uuid(instance_id):
            raise WorkflowNotFoundError(str(instance_id))
        with self._connect() as conn, translate_errors():
            return self.q.resume_workflow(conn, instance_id)

    def signal(self, instance_id: str, name: str, payload: Mapping[str, Any] | None = None) -> int:
        """Send the signal ``name`` (with a JSON-object ``payload``) to a running instance:
        a step of it that waits for ``name`` (wait_for_signal) completes with the payload
        as its output, now or when it comes to wait (a signal is kept until then). Each
        signal is received once. Refused, with nothing stored: an unknown or finished
        instance, a name none of its steps waits for. Returns the signal's id."""
        with self._connect() as conn:
            return signal(conn, instance_id, name, payload, schema=self.schema)

    def signal_many(self, signals: Iterable[tuple[str, str, Mapping[str, Any] | None]]) -> list[int]:
        """Send many ``(instance_id, name, payload)`` signals in one transaction and one
        statement (all are sent or, on any refusal, none); returns their ids in order.
        As Client.signal, one at a time, but at thousands a second."""
        with self._connect() as conn:
            return signal_many(conn, signals, schema=self.schema)

    # -- cron schedules (docs/schedules.md) ------------------------------------------------

    def add_schedule(self, workflow_id: str, cron: str, *, timezone: str = "UTC",
                     input: Mapping[str, Any] | None = None, name: str | None = None,
                     misfire: str = "once") -> str:
        """Add (or replace, by name) a schedule that starts ``workflow_id`` at each tick of
        ``cron`` in ``timezone``; returns its name (default ``"<workflow_id> <cron>"``).
        The workflow must be registered. A daemon fires it (``orchwf worker``)."""
        with self._connect() as conn:
            return add_schedule(conn, workflow_id, cron, timezone=timezone, input=input, name=name,
                                misfire=misfire, schema=self.schema)

    def remove_schedule(self, name: str) -> None:
        """Remove a schedule; instances it started stay. ScheduleNotFoundError (a KeyError)
        when there is none."""
        with self._connect() as conn:
            remove_schedule(conn, name, schema=self.schema)

    def list_schedules(self) -> list[ScheduleRow]:
        """Every schedule, by name, with its next and last run."""
        with self._connect() as conn, translate_errors():
            return self.q.list_schedules(conn)

    def pause_schedule(self, name: str) -> None:
        """Stop firing ``name`` until resumed (ticks meanwhile are skipped)."""
        with self._connect() as conn:
            set_schedule_paused(conn, name, True, schema=self.schema)

    def resume_schedule(self, name: str) -> None:
        """Fire ``name`` again, from its next tick after now."""
        with self._connect() as conn:
            set_schedule_paused(conn, name, False, schema=self.schema)

    def pause_queue(self, name: str) -> bool:
        """Pause a queue globally: no worker starts its steps until ``resume_queue``.

        Running steps finish; enqueues still work. False when it was paused already.
        """
        with self._connect() as conn:
            return pause_queue(conn, name, schema=self.schema)

    def resume_queue(self, name: str) -> bool:
        """Resume a paused queue; its waiting steps start at once. False when it was not paused."""
        with self._connect() as conn:
            return resume_queue(conn, name, schema=self.schema)

    def set_queue_rate_limit(self, name: str, per_second: float, *, burst: int | None = None) -> None:
        """Start at most ``per_second`` steps of the queue per second, across all hosts
        (a token bucket of ``burst`` starts, default one second's worth)."""
        if per_second is None:
            raise ValidationError("rate must be a number of starts per second; remove_queue_rate_limit removes it")
        with self._connect() as conn:
            set_queue_rate_limit(conn, name, per_second, burst=burst, schema=self.schema)

    def remove_queue_rate_limit(self, name: str) -> None:
        """No rate limit for the queue any more (a no-op when it had none)."""
        with self._connect() as conn:
            set_queue_rate_limit(conn, name, None, schema=self.schema)

    def list_queue_controls(self) -> list[QueueControl]:
        """The queues an operator has set something on (paused, resumed, rate limited), by name."""
        with self._connect() as conn, translate_errors():
            return self.q.queue_controls(conn)

    def list_concurrency_keys(self, limit: int = 100) -> list[ConcurrencyKey]:
        """Concurrency keys in use (slots held or steps waiting), the busiest first: how
        many of each key's slots run (or are ready) and how many wait for one."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValidationError(f"limit must be a positive int, got {limit!r}")
        with self._connect() as conn, translate_errors():
            return self.q.concurrency_keys(conn, limit)

    def wait(self, instance_id: str, timeout: float | None = None) -> WorkflowInstance:
        """Block until the instance is terminal (LISTEN orchwf_done, polling as fallback).

        The finish notifies only instances someone watches: this connection listens, then
        watches the instance, then reads its status (sql/api/finish.sql, orchwf_notify_done)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        inst = self.get_workflow(instance_id)
        if inst.status.is_terminal:
            return inst
        with connect(self.dsn, application_name="orchwf-client wait", keepalive=False) as conn:
            self.q.listen(conn, "orchwf_done")
            try:
                self.q.watch_instance(conn, inst.id)
            except psycopg.errors.UndefinedFunction:
                pass  # a schema not migrated yet (a rolling deploy): its finish notifies every end
            except psycopg.errors.LockNotAvailable:
                pass  # its finish is in a transaction held open: the poll below sees the commit
            while True:
                inst = self.get_workflow(instance_id)
                if inst.status.is_terminal:
                    return inst
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"workflow {instance_id} did not finish within {timeout}s")
                wait_for = 1.0 if remaining is None else min(1.0, remaining)
                select.select([conn.fileno()], [], [], wait_for)
                for _ in conn.notifies(timeout=0):
                    pass
