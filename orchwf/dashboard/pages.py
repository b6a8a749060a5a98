"""HTML rendering: one function per page, from rows of queries.py to a complete document.

Everything that comes from the database (IDs, inputs, outputs, errors, worker names) is
untrusted: it goes through ``esc`` (``html.escape`` with quotes) or ``url`` and never
into a script, a style or an event attribute. The pages use no inline script or style
at all (the server sends a strict Content-Security-Policy); the only script,
static/dashboard.js, refreshes elements marked ``data-live`` and asks for confirmation
on buttons marked ``data-confirm``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from ..stores.base import is_uuid
from .charts_svg import Series, line_chart, minutes, ms_label
from .dag_svg import DagNode, render_dag
from .queries import COUNT_CAP, FILTERS, MAX_EVENTS, STATUSES, TREND_MINUTES, Row

MAX_JSON_CHARS = 20_000   # a pretty-printed document is cut after this many characters
LIVE_SECONDS = 3          # refresh period of live pages
QUEUE_LINES = 6           # the backlog chart draws the queues with the most, at most this many
NOTICES = {               # ?done=... after an action: fixed texts, never reflected input
    "cancel": "Cancellation requested.",
    "resume": "Instance resumed: its failed, cancelled and pending steps run again.",
    "retry": "Step queued for another run.",
    "paused": "Queue paused on every host: running steps finish, no new step starts.",
    "resumed": "Queue resumed: its waiting steps start.",
}


@dataclass(frozen=True)
class View:
    """What every page needs besides its data: the form token and whether actions are off."""

    csrf_token: str
    read_only: bool = False


def esc(value: Any) -> str:
    """Text for HTML content or a quoted attribute; None is an empty string."""
    return "" if value is None else escape(str(value), quote=True)


def url(path: str, **params: Any) -> str:
    """A path with percent-encoded query parameters (empty ones dropped), HTML-escaped."""
    query = urlencode({k: v for k, v in params.items() if v not in (None, "")})
    return esc(path + ("?" + query if query else ""))


def instance_url(instance_id: str) -> str:
    return esc("/instances/" + quote(instance_id, safe=""))


def ts(value: datetime | None) -> str:
    if value is None:
        return "–"
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def age(seconds: float | None) -> str:
    """3.2s, 5m12s, 2h03m, 3d04h."""
    if seconds is None:
        return "–"
    s = max(0.0, float(seconds))
    if s < 60:
        return f"{s:.1f}s"
    n = int(s)
    if n < 3600:
        return f"{n // 60}m{n % 60:02d}s"
    if n < 86400:
        return f"{n // 3600}h{n % 3600 // 60:02d}m"
    return f"{n // 86400}d{n % 86400 // 3600:02d}h"


def when(value: datetime | None) -> str:
    """A timestamp as a ``<time>`` element (HTML)."""
    if value is None:
        return "–"
    return f'<time datetime="{esc(value.astimezone(timezone.utc).isoformat())}">{esc(ts(value))}</time>'


def took(start: datetime | None, end: datetime | None) -> str:
    return age((end - start).total_seconds()) if start and end else "–"


def ms(value: int | None) -> str:
    if not value:
        return "–"
    return f"{value} ms" if value < 10_000 else age(value / 1000)


def badge(status: str) -> str:
    return f'<span class="badge status-{esc(status if status in _ALL_STATUSES else "unknown")}">{esc(status)}</span>'


_ALL_STATUSES = frozenset(STATUSES) | {"skipped", "paused"}  # paused: a queue


def pretty_json(doc: Any, head: str | None = None, size: int | None = None) -> str:
    """A ``<pre>`` of the document, indented; cut (and said so) when huge.

    ``head`` is the start of a document too big to fetch (queries.py), ``size`` its
    stored size in bytes.
    """
    if doc is None and head is not None:
        text, note = head, f"stored document is {size or 0:,} bytes; showing its start"
    else:
        text = json.dumps(doc, indent=2, ensure_ascii=False, default=str)
        note = ""
    if len(text) > MAX_JSON_CHARS:
        note = note or f"{len(text):,} characters; showing the first {MAX_JSON_CHARS:,}"
        text = text[:MAX_JSON_CHARS]
    out = f'<pre class="json">{esc(text)}</pre>'
    if note:
        out += f'<p class="truncated">… truncated: {esc(note)}</p>'
    return out


def compact(value: Any, limit: int = 200) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    """Cells are HTML already (escape them first)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{esc(cls)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _form(action: str, label: str, view: View, *, fields: Mapping[str, str] | None = None,
          confirm: str = "", cls: str = "") -> str:
    """A POST button with the CSRF token; nothing at all in read-only mode."""
    if view.read_only:
        return ""
    hidden = "".join(f'<input type="hidden" name="{esc(k)}" value="{esc(v)}">' for k, v in (fields or {}).items())
    attr = f' data-confirm="{esc(confirm)}"' if confirm else ""
    return (f'<form method="post" action="{esc(action)}" class="action {esc(cls)}"{attr}>'
            f'<input type="hidden" name="csrf" value="{esc(view.csrf_token)}">{hidden}'
            f'<button type="submit">{esc(label)}</button></form>')


NAV = (("/", "Overview"), ("/instances", "Instances"), ("/workers", "Workers"))


def layout(title: str, body: str, view: View | None, *, active: str = "") -> str:
    """The whole document around a page's body."""
    current = ' class="active"'
    nav = "".join(f'<a href="{esc(href)}"{current if href == active else ""}>{esc(name)}</a>'
                  for href, name in NAV)
    mode = '<span class="mode">read-only</span>' if view and view.read_only else ""
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)} · orchwf</title>"
        '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">'
        '<link rel="stylesheet" href="/static/dashboard.css">'
        '<script src="/static/dashboard.js" defer></script></head>'
        f'<body><header><a class="brand" href="/">orchwf</a><nav>{nav}</nav>{mode}</header>'
        f"<main>{body}</main></body></html>"
    )


def per_minute(rate: float) -> str:
    """A rate for people: 2,333/min, 4.5/min, 0/min (not 140000.0/min)."""
    if rate == 0:
        return "0/min"
    return f"{rate:,.0f}/min" if rate >= 10 else f"{rate:.1f}/min"


# -- pages --------------------------------------------------------------------------------


def rate_limit(per_second: float | None, burst: int | None) -> str:
    """A queue's rate limit for people: "10/s, burst 10", "0.5/s (30/min), burst 1", or "–"."""
    if per_second is None:
        return "–"
    rate = f"{per_second:g}/s" if per_second >= 1 else f"{per_second:g}/s ({per_second * 60:g}/min)"
    return f"{rate}, burst {burst}"


def _queue_action(q: Row, view: View) -> str:
    """Pause or resume one queue (the queue's name is a form field: any characters)."""
    if q["paused"]:
        return _form("/queues/resume", "Resume", view, fields={"queue": q["queue"]})
    return _form("/queues/pause", "Pause", view, fields={"queue": q["queue"]}, cls="danger",
                 confirm=f"Pause queue {q['queue']} on every host? Running steps finish; no new step starts.")


def overview_page(data: Row, view: View, *, notice: str = "", error: str = "") -> str:
    """``data``: queries.Queries.overview()."""
    active, hour, window = data["active"], data["last_hour"], data["last_window"]
    minutes = float(data.get("window_span") or data["window_seconds"]) / 60  # whole minutes rolled up, and this one so far
    cards = []
    for status in STATUSES:
        n = active.get(status, 0) if status in ("pending", "running", "retrying") else hour.get(status, 0)
        period = "now" if status in ("pending", "running", "retrying") else "last hour"
        cards.append(f'<a class="card status-{status}" href="{url("/instances", status=status)}">'
                     f'<span class="n">{esc(f"{n:,}")}</span><span class="what">{esc(status)}</span>'
                     f'<span class="when">{period}</span></a>')
    rates = " · ".join(f"{esc(s)} {esc(per_minute(window.get(s, 0) / minutes))}"
                       for s in ("completed", "failed", "cancelled"))
    queues = _table(
        ["Queue", "State", "Ready steps", "Oldest ready for", "Rate limit", ""],
        [[esc(q["queue"]), badge("paused") if q["paused"] else badge("running"), esc(f'{q["ready"]:,}'),
          esc(age(q["oldest_age"])), esc(rate_limit(q["rate_per_second"], q["burst"])), _queue_action(q, view)]
         for q in data["queues"]],
        "queues",
    ) if data["queues"] else '<p class="empty">No steps waiting in any queue.</p>'
    flash = (f'<p class="flash ok">{esc(notice)}</p>' if notice else "") + (
        f'<p class="flash error">{esc(error)}</p>' if error else "")
    running, scheduled = int(data["running_steps"]), int(data["scheduled_steps"])
    body = (
        f'{flash}<div id="overview" data-live="{LIVE_SECONDS}"><h1>Overview</h1>'
        f'<section class="cards">{"".join(cards)}</section>'
        f'<section><h2>Throughput</h2><p>Instances finished over the last {esc(age(data["window_seconds"]))}: '
        f"{rates}.</p><p>Steps running {running:,} · waiting for a retry or start time "
        f"{scheduled:,} · live worker processes "
        f'<a href="/workers">{esc(data["live_workers"])}</a>.</p></section>'
        f"<section><h2>Queues</h2>{queues}</section>"
        f"{_unserved(data.get('unserved') or [])}"
        f"{_schedules(data.get('schedules') or [])}"
        f"{_keys(data.get('keys') or [])}"
        f'<section><h2>Last hour</h2>{_trends(data)}</section>'
        f'<p><a href="/instances">All instances →</a></p></div>'
    )
    return layout("Overview", body, view, active="/")


def _unserved(rows: Sequence[Row]) -> str:
    """Instances whose definition version no live worker has (none: no section)."""
    if not rows:
        return ""
    body = _table(["Workflow", "Version", "Instances", "Oldest"],
                  [[esc(r["workflow_id"]), f'<code>{esc(r["version_hash"])}</code>', esc(f'{r["instances"]:,}'),
                    esc(age(r["oldest_age"]))] for r in rows], "unserved")
    return ("<section><h2>Waiting for a worker with their version</h2>"
            "<p>No live worker's code has these definition versions: the instances wait (deploy or keep a "
            f"worker with that version).</p>{body}</section>")


def _schedules(rows: Sequence[Row]) -> str:
    """The cron schedules, soonest first (none: no section)."""
    if not rows:
        return ""
    body = _table(
        ["Schedule", "Workflow", "Cron", "Next run", "Last run", "Last error"],
        [[esc(r["name"]), esc(r["workflow_id"]), f'<code>{esc(r["cron"])}</code> {esc(r["timezone"])}',
          "paused" if r["paused"] else f'{when(r["next_run_at"])} (in {esc(age(r["next_in"]))})',
          (f'<a href="{instance_url(r["last_instance_id"])}">{when(r["last_run_at"])}</a>'
           if r["last_instance_id"] else "–"),
          f'<span class="error">{esc(compact(r["last_error"] or "", 120))}</span>'] for r in rows],
        "schedules")
    return f"<section><h2>Schedules</h2>{body}</section>"


def _keys(rows: Sequence[Row]) -> str:
    """Concurrency keys with slots held or steps waiting, the busiest first (none: no section)."""
    if not rows:
        return ""
    body = _table(["Key", "Running", "Waiting"],
                  [[f'<code>{esc(r["key"])}</code>', esc(f'{r["held"]:,} of {r["concurrency_limit"]:,}'),
                    esc(f'{r["waiting"]:,}')] for r in rows], "keys")
    return ("<section><h2>Concurrency keys</h2><p>Slots held (steps ready or running under the key) of its "
            f"limit, and steps waiting for one (they hold no worker slot).</p>{body}</section>")


def _trends(data: Row) -> str:
    """Charts of the last hour's whole minutes, from the rollup that maintenance keeps
    (queries.Queries.overview: ``trend``, ``backlog_trend``)."""
    if not data["trend"]:
        return ('<p class="empty" id="no-trends">No trends yet: a running <code>orchwf worker</code> rolls '
                "them up every 10 seconds.</p>")
    times = minutes(data["now"], TREND_MINUTES)
    rolled = {r["minute"]: r for r in data["trend"]}

    def column(name: str) -> list[float | None]:
        return [None if (r := rolled.get(t)) is None or r[name] is None else float(r[name]) for t in times]

    ready: dict[str, dict[datetime, float]] = {}
    for r in data["backlog_trend"]:
        ready.setdefault(r["queue"], {})[r["minute"]] = float(r["ready"])
    busiest = sorted(ready, key=lambda q: (-max(ready[q].values()), q))[:QUEUE_LINES]
    # A queue absent from a minute that was rolled up had nothing ready then.
    backlog = [Series(q, [ready[q].get(t, 0.0) if t in rolled else None for t in times]) for q in busiest]
    charts = [
        line_chart("Instances finished per minute",
                   [Series("completed", column("completed")), Series("failed", column("failed"))],
                   times, element_id="chart-finished"),
        line_chart("Queue wait, ready to started",
                   [Series("p50", column("wait_p50_ms")), Series("p99", column("wait_p99_ms"))],
                   times, label=ms_label, element_id="chart-wait"),
        line_chart("Ready steps per queue (the most seen each minute)", backlog or [Series("no backlog", [0.0 if t in rolled else None
                                                                            for t in times])],
                   times, element_id="chart-backlog"),
    ]
    return f'<div class="charts">{"".join(charts)}</div>'


def list_page(rows: Sequence[Row], total: int, filters: Mapping[str, str], limit: int, offset: int,
              workflow_ids: Sequence[str], view: View) -> str:
    """The instance list with its filter form and pagination."""
    options = '<option value="">any status</option>' + "".join(
        f'<option value="{s}"{" selected" if filters.get("status") == s else ""}>{s}</option>' for s in STATUSES)
    suggestions = "".join(f'<option value="{esc(w)}">' for w in workflow_ids)

    def box(name: str, label: str, extra: str = "") -> str:
        return (f'<label>{esc(label)}<input name="{name}" value="{esc(filters.get(name, ""))}"{extra}>'
                "</label>")

    form = (
        '<form class="filters" method="get" action="/instances">'
        + box("workflow_id", "Workflow", ' list="workflow-ids"')
        + f'<label>Status<select name="status">{options}</select></label>'
        + box("trace_id", "Trace ID") + box("correlation_id", "Correlation ID") + box("business_id", "Business ID")
        + f'<datalist id="workflow-ids">{suggestions}</datalist>'
        '<button type="submit">Filter</button> <a href="/instances">clear</a></form>'
    )
    table = _table(
        ["Instance", "Workflow", "Status", "Queue", "Created", "Took", "Business ID", "Error"],
        [[f'<a href="{instance_url(r["id"])}">{esc(r["id"])}</a>', esc(r["workflow_id"]), badge(r["status"]),
          esc(r["queue"]), when(r["created_at"]), esc(took(r["started_at"], r["completed_at"])),
          esc(r["business_id"]), f'<span class="error">{esc(compact(r["error"] or "", 120))}</span>']
         for r in rows],
        "instances",
    ) if rows else f'<p class="empty">No instances{" match these filters" if any(filters.values()) else " yet"}.</p>'
    shown = f"{offset + 1}–{offset + len(rows)}" if rows else "0"
    of = f"{COUNT_CAP:,}+" if total > COUNT_CAP else f"{total:,}"
    keep = {k: filters.get(k, "") for k in FILTERS}
    pager = []
    if offset > 0:
        pager.append(f'<a rel="prev" href="{url("/instances", **keep, offset=max(0, offset - limit) or None)}">← newer</a>')
    if offset + len(rows) < total:
        pager.append(f'<a rel="next" href="{url("/instances", **keep, offset=offset + limit)}">older →</a>')
    body = (
        "<h1>Instances</h1>" + form
        + f'<p class="count">{shown} of {of}</p>' + table + f'<p class="pager">{" ".join(pager)}</p>'
    )
    return layout("Instances", body, view, active="/instances")


def _dag(inst: Row, anchors: Mapping[str, str]) -> str:
    fallback = inst.get("definition_deps") or {}
    if len(inst["steps"]) > 1 and not fallback and not any(s["dependencies"] for s in inst["steps"]):
        note = ('<p class="truncated">Dependencies unknown: this in-process instance\'s workflow is not '
                "registered (Client.register_workflow), so its steps are drawn unconnected.</p>")
    else:
        note = ""
    nodes = []
    for s in inst["steps"]:
        deps = s["dependencies"] or fallback.get(s["step_id"]) or []
        detail = f"attempt {s['attempts']}/{s['max_attempts']}" if s["attempts"] else ""
        if s["duration_ms"] and s["status"] in ("completed", "failed", "skipped"):
            detail += (" · " if detail else "") + ms(s["duration_ms"])
        nodes.append(DagNode(s["step_id"], s["status"], tuple(deps), detail, "#" + anchors[s["id"]]))
    return render_dag(nodes) + note


def _facts(pairs: Iterable[tuple[str, str]], element_id: str = "") -> str:
    """A definition list of (label, HTML) pairs; empty values are left out."""
    ident = f' id="{esc(element_id)}"' if element_id else ""
    return f'<dl class="facts"{ident}>' + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in pairs if v) + "</dl>"


def instance_page(inst: Row, view: View, *, notice: str = "", error: str = "") -> str:
    """``inst``: queries.Queries.instance(): the instance, ``steps`` and ``events``."""
    iid, status = inst["id"], inst["status"]
    base = "/instances/" + quote(iid, safe="")
    terminal = status in ("completed", "failed", "cancelled")
    daemon = inst["run_mode"] == "daemon"
    anchors = {s["id"]: f"step-{n}" for n, s in enumerate(inst["steps"], 1)}
    actions = ""
    if not terminal:
        actions += _form(base + "/cancel", "Cancel instance", view, confirm="Cancel this instance?", cls="danger")
    if status in ("failed", "cancelled") and daemon:
        actions += _form(base + "/resume", "Resume instance", view)
    flash = (f'<p class="flash ok">{esc(notice)}</p>' if notice else "") + (
        f'<p class="flash error">{esc(error)}</p>' if error else "")
    name = inst.get("workflow_name")
    facts = _facts([
        ("status", badge(status)),
        ("workflow", esc(inst["workflow_id"]) + (f" · {esc(name)}" if name and name != inst["workflow_id"] else "")),
        ("queue", esc(f'{inst["queue"]} · priority {inst["priority"]} · mode {inst["run_mode"]}')),
        ("created", when(inst["created_at"])),
        ("started", when(inst["started_at"])),
        ("finished", esc(f'{ts(inst["completed_at"])} (took {took(inst["started_at"], inst["completed_at"])})')
         if inst["completed_at"] else ""),
        ("resumed", esc(f'{inst["retry_count"]}×') if inst["retry_count"] else ""),
        ("trace ID", esc(inst["trace_id"])),
        ("correlation ID", esc(inst["correlation_id"])),
        ("business ID", esc(inst["business_id"])),
        ("idempotency key", esc(inst["idempotency_key"])),
        ("error", f'<pre class="error">{esc(inst["error"])}</pre>' if inst["error"] else ""),
        ("parent", _parent_link(inst.get("metadata"))),
        ("children", " ".join(f'<a class="child" href="{instance_url(c)}">{esc(c)}</a>'
                              for c in _child_ids(inst["events"]))),
    ], element_id="summary")
    # orchwf_retry_step re-runs one step only when no OTHER step failed (else: resume).
    failed = {s["step_id"] for s in inst["steps"] if s["status"] == "failed"}
    retryable = status in ("failed", "cancelled") and daemon
    step_rows = []
    children = _children_by_step(inst["events"])
    for s in inst["steps"]:
        retry = ""
        if (retryable and s["status"] in ("failed", "skipped", "cancelled") and s["step_id"] != "$compensate"
                and not failed - {s["step_id"]}):
            retry = _form(base + "/retry", "Retry step", view, fields={"step": s["step_id"]})
        step_rows.append([
            f'<a href="#{anchors[s["id"]]}">{esc(s["step_id"])}</a>', badge(s["status"]),
            esc(f'{s["attempts"]}/{s["max_attempts"]}'), esc(s["retry_count"]), esc(s["crashes"] or ""),
            esc(ms(s["duration_ms"])), when(s["started_at"]), when(s["completed_at"]),
            _waits_for(s, children), f'<span class="error">{esc(compact(s["error"] or "", 160))}</span>', retry,
        ])
    steps = _table(["Step", "Status", "Attempts", "Retries", "Crashes", "Duration", "Started", "Finished",
                    "Waits for", "Error", ""], step_rows, "steps")
    events_by_step: dict[str, list[Row]] = {}
    for e in inst["events"]:
        events_by_step.setdefault(e["step_inst_id"] or "", []).append(e)
    details = "".join(_step_details(s, anchors[s["id"]], events_by_step.get(s["id"], [])) for s in inst["steps"])
    docs = "".join(
        f"<details{' open' if key == 'input' else ''}><summary>{label}</summary>{pretty_json(inst[key], inst[key + '_head'], inst[key + '_size'])}</details>"
        for key, label in (("input", "Input"), ("output", "Output"), ("metadata", "Metadata")))
    hidden = inst["event_count"] - len(inst["events"])
    timeline = _timeline(inst["events"], {s["id"]: s["step_id"] for s in inst["steps"]})
    more = f'<p class="truncated">… {hidden:,} older events not shown (newest {MAX_EVENTS}).</p>' if hidden > 0 else ""
    live = "" if terminal else f' data-live="{LIVE_SECONDS}"'
    body = (
        f'<div id="instance"{live}>'
        f'<h1>Instance <code class="id">{esc(iid)}</code></h1>{flash}'
        f'<div class="actions">{actions}</div>{facts}{docs}'
        f'<section><h2>Graph</h2><div class="dag-box">{_dag(inst, anchors)}</div>{_legend()}</section>'
        f"<section><h2>Steps</h2>{steps}{details}</section>"
        f"<section><h2>Events</h2>{more}{timeline}</section></div>"
    )
    return layout(f"Instance {iid}", body, view, active="/instances")


def _children_by_step(events: Sequence[Row]) -> dict[str, str]:
    """Each step's latest child workflow (step.child_started events, newest first)."""
    out: dict[str, str] = {}
    for e in events:
        data = e.get("data")
        if e["event_type"] == "step.child_started" and isinstance(data, dict) and is_uuid(
                data.get("child_instance_id")) and e["step_inst_id"] not in out:
            out[e["step_inst_id"]] = str(data["child_instance_id"])
    return out


def _waits_for(s: Row, children: Mapping[str, str]) -> str:
    """What a pending step waits for: a signal, its child workflow, or its delay."""
    if s["status"] not in ("pending", "retrying"):
        return ""
    signal = s.get("wait_signal")
    if signal and str(signal).startswith("orchwf:child:"):
        child = children.get(s["id"])
        return (f'<span class="waits">child workflow <a href="{instance_url(child)}">{esc(child)}</a></span>'
                if child else '<span class="waits">its child workflow</span>')
    if signal:
        until = f' (until {when(s["run_after"])})' if s["run_after"] else ""
        return f'<span class="waits">signal <code>{esc(signal)}</code>{until}</span>'
    if s.get("delay_seconds") and s["run_after"]:
        return f'<span class="waits">its delay, until {when(s["run_after"])}</span>'
    return ""


def _parent_link(metadata: Any) -> str:
    """The instance whose child_workflow_step started this one, as a link."""
    if not isinstance(metadata, dict) or not is_uuid(metadata.get("orchwf_parent")):
        return ""
    parent = str(metadata["orchwf_parent"])
    return (f'<a class="parent" href="{instance_url(parent)}">{esc(parent)}</a>'
            f' (step {esc(metadata.get("orchwf_parent_step", ""))})')


def _child_ids(events: Sequence[Row]) -> list[str]:
    """The child workflows its steps started (step.child_started events)."""
    return [str(e["data"]["child_instance_id"]) for e in events if e["event_type"] == "step.child_started"
            and isinstance(e.get("data"), dict) and is_uuid(e["data"].get("child_instance_id"))]


def _legend() -> str:
    return '<p class="legend">' + " ".join(badge(s) for s in (
        "pending", "running", "retrying", "completed", "failed", "skipped", "cancelled")) + "</p>"


def _step_details(s: Row, anchor: str, events: Sequence[Row]) -> str:
    facts = _facts([
        ("attempts", esc(f'{s["attempts"]} of {s["max_attempts"]} · retries {s["retry_count"]} · crashes {s["crashes"]}')),
        ("required", "yes" if s["required"] else "no (optional)"),
        ("duration", esc(ms(s["duration_ms"]))),
        ("started", when(s["started_at"])),
        ("finished", when(s["completed_at"])),
        ("last retry", when(s["last_retry_at"]) if s["last_retry_at"] else ""),
        ("next attempt", when(s["run_after"]) if s["run_after"] else ""),
        ("running on", esc(f'{s["lease_owner"]} (lease until {ts(s["lease_expires_at"])})') if s["lease_owner"] else ""),
        ("depends on", esc(", ".join(s["dependencies"] or []))),
    ])
    error = f'<h4>Error</h4><pre class="error">{esc(s["error"])}</pre>' if s["error"] else ""
    attempts = [e for e in events if e["event_type"] in ("step.attempt_failed", "step.rescued", "step.failed")]
    history = ""
    if attempts:
        history = "<h4>Failed attempts</h4>" + _table(
            ["At", "Event", "Details"],
            [[when(e["at"]), esc(e["event_type"]), esc(compact(_event_data(e), 400))] for e in attempts], "attempts")
    return (
        f'<details class="step" id="{esc(anchor)}"><summary>{esc(s["step_id"])} {badge(s["status"])}</summary>'
        f"{facts}{error}{history}"
        f"<h4>Input</h4>{pretty_json(s['input'], s['input_head'], s['input_size'])}"
        f"<h4>Output</h4>{pretty_json(s['output'], s['output_head'], s['output_size'])}</details>"
    )


def _event_data(e: Row) -> Any:
    return e["data"] if e["data"] is not None else e["data_head"]


def _timeline(events: Sequence[Row], step_names: Mapping[str, str]) -> str:
    if not events:
        return '<p class="empty">No events.</p>'
    return _table(
        ["At", "Event", "Step", "Data"],
        [[when(e["at"]), esc(e["event_type"]), esc(step_names.get(e["step_inst_id"] or "", "")),
          f'<code>{esc(compact(_event_data(e), 300))}</code>'] for e in events],
        "events",
    )


def workers_page(workers: Sequence[Row], claims: Sequence[Row], view: View) -> str:
    """``workers``, ``claims``: queries.Queries.workers()."""
    by_owner: dict[str, list[Row]] = {}
    for c in claims:
        by_owner.setdefault(c["lease_owner"] or "", []).append(c)
    known = {w["worker_id"] for w in workers}

    def claim_list(items: Sequence[Row], owner: bool = False) -> str:
        if not items:
            return ""
        return "<ul class=\"claims\">" + "".join(
            "<li>" + (f'{esc(c["lease_owner"])}: ' if owner else "")
            + f'<a href="{instance_url(c["instance_id"])}">{esc(c["workflow_id"])}/{esc(c["step_id"])}</a> '
            f'attempt {esc(c["attempts"])}, lease expires in {esc(age(c["lease_expires_in"]))}</li>'
            for c in items) + "</ul>"

    table = _table(
        ["Worker", "Role", "State", "Queues", "Slots", "Running", "Heartbeat", "Started"],
        [[esc(w["worker_id"]), esc(w["role"]),
          '<span class="badge status-completed">live</span>' if w["live"] else '<span class="badge status-failed">stale</span>',
          esc(", ".join(w["queues"] or [])), esc(w["concurrency"] if w["role"] == "worker" else "–"),
          (esc(len(by_owner.get(w["worker_id"], []))) + claim_list(by_owner.get(w["worker_id"], [])))
          if w["role"] == "worker" else "–",
          esc(age(w["heartbeat_age"]) + " ago"), when(w["started_at"])] for w in workers],
        "workers",
    ) if workers else '<p class="empty">No registered workers.</p>'
    orphans = [c for c in claims if (c["lease_owner"] or "") not in known]
    extra = ""
    if orphans:
        extra = ("<h2>Claims of unregistered workers</h2><p>Rescued when their leases expire.</p>"
                 + claim_list(orphans, owner=True))
    body = f'<div id="workers" data-live="{LIVE_SECONDS}"><h1>Workers</h1>{table}{extra}</div>'
    return layout("Workers", body, view, active="/workers")


def message_page(title: str, text: str, view: View | None = None) -> str:
    """A short error or status page (404, 400, 403, 503)."""
    return layout(title, f'<h1>{esc(title)}</h1><p class="message">{esc(text)}</p><p><a href="/">Overview</a></p>', view)


def login_page(path: str, failed: bool) -> str:
    """The page an unauthenticated browser gets: a form that sends ``?token=``.

    Self-contained (no stylesheet): static files need the token too.
    """
    note = "<p>That token is not valid.</p>" if failed else ""
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>orchwf · sign in</title></head>"
        f"<body><h1>orchwf dashboard</h1>{note}<form method=\"get\" action=\"{esc(path)}\">"
        '<label>Access token <input type="password" name="token" autocomplete="current-password" autofocus></label> '
        '<button type="submit">Sign in</button></form></body></html>'
    )
