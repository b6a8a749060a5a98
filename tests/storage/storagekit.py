"""Helpers of the storage tests: a workflow defined in SQL, history made in bulk, and the
real plans of statements (auto_explain), read back as notices on the same connection.

Plans come from auto_explain, not EXPLAIN: the hot path and maintenance are plpgsql
functions, and only auto_explain shows the plans of the statements inside them (with
log_nested_statements), as they ran (log_analyze: nodes never executed have 0 loops).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from orchwf.ids import new_id

WORKFLOW = "pair"
#: Two steps, b after a: the finish releases a dependent, as real workflows do.
DEFINITION = {"steps": [{"id": "a", "dependencies": [], "dependents": ["b"]},
                        {"id": "b", "dependencies": ["a"], "dependents": []}]}

#: A history table or one of its partitions.
HISTORY_RELATION = re.compile(r"^orchwf_(instance|step|event)_history(_p\d{8}t\d{6})?$")
#: An index of history: the parents' named ones and the partitions' generated ones.
HISTORY_INDEX = re.compile(r"^(orchwf_(ih|sh|eh)_|orchwf_(instance|step|event)_history)")


def connect(dsn: str) -> psycopg.Connection[Any]:
    """An autocommit connection, as the daemon's processes use."""
    return psycopg.connect(dsn, autocommit=True)


def define_workflow(conn: psycopg.Connection[Any]) -> None:
    conn.execute("INSERT INTO orchwf_workflow_definitions (workflow_id, name, version_hash, definition)"
                 " VALUES (%s, %s, 'h1', %s) ON CONFLICT DO NOTHING", (WORKFLOW, WORKFLOW, Jsonb(DEFINITION)))


def enqueue(conn: psycopg.Connection[Any], n: int, *, queue: str = "default", run_after: datetime | None = None
            ) -> list[str]:
    """``n`` new instances through the SQL API (as producers enqueue them)."""
    row = conn.execute("SELECT orchwf_enqueue_many(%s, %s::jsonb[], p_queue => %s, p_run_after => %s) AS ids",
                       (WORKFLOW, [Jsonb({"n": i}) for i in range(n)], queue, run_after)).fetchone()
    assert row is not None
    return [str(i) for i in row[0]]


def add_history(conn: psycopg.Connection[Any], created: datetime, n: int, finished_after: timedelta = timedelta(0)
                ) -> list[str]:
    """``n`` finished instances created at ``created`` (+ up to a few minutes), with their
    two steps and three events, written straight into history (their partitions are made
    first, as maintenance would have). Much faster than running them."""
    ats = [created + timedelta(milliseconds=37 * i) for i in range(n)]
    ids = [new_id(at) for at in ats]
    conn.execute("SELECT orchwf_ensure_partitions(%s, %s)", (min(ats), max(ats) + timedelta(milliseconds=1)))
    params = {"ids": ids, "after": finished_after}
    conn.execute(
        "INSERT INTO orchwf_instance_history (id, workflow_id, status, started_at, completed_at, queue, run_mode,"
        " trace_id, created_at, updated_at)"
        " SELECT x.id, %(wf)s, 'completed', t.at, t.at + %(after)s, 'default', 'daemon', x.id::text, t.at,"
        "        t.at + %(after)s"
        " FROM unnest(%(ids)s::uuid[]) AS x(id) CROSS JOIN LATERAL (SELECT orchwf_uuid7_time(x.id) AS at) t",
        params | {"wf": WORKFLOW})
    conn.execute(
        "INSERT INTO orchwf_step_history (id, step_id, workflow_inst_id, status, started_at, completed_at,"
        " attempts, instance_created_at)"
        " SELECT orchwf_uuid7(), s.step_id, x.id, 'completed', t.at, t.at + %(after)s, 1, t.at"
        " FROM unnest(%(ids)s::uuid[]) AS x(id) CROSS JOIN LATERAL (SELECT orchwf_uuid7_time(x.id) AS at) t"
        " CROSS JOIN (VALUES ('a'), ('b')) AS s(step_id)", params)
    conn.execute(
        "INSERT INTO orchwf_event_history (id, workflow_inst_id, event_type, \"timestamp\", instance_created_at)"
        " SELECT orchwf_uuid7(), x.id, e.t, t.at, t.at"
        " FROM unnest(%(ids)s::uuid[]) AS x(id) CROSS JOIN LATERAL (SELECT orchwf_uuid7_time(x.id) AS at) t"
        " CROSS JOIN (VALUES ('workflow.started'), ('step.completed'), ('workflow.completed')) AS e(t)", params)
    return ids


def days_ago(days: float) -> datetime:
    return datetime.now(timezone.utc) - timedelta(days=days)


# --------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class Scan:
    """A plan node that read a relation, and how often it ran (0: never executed)."""

    node: str
    relation: str
    index: str
    loops: int
    rows: float
    query: str
    index_cond: str = ""
    limited: bool = False  # under a Limit node: may stop after a few entries (min(), max())

    @property
    def history(self) -> bool:
        return bool(HISTORY_RELATION.match(self.relation) or HISTORY_INDEX.match(self.index))


@dataclass
class Plans:
    """The plans auto_explain reported, one per statement run (nested ones included)."""

    plans: list[dict[str, Any]]

    def scans(self) -> list[Scan]:
        found: list[Scan] = []
        for plan in self.plans:
            _walk(plan["Plan"], plan.get("Query Text", ""), found)
        return found

    def history_scans(self) -> list[Scan]:
        """Scans of a history table, partition or index that ran at least once."""
        return [s for s in self.scans() if s.history and s.loops > 0]

    def queries(self) -> list[str]:
        return [p.get("Query Text", "") for p in self.plans]


def leading_columns(conn: psycopg.Connection[Any], tables: Iterable[str]) -> dict[str, str]:
    """Each index of ``tables``, by name: the column it is sorted by first."""
    rows = conn.execute(
        "SELECT ic.relname, a.attname FROM pg_index i"
        " JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid"
        " JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]"
        " WHERE t.relname = ANY(%s)", (list(tables),)).fetchall()
    return {index: column for index, column in rows}


def _walk(node: dict[str, Any], query: str, found: list[Scan], limited: bool = False) -> None:
    limited = limited or node["Node Type"] == "Limit"
    if "Scan" in node["Node Type"]:
        found.append(Scan(node["Node Type"], node.get("Relation Name", ""), node.get("Index Name", ""),
                          int(node.get("Actual Loops", 1)), float(node.get("Actual Rows", 0)), query,
                          node.get("Index Cond", ""), limited))
    for child in node.get("Plans", ()):
        _walk(child, query, found, limited)


@contextmanager
def captured_plans(conn: psycopg.Connection[Any]) -> Iterator[Plans]:
    """The plans of everything ``conn`` runs inside the block, its functions' statements
    included, as they ran. auto_explain logs at NOTICE level, which the server sends to
    the client: the notices are parsed as they arrive."""
    plans = Plans([])

    def on_notice(diag: psycopg.errors.Diagnostic) -> None:
        message = diag.message_primary or ""
        head, sep, body = message.partition("plan:\n")
        if sep and head.startswith("duration:"):
            plans.plans.append(json.loads(body))

    conn.execute("LOAD 'auto_explain'")
    for setting, value in (("auto_explain.log_min_duration", "0"), ("auto_explain.log_nested_statements", "on"),
                           ("auto_explain.log_analyze", "on"), ("auto_explain.log_format", "json"),
                           ("auto_explain.log_level", "notice"), ("client_min_messages", "notice")):
        conn.execute("SELECT set_config(%s, %s, false)", (setting, value))
    conn.add_notice_handler(on_notice)
    try:
        yield plans
    finally:
        conn.execute("SELECT set_config('auto_explain.log_min_duration', '-1', false)")
        conn.remove_notice_handler(on_notice)


# --------------------------------------------------------------------------- partitions


def drop_range(conn: psycopg.Connection[Any], suffix: str) -> None:
    """Drop one range of history (its three partitions and its registry row), as if it
    had never been made."""
    for table in ("orchwf_instance_history", "orchwf_step_history", "orchwf_event_history"):
        conn.execute(f"ALTER TABLE {table} DETACH PARTITION {table}_{suffix}")
        conn.execute(f"DROP TABLE {table}_{suffix}")
    conn.execute("DELETE FROM orchwf_partitions WHERE suffix = %s", (suffix,))


def ranges(conn: psycopg.Connection[Any]) -> list[tuple[datetime, datetime, str]]:
    """The registry's ranges, oldest first."""
    return [(r[0], r[1], r[2]) for r in conn.execute(
        "SELECT lower, upper, suffix FROM orchwf_partitions ORDER BY lower").fetchall()]


def attached(conn: psycopg.Connection[Any]) -> set[str]:
    """The partitions attached to the three history tables."""
    return {r[0] for r in conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent IN ('orchwf_instance_history'::regclass, 'orchwf_step_history'::regclass,"
        " 'orchwf_event_history'::regclass)").fetchall()}


def horizon(conn: psycopg.Connection[Any]) -> datetime | None:
    """How far the partitions reach without a gap (None: they do not cover now)."""
    row = conn.execute("SELECT nullif(horizon, '-infinity') FROM orchwf_partitioning").fetchone()
    assert row is not None
    return row[0]
