"""Operator commands: list, show, cancel, resume, retry-step, enqueue, stats, workers, prune.

For a shell at 3 a.m. and for scripts: every command takes ``--dsn`` and ``--schema``
after its name (``ORCHWF_DSN`` / ``ORCHWF_SCHEMA``; default: the embedded database),
prints a human table by default and JSON with ``--json``. Exit codes: 0 success, 1 the
operation failed (one ``error: ...`` line, printed by the top-level group), 2 usage.

Every change goes through the SQL API (sql/api/), so these commands do exactly what a
producer or psql would do; every read is a statement of db/queries.py. Reads stay cheap on
a big history: they use indexes and the small runtime tables, never a full scan, except
``list`` with filters that no index covers.

This module must not import prometheus_client (``orchwf worker`` loads every command
module before it sets PROMETHEUS_MULTIPROC_DIR).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, TypeVar

import click

from ..types import WorkflowStatus

F = TypeVar("F", bound=Callable[..., Any])

STATUSES = tuple(s.value for s in WorkflowStatus)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
STATS_DEPTH_CAP = 1_000_000
LIVE_SECONDS = 60  # a worker row with an older heartbeat is shown as stale


# -- options and connections ----------------------------------------------------------------


def _check_schema(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from ..db.queries import validate_schema
    from ..errors import ValidationError

    try:
        return validate_schema(value)
    except ValidationError as exc:
        raise click.BadParameter(str(exc)) from None


def db_options(fn: F) -> F:
    """--dsn and --schema, the same on every database command."""
    fn = click.option("--schema", envvar="ORCHWF_SCHEMA", default="public", show_default=True,
                      callback=_check_schema, help="Postgres schema of orchwf's tables [env ORCHWF_SCHEMA].")(fn)
    fn = click.option("--dsn", envvar="ORCHWF_DSN", metavar="CONNINFO",
                      help="PostgreSQL conninfo or URL [env ORCHWF_DSN; default: the embedded database].")(fn)
    return fn


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON (for scripts).")(fn)


@contextmanager
def connection(dsn: str | None) -> Iterator[Any]:
    """An autocommit connection; SQL API errors become orchwf errors (one line, exit 1)."""
    from ..db.connect import connect
    from ..db.errors import translate_errors
    from ..db.resolve import resolve_dsn

    conn = connect(resolve_dsn(dsn), connect_timeout=10, application_name="orchwf-cli", keepalive=False)
    try:
        with translate_errors():
            yield conn
    finally:
        conn.close()


def queries(schema: str) -> Any:
    from ..db.queries import Queries

    return Queries.of(schema)


def _instance_id(value: str) -> str:
    """An instance ID, or WorkflowNotFoundError (exit 1) for anything that is not a UUID."""
    from ..errors import WorkflowNotFoundError
    from ..stores.base import is_uuid

    if not is_uuid(value):
        raise WorkflowNotFoundError(value)
    return value


def parse_duration(text: str) -> float:
    """'7d', '12h', '1h30m', '90s', '2w' or plain seconds -> seconds."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    if not text or _DURATION.sub("", text):
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 30m, 12h, 7d, 2w, 1h30m)")
    return sum(float(n) * _UNITS[unit] for n, unit in _DURATION.findall(text))


def _duration_option(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


# -- output -----------------------------------------------------------------------------------


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=_json_default, ensure_ascii=False))


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat()
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Columns padded to their widest cell; the last column is not padded."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for row in cells:
        line = "  ".join(c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True))
        click.echo((line + "  " + row[-1]).rstrip() if len(row) > 1 else row[0])


def ts(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def clock(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(timezone.utc).strftime("%H:%M:%S.%f")[:-3]


def age(seconds: float | None) -> str:
    """3.2s, 5m12s, 2h03m, 3d04h."""
    if seconds is None:
        return "-"
    s = max(0.0, float(seconds))
    if s < 60:
        return f"{s:.1f}s"
    s_int = int(s)
    if s_int < 3600:
        return f"{s_int // 60}m{s_int % 60:02d}s"
    if s_int < 86400:
        return f"{s_int // 3600}h{s_int % 3600 // 60:02d}m"
    return f"{s_int // 86400}d{s_int % 86400 // 3600:02d}h"


def short(text: Any, width: int = 60) -> str:
    value = text if isinstance(text, str) else json.dumps(text, default=str, ensure_ascii=False)
    value = " ".join(value.split())
    return value if len(value) <= width else value[: width - 1] + "…"


def _instance_summary(inst: Any) -> dict[str, Any]:
    return {
        "id": inst.id, "workflow_id": inst.workflow_id, "status": str(inst.status), "queue": inst.queue,
        "priority": inst.priority, "run_mode": inst.run_mode, "created_at": inst.created_at,
        "started_at": inst.started_at, "completed_at": inst.completed_at, "error": inst.error,
        "retry_count": inst.retry_count, "trace_id": inst.trace_id, "correlation_id": inst.correlation_id,
        "business_id": inst.business_id, "idempotency_key": inst.idempotency_key,
    }


def _took(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "-"
    return age((end - start).total_seconds())


# -- list, show ------------------------------------------------------------------------------


@click.command("list")
@db_options
@click.option("--workflow", "workflow_id", help="Only instances of this workflow ID.")
@click.option("--status", type=click.Choice(STATUSES), help="Only instances in this status.")
@click.option("--trace-id", help="Only instances with this trace ID.")
@click.option("--correlation-id", help="Only instances with this correlation ID.")
@click.option("--business-id", help="Only instances with this business ID.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(0, None), default=0, show_default=True)
@json_option
def list_cmd(dsn: str | None, schema: str, workflow_id: str | None, status: str | None, trace_id: str | None,
             correlation_id: str | None, business_id: str | None, limit: int, offset: int, as_json: bool) -> None:
    """List workflow instances, newest first."""
    from ..stores.postgres import DBStateManager

    filters = {k: v for k, v in (("workflow_id", workflow_id), ("status", status), ("trace_id", trace_id),
                                 ("correlation_id", correlation_id), ("business_id", business_id)) if v is not None}
    with connection(dsn) as conn:
        instances, total = DBStateManager(conn, schema).list_workflows(filters, limit, offset)
    if as_json:
        emit_json({"total": total, "limit": limit, "offset": offset,
                   "workflows": [_instance_summary(i) for i in instances]})
        return
    if not instances:
        click.echo("no workflow instances" + (" match" if filters else ""))
        return
    table(["ID", "WORKFLOW", "STATUS", "QUEUE", "CREATED", "TOOK", "ERROR"],
          [[i.id, i.workflow_id, i.status, i.queue, ts(i.created_at), _took(i.started_at, i.completed_at),
            short(i.error, 50) if i.error else ""] for i in instances])
    click.echo(f"-- {offset + 1}-{offset + len(instances)} of {total}")


@click.command("show")
@db_options
@click.argument("instance_id")
@json_option
def show_cmd(dsn: str | None, schema: str, instance_id: str, as_json: bool) -> None:
    """Show one instance: its steps, attempts, errors and events as a tree."""
    from ..stores.postgres import DBStateManager

    instance_id = _instance_id(instance_id)
    with connection(dsn) as conn:
        store = DBStateManager(conn, schema)
        inst = store.get_workflow(instance_id)
        events = store.get_workflow_events(instance_id)
        details = {str(d.step_inst_id): d for d in queries(schema).step_details(conn, instance_id)}
    steps = []
    for s in inst.steps:
        d = details.get(s.id)
        steps.append({
            "id": s.id, "step_id": s.step_id, "status": str(s.status), "attempts": s.attempts,
            "max_attempts": d.max_attempts if d else None, "retry_count": s.retry_count,
            "crashes": d.crashes if d else 0, "required": d.required if d else True,
            "started_at": s.started_at, "completed_at": s.completed_at, "duration_ms": s.duration_ms,
            "error": s.error, "lease_owner": d.lease_owner if d else None,
            "lease_expires_at": d.lease_expires_at if d else None, "run_after": d.run_after if d else None,
            "input": s.input, "output": s.output,
            "_expires_in": d.lease_expires_in if d else None, "_due_in": d.due_in if d else None,
            "events": [_event_json(e) for e in events if e.step_inst_id == s.id],
        })
    doc = _instance_summary(inst) | {
        "parent": _parent(inst.metadata), "children": _children(events),
        "input": inst.input, "output": inst.output, "metadata": inst.metadata,
        "steps": [{k: v for k, v in s.items() if not k.startswith("_")} for s in steps],
        "events": [_event_json(e) for e in events if e.step_inst_id is None],
    }
    if as_json:
        emit_json(doc)
        return
    _print_tree(inst, steps, doc["events"], doc["parent"], doc["children"])


def _parent(metadata: dict[str, Any] | None) -> dict[str, Any] | None:
    """The instance that started this one (child_workflow_step), from its metadata."""
    if not metadata or "orchwf_parent" not in metadata:
        return None
    return {"id": metadata["orchwf_parent"], "step_id": metadata.get("orchwf_parent_step")}


def _children(events: list[Any]) -> list[str]:
    """The child workflows its steps started, from their step.child_started events."""
    return [str(e.event_data.get("child_instance_id")) for e in events if e.event_type == "step.child_started"]


def _event_json(event: Any) -> dict[str, Any]:
    return {"type": event.event_type, "at": event.timestamp, "data": event.event_data}


def _event_line(event: dict[str, Any]) -> str:
    data = " ".join(f"{k}={short(v, 80)}" for k, v in event["data"].items() if k != "step_id")
    return f"{clock(event['at'])}  {event['type']}" + (f"  {data}" if data else "")


def _print_tree(inst: Any, steps: list[dict[str, Any]], events: list[dict[str, Any]],
                parent: dict[str, Any] | None = None, children: Sequence[str] = ()) -> None:
    click.echo(f"workflow {inst.id}  {inst.workflow_id}  {str(inst.status).upper()}")
    fields = [
        ("queue", f"{inst.queue} · priority {inst.priority} · mode {inst.run_mode} · resumed {inst.retry_count}x"),
        ("created", ts(inst.created_at)), ("started", ts(inst.started_at)),
        ("finished", f"{ts(inst.completed_at)}  (took {_took(inst.started_at, inst.completed_at)})"
         if inst.completed_at else "-"),
        ("trace", inst.trace_id or "-"),
    ]
    if inst.correlation_id:
        fields.append(("correlation", inst.correlation_id))
    if inst.business_id:
        fields.append(("business", inst.business_id))
    if inst.idempotency_key:
        fields.append(("idempotency", inst.idempotency_key))
    if inst.error:
        fields.append(("error", inst.error))
    if parent:
        fields.append(("parent", f"parent {parent['id']} (step {parent['step_id']})"))
    for child in children:
        fields.append(("child", f"child {child}"))
    fields.append(("input", short(inst.input, 100)))
    if inst.output:
        fields.append(("output", short(inst.output, 100)))
    for name, value in fields:
        click.echo(f"  {name:<11} {value}")
    click.echo("  steps")
    width = max((len(s["step_id"]) for s in steps), default=0)
    for n, s in enumerate(steps):
        last = n == len(steps) - 1
        branch, stem = ("└── ", "    ") if last else ("├── ", "│   ")
        budget = f"{s['attempts']}/{s['max_attempts']}" if s["max_attempts"] else str(s["attempts"])
        facts = [f"attempts {budget}"]
        if s["crashes"]:
            facts.append(f"crashes {s['crashes']}")
        if s["status"] in ("completed", "failed", "skipped"):
            facts.append(f"{s['duration_ms']}ms")
        if not s["required"]:
            facts.append("optional")
        click.echo(f"  {branch}{s['step_id']:<{width}}  {s['status']:<9}  " + " · ".join(facts))
        details = []
        if s["error"]:
            details.append(f"error: {short(s['error'], 200)}")
        if s["lease_owner"]:
            details.append(f"running on {s['lease_owner']}, lease expires in {age(s['_expires_in'])}")
        if s["run_after"]:
            details.append(f"next attempt at {ts(s['run_after'])} (in {age(s['_due_in'])})")
        details += [_event_line(e) for e in s["events"]]
        for line in details:
            click.echo(f"  {stem}    {line}")
    click.echo("  events")
    for event in events:
        click.echo(f"      {_event_line(event)}")


# -- cancel, resume, retry-step, enqueue -----------------------------------------------------


def _report(as_json: bool, instance_id: str, status: str, action: str, **extra: Any) -> None:
    if as_json:
        emit_json({"id": instance_id, "status": status, **extra})
    else:
        click.echo(f"{action} {instance_id}: now {status}")


@click.command("cancel")
@db_options
@click.argument("instance_id")
@json_option
def cancel_cmd(dsn: str | None, schema: str, instance_id: str, as_json: bool) -> None:
    """Cancel a pending or running instance (its compensators run, if any)."""
    with connection(dsn) as conn:
        status = queries(schema).cancel_workflow(conn, _instance_id(instance_id))
    _report(as_json, instance_id, status, "cancelled")


@click.command("resume")
@db_options
@click.argument("instance_id")
@json_option
def resume_cmd(dsn: str | None, schema: str, instance_id: str, as_json: bool) -> None:
    """Re-run the failed, cancelled and pending steps of a failed or cancelled instance."""
    with connection(dsn) as conn:
        status = queries(schema).resume_workflow(conn, _instance_id(instance_id))
    _report(as_json, instance_id, status, "resumed")


@click.command("retry-step")
@db_options
@click.argument("instance_id")
@click.argument("step_id")
@json_option
def retry_step_cmd(dsn: str | None, schema: str, instance_id: str, step_id: str, as_json: bool) -> None:
    """Re-run one failed, skipped or cancelled step of a failed or cancelled instance.

    The steps cancelled when the instance ended run again too, so it can finish; if
    other steps failed, this refuses: resume the instance instead.
    """
    with connection(dsn) as conn:
        status = queries(schema).retry_step(conn, _instance_id(instance_id), step_id)
    _report(as_json, instance_id, status, f"retrying step {step_id} of", step_id=step_id)


def _json_object(ctx: click.Context, param: click.Parameter, value: str | None) -> dict[str, Any] | None:
    """A JSON object given inline, as @file, or as - (stdin)."""
    if value is None:
        return None
    text = value
    if value == "-":
        text = sys.stdin.read()
    elif value.startswith("@"):
        try:
            with open(value[1:], encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise click.BadParameter(f"cannot read {value[1:]}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise click.BadParameter(f"cannot read {value[1:]}: not UTF-8 text") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}") from None
    except RecursionError:
        raise click.BadParameter("not valid JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise click.BadParameter(f"must be a JSON object, got {type(doc).__name__}")
    return doc


@click.command("enqueue")
@db_options
@click.argument("workflow_id")
@click.option("--input", "input_", default="{}", callback=_json_object, metavar="JSON|@FILE|-",
              show_default=True, help="The instance's input: a JSON object, @path to a file, or - for stdin.")
@click.option("--metadata", callback=_json_object, metavar="JSON|@FILE",
              help="Metadata (a JSON object; trace_id, correlation_id and business_id are picked up).")
@click.option("--priority", type=click.IntRange(-(2**30), 2**30 - 1), help="Higher runs first [default: 0].")
@click.option("--queue", help="Queue to run on [default: default].")
@click.option("--idempotency-key", help="Enqueue at most once per key and workflow: a repeat returns the same ID.")
@json_option
def enqueue_cmd(dsn: str | None, schema: str, workflow_id: str, input_: dict[str, Any], metadata: dict[str, Any] | None,
                priority: int | None, queue: str | None, idempotency_key: str | None, as_json: bool) -> None:
    """Start an instance of WORKFLOW (registered by a running worker); print its ID."""
    from ..client import enqueue

    with connection(dsn) as conn:
        instance_id = enqueue(conn, workflow_id, input_, metadata=metadata, priority=priority,
                              idempotency_key=idempotency_key, queue=queue, schema=schema)
    if as_json:
        emit_json({"id": instance_id, "workflow_id": workflow_id})
    else:
        click.echo(instance_id)


@click.command("signal")
@db_options
@click.argument("instance_id")
@click.argument("name")
@click.option("--payload", default="{}", callback=_json_object, metavar="JSON|@FILE|-", show_default=True,
              help="The signal's payload (a JSON object): the output of the step that receives it.")
@json_option
def signal_cmd(dsn: str | None, schema: str, instance_id: str, name: str, payload: dict[str, Any],
               as_json: bool) -> None:
    """Send the signal NAME to INSTANCE_ID: its wait_for_signal step for NAME completes."""
    from ..client import signal

    with connection(dsn) as conn:
        signal_id = signal(conn, instance_id, name, payload, schema=schema)
    if as_json:
        emit_json({"id": signal_id, "instance_id": instance_id, "name": name})
    else:
        click.echo(f"signal {name!r} sent to {instance_id} (id {signal_id})")


# -- stats, workers, prune -------------------------------------------------------------------

@click.command("stats")
@db_options
@click.option("--window", "window", default="5m", show_default=True, callback=_duration_option,
              help="Period for the finished counts and rates (e.g. 5m, 1h).")
@json_option
def stats_cmd(dsn: str | None, schema: str, window: float, as_json: bool) -> None:
    """Queue depth and state (paused), oldest ready step, active instances, finish rates and live workers."""
    if window <= 0:
        raise click.BadParameter("must be more than 0", param_hint="--window")
    with connection(dsn) as conn:
        stats = queries(schema).stats(conn, STATS_DEPTH_CAP, window, LIVE_SECONDS)
        unserved = queries(schema).unserved_versions(conn, LIVE_SECONDS)
    running_steps, scheduled, pending, running = stats.running_steps, stats.scheduled_steps, stats.pending, stats.running
    finished = {k: stats.finished.get(k, 0) for k in ("completed", "failed", "cancelled")}
    doc: dict[str, Any] = {
        "queues": [{"queue": q.queue, "ready": q.ready, "ready_capped": q.ready >= STATS_DEPTH_CAP,
                    "oldest_ready_age_seconds": q.oldest_ready_age, "paused": q.paused,
                    "rate_per_second": q.rate_per_second, "burst": q.burst} for q in stats.queues],
        "steps": {"running": running_steps, "scheduled": scheduled},
        "instances": {"pending": pending, "running": running},
        "window_seconds": window,
        "finished": finished,
        "per_minute": {k: round(v * 60 / window, 3) for k, v in finished.items()},
        "live_processes": {"supervisor": stats.live_processes.get("supervisor", 0),
                           "worker": stats.live_processes.get("worker", 0)},
        "waiting_for_a_version": unserved,
    }
    if as_json:
        emit_json(doc)
        return
    if doc["queues"]:
        from .queue_commands import rate_text

        table(["QUEUE", "READY", "OLDEST READY", "STATE", "RATE LIMIT"],
              [[q["queue"], ("≥" if q["ready_capped"] else "") + str(q["ready"]), age(q["oldest_ready_age_seconds"]),
                "paused" if q["paused"] else "running", rate_text(q["rate_per_second"], q["burst"])]
               for q in doc["queues"]])
    else:
        click.echo("no steps ready in any queue")
    span = age(window)
    click.echo(f"steps      running {running_steps} · waiting for a retry or a start time {scheduled}")
    click.echo(f"instances  pending {pending} · running {running}")
    click.echo(f"last {span:<5}  " + " · ".join(
        f"{k} {finished[k]} ({doc['per_minute'][k]:g}/min)" for k in ("completed", "failed", "cancelled")))
    click.echo(f"live       worker processes {doc['live_processes']['worker']} · "
               f"supervisors {doc['live_processes']['supervisor']}")
    for u in unserved:
        click.echo(f"waiting    {u['instances']} instances of {u['workflow_id']} version {u['version_hash']}: "
                   f"no live worker has this version (oldest {age(u['oldest_age'])})")


@click.command("workflows")
@db_options
@json_option
def workflows_cmd(dsn: str | None, schema: str, as_json: bool) -> None:
    """Registered workflow definitions and their versions, with live instances and workers."""
    with connection(dsn) as conn:
        rows = queries(schema).workflow_versions(conn, LIVE_SECONDS)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        click.echo("no workflows registered")
        return
    table(["WORKFLOW", "VERSION", "HASH", "CURRENT", "FIRST REGISTERED", "LAST REGISTERED", "LIVE INSTANCES",
           "WORKERS"],
          [[r["workflow_id"], r["version"], r["version_hash"], "yes" if r["current"] else "",
            ts(r["first_registered_at"]), ts(r["last_registered_at"]), r["live_instances"], r["workers"]]
           for r in rows])


@click.command("workers")
@db_options
@click.option("--claims", "max_claims", type=click.IntRange(0, 100000), default=1000, show_default=True,
              help="Show at most this many running steps.")
@json_option
def workers_cmd(dsn: str | None, schema: str, max_claims: int, as_json: bool) -> None:
    """Registered supervisors and workers, and the steps each one runs now."""
    q = queries(schema)
    with connection(dsn) as conn:
        rows = q.processes(conn)
        claims = q.running_claims(conn, max_claims)
    by_owner: dict[str, list[dict[str, Any]]] = {}
    for c in claims:
        by_owner.setdefault(c.lease_owner, []).append({
            "workflow_inst_id": str(c.workflow_inst_id), "workflow_id": c.workflow_id, "step_id": c.step_id,
            "attempt": c.attempt, "lease_expires_in_seconds": c.lease_expires_in})
    known = {r.worker_id for r in rows}
    workers = [{
        "worker_id": r.worker_id, "role": r.role, "host": r.host, "pid": r.pid, "supervisor_id": r.supervisor_id,
        "queues": r.queues, "workflows": r.workflows, "concurrency": r.concurrency, "started_at": r.started_at,
        "heartbeat_at": r.heartbeat_at, "heartbeat_age_seconds": r.heartbeat_age,
        "live": r.heartbeat_age < LIVE_SECONDS, "running": by_owner.get(r.worker_id, []),
    } for r in rows]
    orphans = [dict(c, lease_owner=owner) for owner, cs in by_owner.items() if owner not in known for c in cs]
    if as_json:
        emit_json({"workers": workers, "unregistered_claims": orphans})
        return
    if not workers:
        click.echo("no registered workers")
    else:
        table(["WORKER", "ROLE", "STATE", "QUEUES", "SLOTS", "RUNNING", "HEARTBEAT", "STARTED"],
              [[w["worker_id"], w["role"], "live" if w["live"] else "stale", ",".join(w["queues"]),
                w["concurrency"] if w["role"] == "worker" else "-",
                len(w["running"]) if w["role"] == "worker" else "-", age(w["heartbeat_age_seconds"]) + " ago",
                ts(w["started_at"])]
               for w in workers])
    for w in workers:
        for c in w["running"]:
            click.echo(f"  {w['worker_id']}: {c['workflow_id']}/{c['step_id']} of {c['workflow_inst_id']} "
                       f"(attempt {c['attempt']}, lease expires in {age(c['lease_expires_in_seconds'])})")
    if orphans:
        click.echo(f"{len(orphans)} running steps held by unregistered workers (rescued when their leases expire):")
        for c in orphans:
            click.echo(f"  {c['lease_owner']}: {c['workflow_id']}/{c['step_id']} of {c['workflow_inst_id']} "
                       f"(lease expires in {age(c['lease_expires_in_seconds'])})")


@click.command("prune")
@db_options
@click.option("--older-than", "older_than", required=True, callback=_duration_option, metavar="DURATION",
              help="Drop history whose instances all finished longer ago, e.g. 7d, 12h.")
@json_option
def prune_cmd(dsn: str | None, schema: str, older_than: float, as_json: bool) -> None:
    """Drop finished history older than a duration, a whole partition at a time.

    History is partitioned by the instances' created_at (one partition a day by
    default): a range goes once every instance created in it finished longer ago than
    DURATION, with its steps and events; an instance still running, or finished more
    recently, keeps its whole range. What the daemon's --retention does on its own.
    """
    from ..daemon.maintenance.pruner import Pruner

    with connection(dsn) as conn:
        result = Pruner(schema, older_than).drop_expired(conn, older_than)
    if as_json:
        emit_json({"pruned": result.pruned, "partitions": result.partitions, "older_than_seconds": older_than})
    else:
        click.echo(f"pruned {result.pruned} finished instances ({result.partitions} partitions of history) "
                   f"older than {age(older_than)}")


COMMANDS = [list_cmd, show_cmd, cancel_cmd, resume_cmd, retry_step_cmd, enqueue_cmd, signal_cmd, stats_cmd,
            workers_cmd, workflows_cmd, prune_cmd]

__all__ = ["COMMANDS", "parse_duration"]
