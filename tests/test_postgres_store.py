"""DBStateManager behaviour specific to Postgres: transactions, threads, fork, injection, tz.

The semantics shared with the in-memory store are covered by the contract suite.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool

from orchwf.db.migrations import DatabaseConnectionError, migrate
from orchwf.errors import (
    InvalidStateError,
    StepNotFoundError,
    ValidationError,
    WorkflowNotFoundError,
)
from orchwf.stores.base import FILTER_KEYS
from orchwf.stores.postgres import FILTER_COLUMNS, DBStateManager
from orchwf.types import (
    StepInstance,
    StepStatus,
    WorkflowEvent,
    WorkflowInstance,
    WorkflowStatus,
    utcnow,
)


@pytest.fixture
def store(db_dsn: str) -> Iterator[DBStateManager]:
    with DBStateManager(db_dsn) as s:
        yield s


def new_id() -> str:
    return str(uuid.uuid4())


def make_workflow(**kw) -> WorkflowInstance:
    kw.setdefault("id", new_id())
    kw.setdefault("workflow_id", "wf")
    return WorkflowInstance(**kw)


def make_step(workflow: WorkflowInstance, step_id: str = "s", **kw) -> StepInstance:
    return StepInstance(
        id=kw.pop("id", new_id()), step_id=step_id, workflow_inst_id=workflow.id, **kw
    )


def count_workflows(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM orchwf_workflow_instances").fetchone()
    assert row is not None
    return int(row[0])


# -- transactions -------------------------------------------------------------------------


def test_with_transaction_rolls_back_every_write(store: DBStateManager, db_dsn: str) -> None:
    existing = make_workflow()
    store.save_workflow(existing)
    fresh = make_workflow()
    step = make_step(fresh)

    def work() -> None:
        store.save_workflow(fresh)
        store.save_step(step)
        store.update_step_status(step.id, StepStatus.RUNNING)
        store.save_event(WorkflowEvent(id=new_id(), workflow_inst_id=fresh.id, event_type="x"))
        store.update_workflow_status(existing.id, WorkflowStatus.COMPLETED)
        store.update_workflow_output(existing.id, {"k": 1})
        # reads inside the transaction see its own writes
        assert store.get_workflow(fresh.id).steps[0].status == StepStatus.RUNNING
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        store.with_transaction(work)
    with pytest.raises(WorkflowNotFoundError):
        store.get_workflow(fresh.id)
    with pytest.raises(StepNotFoundError):
        store.get_step(step.id)
    after = store.get_workflow(existing.id)
    assert after.status == WorkflowStatus.PENDING and after.output == {}
    assert count_workflows(db_dsn) == 1


def test_with_transaction_commits_and_returns(store: DBStateManager) -> None:
    wf = make_workflow()
    assert store.with_transaction(lambda: (store.save_workflow(wf), 42)[1]) == 42
    assert store.get_workflow(wf.id).id == wf.id


def test_uncommitted_writes_are_invisible_to_other_threads(store: DBStateManager) -> None:
    wf = make_workflow()
    seen: list[str] = []

    def peek() -> None:
        try:
            store.get_workflow(wf.id)
            seen.append("found")
        except WorkflowNotFoundError:
            seen.append("missing")

    def work() -> None:
        store.save_workflow(wf)
        t = threading.Thread(target=peek)  # another thread: another connection
        t.start()
        t.join()

    store.with_transaction(work)
    assert seen == ["missing"]
    peek()
    assert seen == ["missing", "found"]


def test_nested_transaction_is_a_savepoint(store: DBStateManager) -> None:
    a, b, c = make_workflow(), make_workflow(), make_workflow()

    def inner() -> None:
        store.save_workflow(b)
        raise ValueError("inner fails")

    def outer() -> None:
        store.save_workflow(a)
        with pytest.raises(ValueError):
            store.with_transaction(inner)
        store.save_workflow(c)
        store.with_transaction(lambda: store.update_workflow_status(c.id, WorkflowStatus.RUNNING))

    store.with_transaction(outer)
    assert store.get_workflow(a.id).id == a.id
    assert store.get_workflow(c.id).status == WorkflowStatus.RUNNING
    with pytest.raises(WorkflowNotFoundError):
        store.get_workflow(b.id)


def test_not_found_inside_a_transaction_does_not_poison_it(store: DBStateManager) -> None:
    wf = make_workflow()

    def work() -> None:
        store.save_workflow(wf)
        for call in (
            lambda: store.save_step(make_step(make_workflow())),
            lambda: store.update_workflow_status(new_id(), WorkflowStatus.FAILED),
            lambda: store.save_event(
                WorkflowEvent(
                    id=new_id(), workflow_inst_id=wf.id, event_type="e", step_inst_id=new_id()
                )
            ),
        ):
            with pytest.raises((WorkflowNotFoundError, StepNotFoundError)):
                call()
        store.save_step(make_step(wf))

    store.with_transaction(work)
    assert len(store.get_workflow(wf.id).steps) == 1


def test_commit_errors_propagate_and_roll_back(store: DBStateManager) -> None:
    wf = make_workflow()
    with store.connection() as conn:
        conn.execute("CREATE TABLE deferred_check (x int UNIQUE DEFERRABLE INITIALLY DEFERRED)")

    def work() -> None:
        store.save_workflow(wf)
        with store.connection() as conn:  # the transaction's own connection
            conn.execute("INSERT INTO deferred_check VALUES (1), (1)")  # fails only at COMMIT

    with pytest.raises(psycopg.errors.UniqueViolation):
        store.with_transaction(work)
    with pytest.raises(WorkflowNotFoundError):
        store.get_workflow(wf.id)


def test_concurrent_threads_with_transactions(store: DBStateManager, db_dsn: str) -> None:
    n_threads, per_thread = 8, 10
    errors: list[BaseException] = []
    created: list[str] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        try:
            for i in range(per_thread):
                wf = make_workflow(workflow_id=f"wf{k}")
                steps = [make_step(wf, f"s{j}", execution_order=j) for j in range(3)]

                def write(
                    wf: WorkflowInstance = wf, steps: list[StepInstance] = steps, odd: int = i % 2
                ) -> None:
                    store.save_workflow(wf)
                    for s in steps:
                        store.save_step(s)
                        store.update_step_status(s.id, StepStatus.COMPLETED)
                    if odd:
                        raise KeyError("odd ones roll back")

                try:
                    store.with_transaction(write)
                except KeyError:
                    continue
                with lock:
                    created.append(wf.id)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert len(created) == n_threads * per_thread // 2
    assert count_workflows(db_dsn) == len(created)
    for wf_id in created[:5]:
        steps = store.get_workflow(wf_id).steps
        assert [s.step_id for s in steps] == ["s0", "s1", "s2"]
        assert all(s.status == StepStatus.COMPLETED and s.completed_at for s in steps)


@pytest.mark.parametrize("kind", ["connection", "pool"])
def test_caller_supplied_connection_or_pool(db_dsn: str, kind: str) -> None:
    if kind == "connection":
        target: object = psycopg.connect(db_dsn)  # not autocommit: the store must not leave it open
    else:
        target = ConnectionPool(db_dsn, min_size=1, max_size=3, open=True)
    try:
        store = DBStateManager(target)  # type: ignore[arg-type]
        ids: list[str] = []

        def worker() -> None:
            for _ in range(5):
                wf = make_workflow()
                store.with_transaction(lambda wf=wf: store.save_workflow(wf))
                store.update_workflow_status(wf.id, WorkflowStatus.RUNNING)
                ids.append(wf.id)

        threads = [threading.Thread(target=worker) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert len(ids) == 20
        assert store.list_workflows({"status": "running"}, limit=100)[1] == 20
        store.close()  # leaves the caller's connection / pool open
        if isinstance(target, psycopg.Connection):
            assert not target.closed
            assert target.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        else:
            with target.connection() as conn:
                conn.execute("SELECT 1")
    finally:
        target.close()  # type: ignore[attr-defined]


def test_close_and_context_manager(db_dsn: str) -> None:
    with DBStateManager(db_dsn) as store:
        store.save_workflow(make_workflow())
    with pytest.raises(InvalidStateError, match="closed"):
        store.list_workflows()


# -- listing: filters are bound, keys allow-listed ------------------------------------------


INJECTIONS = [
    "' OR '1'='1",
    "x'; DROP TABLE orchwf_workflow_instances; --",
    "completed' --",
    '"; DELETE FROM orchwf_workflow_instances; --',
    "%s",
    "%(id)s",
    "{wi}",
    "\\",
    "",
]


@pytest.fixture
def seeded(store: DBStateManager) -> list[WorkflowInstance]:
    rows = [
        make_workflow(workflow_id="orders", business_id="b-1", trace_id="t-1"),
        make_workflow(workflow_id="orders", status=WorkflowStatus.COMPLETED, business_id=""),
        make_workflow(workflow_id="refunds", correlation_id="c'1"),
    ]
    for wf in rows:
        store.save_workflow(wf)
    return rows


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    key=st.sampled_from([k for k in FILTER_KEYS if k != "status"]),
    value=st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00")),
)
@example(key="workflow_id", value=INJECTIONS[0])
@example(key="business_id", value=INJECTIONS[1])
@example(key="trace_id", value=INJECTIONS[3])
@example(key="workflow_id", value="%s")
def test_filter_values_are_bound(
    store: DBStateManager, seeded: list[WorkflowInstance], key: str, value: str
) -> None:
    found, total = store.list_workflows({key: value}, limit=100)
    expected = {wf.id for wf in seeded if (getattr(wf, key) or "") == value}
    assert {wf.id for wf in found} == expected
    assert total == len(expected)
    assert store.list_workflows(limit=100)[1] == len(seeded)  # nothing was dropped or deleted


@pytest.mark.parametrize("value", INJECTIONS)
def test_injection_strings_match_nothing(
    store: DBStateManager, seeded: list[WorkflowInstance], value: str
) -> None:
    for key in ("workflow_id", "trace_id", "correlation_id"):
        found, total = store.list_workflows({key: value})
        expected = [wf for wf in seeded if (getattr(wf, key) or "") == value]
        assert total == len(expected) and len(found) == len(expected)
    assert store.list_workflows()[1] == len(seeded)


def test_filters_match_exactly(store: DBStateManager, seeded: list[WorkflowInstance]) -> None:
    orders, done, refunds = seeded
    assert {w.id for w in store.list_workflows({"workflow_id": "orders"})[0]} == {
        orders.id,
        done.id,
    }
    assert [w.id for w in store.list_workflows({"status": WorkflowStatus.COMPLETED})[0]] == [
        done.id
    ]
    assert [w.id for w in store.list_workflows({"correlation_id": "c'1"})[0]] == [refunds.id]
    both = store.list_workflows({"workflow_id": "orders", "business_id": "b-1"})
    assert [w.id for w in both[0]] == [orders.id] and both[1] == 1
    # "" means "no ID": stored as NULL, matched by IS NULL
    no_business = store.list_workflows({"business_id": ""})[0]
    assert {w.id for w in no_business} == {done.id, refunds.id}


@pytest.mark.parametrize(
    "filters",
    [
        {"status; DROP TABLE x": "completed"},
        {"1=1 OR id": "x"},
        {"id": "x"},
        {"workflow_id = workflow_id --": "x"},
        {"status": "completed'; --"},
        {"workflow_id": 1},
        {"trace_id": "a\x00b"},
        {"trace_id": "\udcff"},
    ],
)
def test_bad_filters_are_validation_errors(store: DBStateManager, filters: dict) -> None:
    with pytest.raises(ValidationError):
        store.list_workflows(filters)


def test_filter_columns_are_the_allow_list() -> None:
    assert set(FILTER_COLUMNS) == set(FILTER_KEYS)


@pytest.mark.parametrize("limit,offset", [(-1, 0), (0, -1), (10_001, 0), (True, 0), (1.5, 0)])
def test_bad_pages_are_validation_errors(store: DBStateManager, limit, offset) -> None:
    with pytest.raises(ValidationError):
        store.list_workflows(limit=limit, offset=offset)


def test_list_order_and_pagination(store: DBStateManager) -> None:
    base = utcnow()
    same_time = [make_workflow(created_at=base) for _ in range(3)]
    older = make_workflow(created_at=base - timedelta(seconds=5))
    newer = make_workflow(created_at=base + timedelta(seconds=5))
    for wf in [older, *same_time, newer]:
        store.save_workflow(wf)
    expected = [newer.id, *sorted((w.id for w in same_time), reverse=True), older.id]
    page, total = store.list_workflows(limit=2)
    assert total == 5 and [w.id for w in page] == expected[:2]
    assert [w.id for w in store.list_workflows(limit=2, offset=2)[0]] == expected[2:4]
    assert [w.id for w in store.list_workflows(limit=2, offset=4)[0]] == expected[4:]
    assert store.list_workflows(limit=2, offset=99) == ([], 5)
    assert all(w.steps == [] for w in store.list_workflows()[0])


# -- values -------------------------------------------------------------------------------


def test_timestamps_come_back_timezone_aware_utc(db_dsn: str) -> None:
    # A session in another time zone must not shift anything.
    dsn = make_conninfo(db_dsn, options="-c TimeZone=America/New_York")
    with DBStateManager(dsn) as store:
        plus9 = timezone(timedelta(hours=9))
        started = datetime(2024, 3, 10, 1, 30, 0, 123456, tzinfo=plus9)
        naive = datetime(2024, 1, 1, 12, 0, 0)  # taken as UTC
        wf = make_workflow(started_at=started, created_at=naive, last_retry_at=started)
        store.save_workflow(wf)
        step = make_step(wf, started_at=naive)
        store.save_step(step)
        store.update_workflow_status(wf.id, WorkflowStatus.COMPLETED)
        store.save_event(WorkflowEvent(id=new_id(), workflow_inst_id=wf.id, event_type="e"))

        got = store.get_workflow(wf.id)
        for value in (
            got.started_at,
            got.created_at,
            got.updated_at,
            got.completed_at,
            got.last_retry_at,
            got.steps[0].started_at,
            store.get_workflow_events(wf.id)[0].timestamp,
        ):
            assert value is not None and value.tzinfo is timezone.utc
        assert got.started_at == started
        assert got.created_at == naive.replace(tzinfo=timezone.utc)
        assert got.steps[0].started_at == naive.replace(tzinfo=timezone.utc)


def test_save_is_a_whole_row_upsert(store: DBStateManager) -> None:
    wf = make_workflow(input={"a": 1})
    store.save_workflow(wf)
    step = make_step(wf, input={"x": 1})
    store.save_step(step)

    wf.output, wf.context = {"out": [1, 2]}, {"ctx": {"n": "ü"}}
    wf.retry_count, wf.current_step_id, wf.error = 2, "s", "oops"
    wf.last_retry_at, wf.priority, wf.queue = utcnow(), 7, "q2"
    wf.status = WorkflowStatus.RETRYING
    store.save_workflow(wf)
    step.input, step.output, step.duration_ms = {"x": 2}, {"y": None}, 1234
    step.retry_count, step.attempts, step.status, step.error = 3, 4, StepStatus.FAILED, "bad"
    store.save_step(step)

    got = store.get_workflow(wf.id)
    for name in (
        "output",
        "context",
        "retry_count",
        "current_step_id",
        "error",
        "last_retry_at",
        "priority",
        "queue",
        "status",
        "input",
    ):
        assert getattr(got, name) == getattr(wf, name), name
    saved = got.steps[0]
    for name in ("input", "output", "duration_ms", "retry_count", "attempts", "status", "error"):
        assert getattr(saved, name) == getattr(step, name), name


def test_status_updates_set_their_timestamps(store: DBStateManager) -> None:
    wf = make_workflow()
    store.save_workflow(wf)
    step = make_step(wf)
    store.save_step(step)

    store.update_step_status(step.id, StepStatus.RUNNING)
    first_start = store.get_step(step.id).started_at
    assert first_start is not None
    store.update_step_status(step.id, StepStatus.RUNNING)
    assert store.get_step(step.id).started_at == first_start  # only if null
    store.update_step_status(step.id, StepStatus.SKIPPED)
    assert store.get_step(step.id).completed_at is not None
    store.update_step_error(step.id, ValueError("bad\x00value"))
    got = store.get_step(step.id)
    assert got.status == StepStatus.FAILED and got.error == "bad\\x00value"

    store.update_workflow_status(wf.id, WorkflowStatus.RUNNING)
    assert store.get_workflow(wf.id).completed_at is None
    store.update_workflow_error(wf.id, RuntimeError())
    got_wf = store.get_workflow(wf.id)
    assert got_wf.status == WorkflowStatus.FAILED and got_wf.error == "RuntimeError"
    assert got_wf.completed_at is not None


def test_a_step_leased_by_a_daemon_worker_cannot_be_moved(store: DBStateManager) -> None:
    wf = make_workflow(run_mode="daemon")
    store.save_workflow(wf)
    step = make_step(wf, status=StepStatus.RUNNING)
    store.save_step(step)
    with store.connection() as conn:
        conn.execute(
            "UPDATE orchwf_live_steps SET lease_token = 7, lease_owner = 'w' WHERE id = %s",
            (uuid.UUID(step.id),),
        )
    with pytest.raises(InvalidStateError, match="leased"):
        store.update_step_status(step.id, StepStatus.COMPLETED)
    with pytest.raises(InvalidStateError, match="leased"):
        store.update_step_error(step.id, "x")
    step.status = StepStatus.CANCELLED
    with pytest.raises(InvalidStateError, match="leased"):
        store.save_step(step)
    store.update_step_output(step.id, {"still": "allowed"})
    assert store.get_step(step.id).status == StepStatus.RUNNING


def test_json_values_round_trip_and_bad_json_is_refused(store: DBStateManager) -> None:
    data = {"s": "é😀'\"\\", "n": [1, 2.5, None, True], "deep": {"a": {"b": []}}, "big": 2**62}
    wf = make_workflow(input=data, metadata={"trace_id": "x"})
    store.save_workflow(wf)
    assert store.get_workflow(wf.id).input == data
    for bad in ({"x": float("nan")}, {"x": "a\x00b"}, {"x": object()}, {1: "int key"}):
        with pytest.raises(ValidationError):
            store.update_workflow_output(wf.id, bad)


# -- not found ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_id", ["nope", "", "'; DROP TABLE x; --", str(uuid.uuid4()), "1" * 100]
)
def test_unknown_ids_are_not_found_errors(store: DBStateManager, bad_id: str) -> None:
    for call in (
        store.get_workflow,
        store.get_workflow_steps,
        store.get_workflow_events,
        lambda i: store.update_workflow_status(i, WorkflowStatus.RUNNING),
        lambda i: store.update_workflow_output(i, {}),
        lambda i: store.update_workflow_error(i, "e"),
        lambda i: store.save_step(StepInstance(id=new_id(), step_id="s", workflow_inst_id=i)),
        lambda i: store.save_event(WorkflowEvent(id=new_id(), workflow_inst_id=i, event_type="e")),
    ):
        with pytest.raises(WorkflowNotFoundError):
            call(bad_id)
    for call in (
        store.get_step,
        lambda i: store.update_step_status(i, StepStatus.RUNNING),
        lambda i: store.update_step_output(i, {}),
        lambda i: store.update_step_error(i, "e"),
    ):
        with pytest.raises(StepNotFoundError):
            call(bad_id)


def test_save_validates_ids_and_statuses(store: DBStateManager) -> None:
    with pytest.raises(ValidationError, match="UUID"):
        store.save_workflow(make_workflow(id="not-a-uuid"))
    wf = make_workflow()
    store.save_workflow(wf)
    with pytest.raises(ValidationError):
        store.update_workflow_status(wf.id, "exploded")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        store.save_step(make_step(wf, id="nope"))


def test_empty_lists_for_a_known_workflow(store: DBStateManager) -> None:
    wf = make_workflow()
    store.save_workflow(wf)
    assert store.get_workflow_steps(wf.id) == []
    assert store.get_workflow_events(wf.id) == []


def test_events_are_ordered_and_idempotent(store: DBStateManager) -> None:
    wf = make_workflow()
    store.save_workflow(wf)
    same = utcnow()
    events = [
        WorkflowEvent(id=new_id(), workflow_inst_id=wf.id, event_type=f"e{i}", timestamp=same)
        for i in range(5)
    ]
    early = WorkflowEvent(
        id=new_id(),
        workflow_inst_id=wf.id,
        event_type="early",
        timestamp=same - timedelta(seconds=1),
    )
    for e in [*events, early]:
        store.save_event(e)
    store.save_event(events[0])  # a retried write
    got = store.get_workflow_events(wf.id)
    assert [e.event_type for e in got] == ["early", "e0", "e1", "e2", "e3", "e4"]


# -- schemas and connections ------------------------------------------------------------------


def test_two_schemas_are_isolated(empty_db_dsn: str) -> None:
    migrate(empty_db_dsn, "tenant_a")
    migrate(empty_db_dsn, "tenant_b")
    with (
        DBStateManager(empty_db_dsn, "tenant_a") as a,
        DBStateManager(empty_db_dsn, "tenant_b") as b,
    ):
        wf = make_workflow()
        a.save_workflow(wf)
        assert a.get_workflow(wf.id).id == wf.id
        with pytest.raises(WorkflowNotFoundError):
            b.get_workflow(wf.id)
        assert b.list_workflows() == ([], 0)


def test_bad_schema_and_target_are_validation_errors(db_dsn: str) -> None:
    with pytest.raises(ValidationError, match="schema"):
        DBStateManager(db_dsn, 'x"; DROP TABLE y; --')
    with pytest.raises(ValidationError):
        DBStateManager(42)  # type: ignore[arg-type]


def test_bad_dsn_error_is_redacted() -> None:
    store = DBStateManager("postgresql://bob:Pa55-w0rd-XYZ@127.0.0.1:1/nodb")
    with pytest.raises(DatabaseConnectionError) as info:
        store.list_workflows()
    assert "Pa55-w0rd-XYZ" not in str(info.value)


# -- fork -----------------------------------------------------------------------------------


def _backend_pid(store: DBStateManager) -> int:
    with store.connection() as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def _in_child(fn) -> str:
    """Run ``fn`` in a forked child; return what it wrote (or the error it raised)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(read_fd)
        try:
            text = str(fn())
        except BaseException as exc:
            text = f"error: {type(exc).__name__}: {exc}"
        os.write(write_fd, text.encode())
        os._exit(0)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() with threads (the pool's)
def test_forked_child_opens_its_own_connections(db_dsn: str) -> None:
    with DBStateManager(db_dsn, min_size=1, max_size=2) as store:
        wf = make_workflow()
        store.save_workflow(wf)
        parent_backends = {_backend_pid(store) for _ in range(3)}

        def child() -> str:
            store.update_workflow_status(wf.id, WorkflowStatus.RUNNING)
            return f"{_backend_pid(store)} {store.get_workflow(wf.id).status.value}"

        out = _in_child(child)
        child_backend, child_status = out.split()
        assert child_status == "running", out
        assert int(child_backend) not in parent_backends
        # the parent's connections were neither used nor closed by the child
        store.update_workflow_status(wf.id, WorkflowStatus.COMPLETED)
        assert store.get_workflow(wf.id).status == WorkflowStatus.COMPLETED
        assert _backend_pid(store) in parent_backends


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_forked_child_refuses_a_callers_connection(db_dsn: str) -> None:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        store = DBStateManager(conn)
        wf = make_workflow()
        store.save_workflow(wf)
        out = _in_child(lambda: store.get_workflow(wf.id).id)
        assert out.startswith("error: InvalidStateError") and "fork" in out
        assert store.get_workflow(wf.id).id == wf.id  # the parent's connection still works
