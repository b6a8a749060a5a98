"""Scenario 8: hostile input at every boundary.

The enqueue API (Client.enqueue/enqueue_many and enqueue on the caller's connection),
list_workflows' filters and pages, the SQL function orchwf_enqueue(...) called as a
non-Python producer would, the CLI, and the metrics HTTP endpoint.

Each case gets a clear error (an orchwf error, or at the SQL boundary an error with one
of the documented SQLSTATEs) or a correct result (what was stored reads back equal), the
process never crashes, and a refused call leaves nothing behind (row counts unchanged,
the caller's transaction still usable).

NUL (\\u0000): Postgres jsonb cannot store it. orchwf refuses it with ValidationError in
every value it would store (input, metadata, queue, idempotency key, filters); in an ID
it looks up (workflow ID, instance ID) it answers "not found" (WorkflowNotFoundError),
which is just as clear: no such ID can exist. The same holds for lone surrogates.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from harness import HERE, PROFILE, connect, wait_until_done
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ledger import check_ledger

from orchwf import Client, ValidationError, WorkflowNotFoundError
from orchwf.client import enqueue

pytestmark = pytest.mark.timeout(PROFILE.timeout)

HYPOTHESIS = settings(max_examples=PROFILE.hypothesis_examples, deadline=None, derandomize=True,
                      suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                             HealthCheck.data_too_large])

INJECTIONS = [
    "'; DROP TABLE orchwf_workflow_instances; --",
    "x' OR '1'='1",
    "\"; DROP TABLE orchwf_step_instances; --",
    "$$; DROP TABLE orchwf_ready_steps; $$",
    "%s%s%s%(x)s{0}{}",
    "\\'; SELECT pg_sleep(5); --",
    "dag5'||'",
    "dag5\x00",
    ") OR 1=1; --",
]
ALL_CHARS = st.characters(blacklist_categories=())  # includes lone surrogates and NUL
hostile_text = st.one_of(st.text(ALL_CHARS, max_size=40), st.sampled_from(INJECTIONS),
                         st.text(st.sampled_from("\x00\ud800\udfff'\";\\$%{}"), min_size=1, max_size=5))
hostile_numbers = st.one_of(
    st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**31, -(2**31) - 1, 2**63, -(2**63) - 1, 2**64, 10**300, -(10**300)]),  # 10**5000: explicit case
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1.7976931348623157e308, 5e-324, -0.0, 1e20, 0.1]),
)
hostile_leaf = st.one_of(st.none(), st.booleans(), hostile_numbers, hostile_text,
                         st.binary(max_size=4), st.sampled_from([object(), {1, 2}, Decimal("1.5"),
                                                                  datetime(2020, 1, 1), b"\x00"]))
hostile_key = st.one_of(hostile_text, st.integers(), st.none(), st.tuples(st.integers()))
hostile_value = st.recursive(
    hostile_leaf,
    lambda children: st.one_of(st.lists(children, max_size=4), st.tuples(children),
                               st.dictionaries(hostile_key, children, max_size=4)),
    max_leaves=12,
)
hostile_input = st.one_of(st.dictionaries(hostile_key, hostile_value, max_size=5), hostile_value)


# --------------------------------------------------------------------------- helpers


def _counts(dsn: str) -> tuple[int, ...]:
    with connect(dsn) as conn:
        return tuple(conn.execute(
            "SELECT (SELECT count(*) FROM orchwf_workflow_instances), (SELECT count(*) FROM orchwf_step_instances),"
            " (SELECT count(*) FROM orchwf_ready_steps), (SELECT count(*) FROM orchwf_workflow_events)").fetchone())


def _json_equal(sent: Any, got: Any) -> bool:
    """Equal as JSON: numbers by their decimal value (jsonb keeps the number as written,
    so 1e20 reads back as the int 100000000000000000000), tuples as lists."""
    if isinstance(sent, bool) or isinstance(got, bool):
        return sent is got
    if isinstance(sent, (int, float)) and isinstance(got, (int, float)):
        return Decimal(repr(sent) if isinstance(sent, float) else sent) == Decimal(
            repr(got) if isinstance(got, float) else got)
    if isinstance(sent, dict) and isinstance(got, dict):
        return sent.keys() == got.keys() and all(_json_equal(v, got[k]) for k, v in sent.items())
    if isinstance(sent, (list, tuple)) and isinstance(got, list):
        return len(sent) == len(got) and all(_json_equal(a, b) for a, b in zip(sent, got, strict=True))
    return sent == got


def _tables_intact(dsn: str) -> None:
    with connect(dsn) as conn:
        names = {r[0] for r in conn.execute("SELECT c.relname FROM pg_class c WHERE c.relname LIKE 'orchwf_%%'"
                                            " AND c.relkind IN ('r', 'p', 'v')")}
    assert {"orchwf_workflow_instances", "orchwf_step_instances", "orchwf_ready_steps", "orchwf_live_instances",
            "orchwf_instance_history", "orchwf_workflow_events", "orchwf_workflow_definitions"} <= names


@pytest.fixture
def hostile(chaos_db: str):
    client = Client(chaos_db)
    yield client
    client.close()
    _tables_intact(chaos_db)


# --------------------------------------------------------------------------- enqueue API


@HYPOTHESIS
@given(data=hostile_input)
def test_enqueue_hostile_input(hostile: Client, chaos_db: str, data: Any) -> None:
    before = _counts(chaos_db)
    try:
        iid = hostile.enqueue("dag5", data)
    except ValidationError as exc:
        str(exc).encode("utf-8", "backslashreplace")
        assert _counts(chaos_db) == before, "a refused enqueue left rows behind"
        return
    stored = hostile.get_workflow(iid).input
    assert _json_equal({} if data is None else data, stored), (data, stored)


@HYPOTHESIS
@given(workflow_id=st.one_of(hostile_text, st.sampled_from(["dag5", "nope", "x" * 256, "", "DAG5"]), st.integers()),
       priority=st.one_of(st.none(), hostile_numbers, st.booleans(), hostile_text),
       queue=st.one_of(st.none(), hostile_text, st.sampled_from(["", "q" * 255, "q" * 256])),
       key=st.one_of(st.none(), hostile_text, st.sampled_from(["", "k" * 255, "k" * 256])),
       metadata=st.one_of(st.none(), hostile_value,
                          st.fixed_dictionaries({}, optional={
                              "trace_id": st.one_of(hostile_text, st.text(min_size=250, max_size=3000), hostile_value),
                              "business_id": st.one_of(hostile_text, st.just("b" * 5000), hostile_value),
                              "correlation_id": st.one_of(hostile_text, hostile_value)})),
       run_after=st.one_of(st.none(), st.datetimes(), st.datetimes(timezones=st.just(timezone.utc)),
                           st.sampled_from(["2030-01-01", 0])))
def test_enqueue_hostile_options(hostile: Client, chaos_db: str, workflow_id: Any, priority: Any, queue: Any,
                                 key: Any, metadata: Any, run_after: Any) -> None:
    before = _counts(chaos_db)
    try:
        iid = hostile.enqueue(workflow_id, {"x": 1}, priority=priority, queue=queue, idempotency_key=key,
                              metadata=metadata, run_after=run_after)
    except (ValidationError, WorkflowNotFoundError) as exc:
        str(exc).encode("utf-8")  # the message itself is printable
        assert _counts(chaos_db) == before, "a refused enqueue left rows behind"
        return
    inst = hostile.get_workflow(iid)
    assert inst.workflow_id == workflow_id == "dag5"
    assert inst.priority == (priority or 0) and inst.queue == (queue or "default")
    assert _json_equal(metadata or {}, inst.metadata)
    if key is not None:
        assert hostile.enqueue("dag5", {"x": 2}, idempotency_key=key, queue=queue) == iid


def test_enqueue_explicit_hostile_cases(hostile: Client, chaos_db: str) -> None:
    refused = [
        {"n": float("nan")}, {"n": float("inf")}, {"n": -float("inf")},
        {"s": "a\x00b"}, {"a\x00": 1}, {"deep": [{"x": "\x00"}]},
        {"s": "\ud800"}, {"\udfff": 1},
        {"big": 10**5000}, {"set": {1}}, {"bytes": b"x"}, {1: "int key"},
        {"deep": json.loads("[" * 101 + "]" * 101)},
    ]
    deep: Any = {}
    for _ in range(100_000):  # far deeper than the recursion limit: refused, not a RecursionError
        deep = {"d": deep}
    refused.append(deep)
    loop: dict[str, Any] = {}
    loop["self"] = loop  # a cycle
    refused.append(loop)
    before = _counts(chaos_db)
    for data in refused:
        with pytest.raises(ValidationError):
            hostile.enqueue("dag5", data)
    for bad_meta in ({"trace_id": "t" * 256}, {"business_id": {"x": "y" * 300}}, {"k": "\x00"}, {"trace_id": 10**5000}):
        with pytest.raises(ValidationError):
            hostile.enqueue("dag5", {}, metadata=bad_meta)
    for bad_id in ("nope", "dag5\x00", "dag\ud800", "x" * 10_000, "'; DROP TABLE orchwf_workflow_instances; --"):
        with pytest.raises(WorkflowNotFoundError):
            hostile.enqueue(bad_id, {})
    for options in ({"queue": "q\x00"}, {"queue": "q\ud800"}, {"idempotency_key": "k\x00"},
                    {"idempotency_key": "k\ud800"}, {"priority": 2**30}, {"priority": -(2**30) - 1},
                    {"priority": 1.5}, {"priority": True}, {"run_after": datetime(2030, 1, 1)}):
        with pytest.raises(ValidationError):
            hostile.enqueue("dag5", {}, **options)
    assert _counts(chaos_db) == before
    # accepted and read back equal: nesting at the limit, numbers at the edges, 10 MB
    ok = [json.loads("[" * 99 + "]" * 99), {"n": 2**63, "m": -(10**300), "f": 1.7976931348623157e308,
                                            "t": 5e-324, "z": -0.0, "e": 1e20},
          {"blob": "x" * (10 * 2**20)}, {"many": {f"k{i}": i for i in range(200_000)}},
          {"inj": [i for i in INJECTIONS if "\x00" not in i], "unicode": "\u2028\u2029\U0001F600 \u00e9"}]
    for data in ok:
        data = data if isinstance(data, dict) else {"v": data}
        iid = hostile.enqueue("dag5", data)
        assert _json_equal(data, hostile.get_workflow(iid).input)
    # the caller's own transaction survives a refused enqueue and can still commit
    with psycopg.connect(chaos_db) as conn:
        with pytest.raises(ValidationError):
            enqueue(conn, "dag5", {"x": float("nan")})
        with pytest.raises(ValidationError):
            enqueue(conn, "dag5", {}, metadata={"trace_id": "t" * 5000})
        kept = enqueue(conn, "dag5", {"x": 1})
        conn.commit()
    assert hostile.get_workflow(kept).input == {"x": 1}


# --------------------------------------------------------------------------- list_workflows


filter_keys = st.one_of(st.sampled_from(["workflow_id", "status", "trace_id", "correlation_id", "business_id"]),
                        hostile_text)


@HYPOTHESIS
@given(filters=st.one_of(st.none(), st.dictionaries(filter_keys, st.one_of(hostile_text, hostile_leaf), max_size=3),
                         hostile_leaf),
       limit=st.one_of(hostile_numbers, st.sampled_from([0, 1, 10_000, 10_001, -1]), hostile_text),
       offset=st.one_of(hostile_numbers, st.sampled_from([0, -1, 2**62, 2**62 + 1]), st.none()))
def test_list_workflows_hostile_filters_and_pages(hostile: Client, chaos_db: str, filters: Any, limit: Any,
                                                  offset: Any) -> None:
    _seed(hostile)
    try:
        page, total = hostile.list_workflows(filters, limit, offset)
    except ValidationError as exc:
        str(exc).encode("utf-8")
        return
    assert isinstance(limit, int) and 0 <= limit <= 10_000 and len(page) <= limit and total >= 0
    for inst in page:
        for key, value in (filters or {}).items():
            got = getattr(inst, key)
            assert (got.value if hasattr(got, "value") else got) == value


_seeded: set[str] = set()


def _seed(client: Client) -> None:
    if client.dsn in _seeded:
        return
    _seeded.add(client.dsn)
    client.enqueue_many("dag5", [{"i": i} for i in range(5)], metadata={"trace_id": "x' OR '1'='1"})


def test_list_workflows_injection_is_data(hostile: Client) -> None:
    iid = hostile.enqueue("dag5", {}, metadata={"trace_id": "x' OR '1'='1", "business_id": "b; DROP TABLE x"})
    hostile.enqueue("dag5", {})
    assert [i.id for i in hostile.list_workflows({"trace_id": "x' OR '1'='1"})[0]] == [iid]
    assert hostile.list_workflows({"business_id": "' OR 1=1 --"}) == ([], 0)
    with pytest.raises(ValidationError):
        hostile.list_workflows({"id; DROP TABLE orchwf_workflow_instances": "x"})
    for bad in ({"status": "done"}, {"workflow_id": 5}, {"trace_id": "a\x00"}, {"trace_id": "\ud800"}):
        with pytest.raises(ValidationError):
            hostile.list_workflows(bad)
    for limit, offset in ((-1, 0), (0, -1), (10_001, 0), (1.5, 0), ("10", 0), (True, 0), (10, 2**62 + 1)):
        with pytest.raises(ValidationError):
            hostile.list_workflows(None, limit, offset)
    assert hostile.list_workflows(None, 0, 0) == ([], 2)
    assert hostile.list_workflows(None, 10_000, 2**62)[0] == []
    for bad_id in ("nope", "\x00", "\ud800", "'; DROP TABLE x; --", "0" * 10_000):
        for call in (hostile.get_workflow, hostile.cancel_workflow, hostile.resume_workflow,
                     hostile.get_workflow_events):
            with pytest.raises(WorkflowNotFoundError) as info:
                call(bad_id)
            str(info.value).encode("utf-8", "strict") if "\ud800" not in bad_id else None


# --------------------------------------------------------------------------- SQL function

# What a producer in another language may see from SELECT orchwf_enqueue(...): the
# documented orchwf codes, or Postgres refusing the value before orchwf sees it.
SQL_CLEAR = {
    "OW400": "invalid argument", "OW404": "unknown workflow",
    "22P02": "invalid input syntax (not JSON)", "22P05": "untranslatable character (\\u0000 in jsonb)",
    "22003": "numeric value out of range (priority beyond int4)", "22021": "invalid UTF-8",
    "22007": "invalid timestamp", "22008": "timestamp out of range",
}
json_texts = st.one_of(
    st.sampled_from(['{}', '{"a": 1}', '[1]', '1', '"s"', 'null', '{"a": NaN}', '{"a": Infinity}', '{"a": "\\u0000"}',
                     '{"a": "\\ud800"}', '{', 'not json', '{"a": 1e400}', '{"a": 1', "{'a': 1}", '']),
    st.builds(lambda v: json.dumps(v, allow_nan=True), hostile_value.filter(lambda v: _dumpable(v))),
)


def _dumpable(v: Any) -> bool:
    try:
        json.dumps(v, allow_nan=True)
    except (TypeError, ValueError):
        return False
    return True


@HYPOTHESIS
@given(workflow_id=st.one_of(st.none(), st.just("dag5"), hostile_text.filter(lambda s: "\x00" not in s and _utf8(s))),
       input_text=st.one_of(st.none(), json_texts.filter(lambda s: "\x00" not in s and _utf8(s))),
       metadata_text=st.one_of(st.none(), st.just('{"trace_id": "t"}'),
                               json_texts.filter(lambda s: "\x00" not in s and _utf8(s))),
       priority=st.one_of(st.none(), st.integers(min_value=-(2**40), max_value=2**40)),
       queue=st.one_of(st.none(), st.sampled_from(["", "q" * 256, "default"]),
                       hostile_text.filter(lambda s: "\x00" not in s and _utf8(s))),
       key=st.one_of(st.none(), hostile_text.filter(lambda s: "\x00" not in s and _utf8(s))),
       run_after=st.one_of(st.none(), st.sampled_from(["infinity", "-infinity", "2030-01-01T00:00:00Z", "garbage",
                                                       "294277-01-01"])))
def test_sql_enqueue_function_hostile(chaos_db: str, workflow_id: Any, input_text: Any, metadata_text: Any,
                                      priority: Any, queue: Any, key: Any, run_after: Any) -> None:
    before = _counts(chaos_db)
    with psycopg.connect(chaos_db, autocommit=True) as conn:
        try:
            row = conn.execute(
                "SELECT orchwf_enqueue(%s::text, %s::text::jsonb, coalesce(%s::text::jsonb, '{}'), %s::bigint::integer,"
                " %s::text, %s::text, %s::text::timestamptz)",
                (workflow_id, input_text, metadata_text, priority, key, queue, run_after)).fetchone()
        except psycopg.Error as exc:
            assert exc.sqlstate in SQL_CLEAR, f"unclear error {exc.sqlstate}: {exc}"
            assert _counts(chaos_db) == before, "a refused SQL enqueue left rows behind"
            return
        iid = row[0]
        stored = conn.execute("SELECT workflow_id, input, priority, queue, idempotency_key FROM orchwf_workflow_instances"
                              " WHERE id = %s", (iid,)).fetchone()
    assert stored[0] == "dag5"
    if key is not None and (chaos_db, key) in _sql_keys:  # idempotency: the first instance with this key
        assert str(iid) == _sql_keys[(chaos_db, key)]
        return
    if key is not None:
        _sql_keys[(chaos_db, key)] = str(iid)
    assert _json_equal(json.loads(input_text), stored[1])
    assert stored[2] == (priority or 0) and stored[3] == (queue or "default") and stored[4] == key


_sql_keys: dict[tuple[str, str], str] = {}


def _utf8(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def test_sql_enqueue_function_explicit_cases(chaos_db: str) -> None:
    cases = [
        ("SELECT orchwf_enqueue('dag5', '{\"a\": \"\\u0000\"}')", "22P05"),
        ("SELECT orchwf_enqueue('dag5', '{\"a\": NaN}')", "22P02"),
        ("SELECT orchwf_enqueue('dag5', '[1, 2]')", "OW400"),
        ("SELECT orchwf_enqueue('dag5', 'null')", "OW400"),
        ("SELECT orchwf_enqueue('dag5', NULL)", "OW400"),
        ("SELECT orchwf_enqueue('nope', '{}')", "OW404"),
        ("SELECT orchwf_enqueue(NULL, '{}')", "OW404"),
        ("SELECT orchwf_enqueue('dag5'' OR ''1''=''1', '{}')", "OW404"),
        ("SELECT orchwf_enqueue('dag5', '{}', '[]')", "OW400"),
        ("SELECT orchwf_enqueue('dag5', '{}', '{}', NULL, NULL, '')", "OW400"),
        ("SELECT orchwf_enqueue('dag5', '{}', '{}', NULL, NULL, repeat('q', 256))", "OW400"),
        ("SELECT orchwf_enqueue('dag5', '{}', '{}', 2147483648::bigint::integer)", "22003"),
        ("SELECT orchwf_enqueue_many('dag5', ARRAY['{}'::jsonb, '{}'], '{}', NULL, ARRAY['k'])", "OW400"),
        ("SELECT orchwf_enqueue_many('dag5', ARRAY['{}'::jsonb, NULL], '{}')", "OW400"),
    ]
    before = _counts(chaos_db)
    with psycopg.connect(chaos_db, autocommit=True) as conn:
        for query, state in cases:
            with pytest.raises(psycopg.Error) as info:
                conn.execute(query)
            assert info.value.sqlstate == state, (query, info.value.sqlstate, str(info.value))
        assert conn.execute("SELECT orchwf_enqueue_many('dag5', ARRAY[]::jsonb[])").fetchone()[0] == []
    assert _counts(chaos_db) == before


def test_sql_enqueue_refuses_oversized_keys_clearly(chaos_db: str) -> None:
    with psycopg.connect(chaos_db, autocommit=True) as conn:
        for query in ("SELECT orchwf_enqueue('dag5', '{}', '{}', NULL, (SELECT string_agg(md5(g::text), '')"
                      " FROM generate_series(1, 200) g))",
                      "SELECT orchwf_enqueue('dag5', '{}', jsonb_build_object('trace_id', (SELECT string_agg(md5(g::text),"
                      " '') FROM generate_series(1, 200) g)))"):
            with pytest.raises(psycopg.Error) as info:
                conn.execute(query)
            assert info.value.sqlstate == "OW400", (info.value.sqlstate, str(info.value)[:200])


# --------------------------------------------------------------------------- priorities at the edge


def _edge_run(chaos, edge: list[str], timeout: float = 45, expected: str = "completed") -> None:
    """Run ``edge`` instances beside ordinary ones; the ordinary ones must not notice."""
    others = chaos.enqueue("dag5", 30, {"sleep": 0.002})
    daemon = chaos.start("--workers", "2", "--concurrency", "8", "--lease-seconds", "3")
    try:
        wait_until_done(chaos.dsn, others + edge, timeout=timeout, daemons=[daemon])
    except AssertionError as exc:
        pytest.fail(f"edge priorities wedged the fleet: {str(exc)[:1500]}")
    daemon.stop()
    check_ledger(chaos.dsn, others + edge)
    with connect(chaos.dsn) as conn:
        hurt = conn.execute(
            "SELECT count(*) FROM orchwf_step_instances s JOIN orchwf_workflow_instances i ON i.id = s.workflow_inst_id"
            " WHERE i.id = ANY(%s::uuid[]) AND (s.crashes > 0 OR s.status <> 'completed')", (others,)).fetchone()[0]
        ends = conn.execute("SELECT status, error FROM orchwf_workflow_instances WHERE id = ANY(%s::uuid[])",
                            (edge,)).fetchall()
    assert hurt == 0, f"{hurt} steps of ordinary workflows were hurt by a neighbour's result"
    for status, error in ends:  # a saturated priority completes; else a clear failure
        assert status == expected or "out of range" in (error or ""), (status, error)


@pytest.mark.slow
def test_edge_step_priority_does_not_wedge_the_fleet(chaos) -> None:
    """A step of priority 2**31-1 in an instance of priority 1: releasing it adds them in
    int4. The finish that fails must not hold back the other results committed with it
    (a group commit), nor leave its step running until the lease expires."""
    edge = chaos.client.enqueue("edge_priority", {}, priority=1)
    _edge_run(chaos, [edge])


@pytest.mark.slow
def test_edge_instance_priority_does_not_wedge_the_fleet(chaos) -> None:
    """Priorities are summed in int4 (instance + step, + 1000 for a compensation): the SQL
    API refuses instance priorities beyond 2**29 with a clear error, and the extremes it
    accepts run and compensate without overflowing."""
    with connect(chaos.dsn) as conn:
        for bad in (2147483647, -2147483648, 2**29 + 1):
            with pytest.raises(psycopg.Error, match="out of range"):
                conn.execute("SELECT orchwf_enqueue('edge_compensation', '{}', '{}', %s)", (bad,))
            conn.rollback()
        high = str(conn.execute("SELECT orchwf_enqueue('edge_compensation', '{}', '{}', %s)", (2**29,)).fetchone()[0])
        low = str(conn.execute("SELECT orchwf_enqueue('edge_compensation', '{}', '{}', %s)", (-(2**29),)).fetchone()[0])
        conn.commit()
    _edge_run(chaos, [high, low], timeout=30, expected="failed")  # it fails on purpose, then compensates
    with connect(chaos.dsn) as conn:
        compensated = conn.execute(
            "SELECT count(*) FROM orchwf_workflow_events WHERE event_type = 'step.compensated'"
            " AND workflow_inst_id = ANY(%s::uuid[])", ([high, low],)).fetchone()[0]
    assert compensated == 2


# --------------------------------------------------------------------------- CLI


def _orchwf(*args: str | bytes, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONPATH=str(HERE), **(env or {}))
    full_env.pop("ORCHWF_DSN", None)
    return subprocess.run([sys.executable, "-m", "orchwf", *args], env=full_env, capture_output=True, timeout=timeout)


def _assert_clear(proc: subprocess.CompletedProcess, codes: tuple[int, ...] = (1, 2)) -> str:
    out = (proc.stdout + proc.stderr).decode("utf-8", "replace")
    assert proc.returncode in codes, (proc.returncode, out[-2000:])
    assert "Traceback" not in out, out[-3000:]
    assert re.search(r"(^|\n)(error:|Error:|Usage:)", out), out[-2000:]
    return out


@pytest.mark.slow
def test_cli_worker_refuses_hostile_arguments(chaos_db: str) -> None:
    dsn = chaos_db
    bad = [
        ["--app", "chaosapp", "--dsn", dsn, "--workers", "0"],
        ["--app", "chaosapp", "--dsn", dsn, "--workers", "-1"],
        ["--app", "chaosapp", "--dsn", dsn, "--workers", str(10**20)],
        ["--app", "chaosapp", "--dsn", dsn, "--concurrency", "0"],
        ["--app", "chaosapp", "--dsn", dsn, "--lease-seconds", "0"],
        ["--app", "chaosapp", "--dsn", dsn, "--lease-seconds", "nan"],
        ["--app", "chaosapp", "--dsn", dsn, "--lease-seconds", "inf"],
        ["--app", "chaosapp", "--dsn", dsn, "--shutdown-timeout", "-5"],
        ["--app", "chaosapp", "--dsn", dsn, "--metrics-port", "70000"],
        ["--app", "chaosapp", "--dsn", dsn, "--poll-interval", "0"],
        ["--app", "no_such_module_'; DROP TABLE x; --", "--dsn", dsn],
        ["--app", "chaosapp:no_such_attr", "--dsn", dsn],
        ["--app", "os:path", "--dsn", dsn],
        ["--app", ":", "--dsn", dsn],
        ["--app", "chaosapp", "--dsn", dsn, "--log-level", "LOUD"],
    ]
    for args in bad:
        _assert_clear(_orchwf("worker", *args))
    # bytes that are not UTF-8 reach Python as lone surrogates (surrogateescape)
    _assert_clear(_orchwf("worker", "--app", b"\xff\xfe", "--dsn", dsn))


@pytest.mark.slow
def test_cli_migrate_refuses_hostile_schema(chaos_db: str) -> None:
    for schema in ("x; DROP TABLE orchwf_workflow_instances; --", "a\"b", "", "x" * 100, "1abc"):
        _assert_clear(_orchwf("migrate", "status", "--dsn", chaos_db, "--schema", schema))
    _tables_intact(chaos_db)


def _operator_commands() -> set[str]:
    from orchwf.cli.main import cli

    return set(cli.commands)


@pytest.mark.slow
def test_cli_enqueue_hostile(chaos_db: str, tmp_path) -> None:
    if "enqueue" not in _operator_commands():
        pytest.skip("`orchwf enqueue` does not exist yet (operator CLI commands are being added in parallel)")
    nul = tmp_path / "nul.json"
    nul.write_text('{"x": "a\\u0000b"}')
    big = tmp_path / "big.json"
    big.write_text('{"big": ' + "9" * 5000 + "}")  # more digits than Python parses by default
    refused = [
        ["dag5", "--input", '{"x": NaN}'], ["dag5", "--input", '{"x": Infinity}'], ["dag5", "--input", "not json"],
        ["dag5", "--input", "[1]"], ["dag5", "--input", "null"], ["dag5", "--input", f"@{nul}"],
        ["dag5", "--input", f"@{big}"], ["dag5", "--input", "[" * 150 + "]" * 150],
        ["dag5", "--input", f"@{tmp_path / 'missing.json'}"],
        ["dag5", "--input", "{}", "--metadata", '{"trace_id": "' + "t" * 300 + '"}'],
        ["dag5", "--input", "{}", "--metadata", "[]"],
        ["nope", "--input", "{}"], ["'; DROP TABLE orchwf_workflow_instances; --", "--input", "{}"],
        ["dag5", "--priority", str(2**40)], ["dag5", "--priority", "high"], ["dag5", "--queue", ""],
        ["dag5", "--queue", "q" * 256], ["dag5", "--idempotency-key", ""], ["x" * 10_000],
    ]
    before = _counts(chaos_db)
    for args in refused:
        _assert_clear(_orchwf("enqueue", "--dsn", chaos_db, *args))
    # bytes that are not UTF-8 arrive as lone surrogates
    _assert_clear(_orchwf("enqueue", "--dsn", chaos_db, "dag5", "--queue", b"q\xff"))
    _assert_clear(_orchwf("enqueue", "--dsn", chaos_db, b"dag\xff"))
    assert _counts(chaos_db) == before, "a refused enqueue left rows behind"
    # and what is valid goes in as given, injection strings included
    payload = {"inj": "'; DROP TABLE orchwf_workflow_instances; --", "big": 9 * 10**200, "u": "\u00e9\U0001F600"}
    proc = _orchwf("enqueue", "--dsn", chaos_db, "dag5", "--input", json.dumps(payload),
                   "--queue", "'; --", "--priority", "-5", "--json")
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    iid = re.search(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", proc.stdout).group().decode()
    with Client(chaos_db) as client:
        inst = client.get_workflow(iid)
    assert _json_equal(payload, inst.input) and inst.queue == "'; --" and inst.priority == -5
    _tables_intact(chaos_db)


@pytest.mark.slow
def test_cli_enqueue_deep_or_undecodable_input(chaos_db: str, tmp_path) -> None:
    if "enqueue" not in _operator_commands():
        pytest.skip("`orchwf enqueue` does not exist yet")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    latin = tmp_path / "latin1.json"
    latin.write_bytes(b'{"x": "\xe9t\xe9"}')
    for path in (deep, latin):
        _assert_clear(_orchwf("enqueue", "--dsn", chaos_db, "dag5", "--input", f"@{path}"))


# --------------------------------------------------------------------------- metrics endpoint


def _http(port: int, payload: bytes, timeout: float = 10.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(payload)
        chunks = []
        while True:
            try:
                data = s.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


@pytest.mark.slow
def test_metrics_endpoint_hostile_requests(chaos) -> None:
    daemon = chaos.start("--workers", "1", metrics=True)
    daemon.wait_workers(1)
    port = daemon.metrics_port
    deadline = time.monotonic() + 10
    while True:
        try:
            first = _http(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            break
        except OSError:
            if time.monotonic() > deadline:
                pytest.skip("no metrics endpoint answers on --metrics-port (not implemented in this checkout)")
            time.sleep(0.2)
    assert first.startswith(b"HTTP/1.1 200"), first
    iid = chaos.client.enqueue("dag5", {"secret": "do-not-leak"}, metadata={"trace_id": "trace-do-not-leak"})
    cases = {
        b"POST /metrics HTTP/1.1\r\n\r\n": b"405",
        b"DELETE /healthz HTTP/1.1\r\n\r\n": b"405",
        b"GET /../../etc/passwd HTTP/1.1\r\n\r\n": b"404",
        b"GET /metrics?x='%20OR%201=1;--%00 HTTP/1.1\r\n\r\n": b"200",
        b"GET /metrics?x=' OR 1=1 -- HTTP/1.1\r\n\r\n": b"400",  # spaces in the target
        b"GET /metrics HTTP/1.1\r\nX: " + b"A" * 20000 + b"\r\n\r\n": b"431",
        b"\x00\xff\xfe garbage\r\n\r\n": b"400",
        b"GET\r\n\r\n": b"400",
        b"GET /metrics HTTP/1.1\r\nbad header line\r\n\r\n": b"400",
        b"GET /metrics HTTP/9.9\r\n\r\n": b"400",
        b"GET " + b"/" * 9000 + b" HTTP/1.1\r\n\r\n": b"431",
        b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=99\r\n\r\n": b"200",
    }
    for request, status in cases.items():
        answer = _http(port, request)
        assert answer.startswith(b"HTTP/1.1 " + status), (request[:80], answer[:200])
    # a slow or silent client costs one slot for a few seconds; a flood of them does not
    # stop the supervisor's loop or the workers
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
    half = socket.create_connection(("127.0.0.1", port))
    half.sendall(b"GET /metrics HTTP/1.1\r\n")  # never finished
    wait_until_done(chaos.dsn, [iid], timeout=30, daemons=[daemon])
    for s in idle + [half]:
        s.close()
    time.sleep(0.5)
    body = _http(port, b"GET /metrics HTTP/1.1\r\n\r\n")
    assert body.startswith(b"HTTP/1.1 200")
    # metrics carry no instance data: no instance IDs, inputs or metadata values
    assert iid.encode() not in body and b"do-not-leak" not in body
    assert not re.search(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", body)
    assert daemon.alive()
    daemon.stop()
    led = check_ledger(chaos.dsn, [iid])
    assert led.instance_status == {"completed": 1}


def test_no_float_drift_helper_sanity() -> None:
    assert _json_equal({"a": 1e20}, {"a": 10**20})
    assert _json_equal({"a": 1.7976931348623157e308}, {"a": 17976931348623157 * 10**292})
    assert not _json_equal({"a": 1.5}, {"a": 1})
    assert not _json_equal({"a": True}, {"a": 1})
    assert math.isclose(0.1, 0.1)

