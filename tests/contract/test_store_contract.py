"""The StateManager contract: one suite, run against every store.

The ``postgres`` parameter needs ``orchwf.stores.postgres`` and the ``db_dsn`` fixture
(tests/conftest.py); without them it is skipped with the reason, and the suite still
runs against the in-memory store.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from orchwf import (
    InMemoryStateManager,
    Orchestrator,
    RetryPolicyBuilder,
    StateManager,
    StepBuilder,
    StepInstance,
    StepStatus,
    WorkflowBuilder,
    WorkflowEvent,
    WorkflowInstance,
    WorkflowStatus,
)
from orchwf.errors import StepNotFoundError, ValidationError, WorkflowNotFoundError


@pytest.fixture(params=["memory", "postgres"])
def store(request: pytest.FixtureRequest) -> Iterator[StateManager]:
    if request.param == "memory":
        yield InMemoryStateManager()
        return
    try:
        from orchwf.stores.postgres import DBStateManager
    except ImportError as exc:  # pragma: no cover - before the Postgres store exists
        pytest.skip(f"orchwf.stores.postgres is not available: {exc}")
    try:
        dsn = request.getfixturevalue("db_dsn")
    except pytest.FixtureLookupError:  # pragma: no cover - before tests/conftest.py has it
        pytest.skip("the db_dsn fixture (tests/conftest.py) is not available")
    manager = DBStateManager(dsn)
    try:
        yield manager
    finally:
        manager.close()


UTC = timezone.utc
T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


def new_id() -> str:
    return str(uuid.uuid4())


def make_workflow(**kw: Any) -> WorkflowInstance:
    kw.setdefault("id", new_id())
    kw.setdefault("workflow_id", "wf")
    return WorkflowInstance(**kw)


def make_step(wf: WorkflowInstance, step_id: str = "s", **kw: Any) -> StepInstance:
    return StepInstance(id=kw.pop("id", new_id()), step_id=step_id, workflow_inst_id=wf.id, **kw)


def event(wf: WorkflowInstance, event_type: str, *, step: StepInstance | None = None, ts: datetime | None = None, **data: Any) -> WorkflowEvent:
    return WorkflowEvent(
        id=new_id(), workflow_inst_id=wf.id, event_type=event_type, event_data=data,
        step_inst_id=step.id if step else None, timestamp=ts or datetime.now(UTC),
    )


MISSING = ["00000000-0000-0000-0000-000000000000", "not-a-uuid", ""]


# -- workflows ------------------------------------------------------------------------------


def test_is_a_state_manager(store):
    assert isinstance(store, StateManager)


def test_workflow_round_trip_keeps_every_field(store):
    plus2 = timezone(timedelta(hours=2))
    wf = make_workflow(
        workflow_id="orders",
        status=WorkflowStatus.RUNNING,
        input={"n": 1, "nested": {"list": [1, "two", None, True, 2.5]}, "unicode": "héllo ✓"},
        output={"o": [1, 2]},
        context={"step": {"k": "v"}, "k": "v"},
        current_step_id="s1",
        started_at=T0.astimezone(plus2),  # any time zone; the instant is what counts
        completed_at=T0 + timedelta(seconds=5),
        error="boom",
        retry_count=2,
        last_retry_at=T0 + timedelta(seconds=3),
        metadata={"team": "ops", "n": 3},
        trace_id="trace-1",
        correlation_id="corr-1",
        business_id="order-42",
        created_at=T0,
        priority=7,
    )
    store.save_workflow(wf)
    got = store.get_workflow(wf.id)
    assert got.id == wf.id and got.workflow_id == "orders"
    assert got.status == WorkflowStatus.RUNNING and isinstance(got.status, WorkflowStatus)
    assert got.input == wf.input and got.output == wf.output and got.context == wf.context
    assert got.current_step_id == "s1"
    assert got.started_at == T0 and got.started_at.tzinfo is not None
    assert got.completed_at == T0 + timedelta(seconds=5)
    assert got.error == "boom"
    assert got.retry_count == 2
    assert got.last_retry_at == T0 + timedelta(seconds=3)
    assert got.metadata == {"team": "ops", "n": 3}
    assert (got.trace_id, got.correlation_id, got.business_id) == ("trace-1", "corr-1", "order-42")
    assert got.created_at == T0
    assert got.updated_at is not None and got.updated_at.tzinfo is not None
    assert got.priority == 7
    assert got.steps == []


def test_defaults_round_trip(store):
    wf = make_workflow()
    store.save_workflow(wf)
    got = store.get_workflow(wf.id)
    assert got.status == WorkflowStatus.PENDING
    assert (got.input, got.output, got.context, got.metadata) == ({}, {}, {}, {})
    assert got.completed_at is None and got.error is None and got.last_retry_at is None
    assert (got.trace_id, got.correlation_id, got.business_id) == ("", "", "")


def test_get_returns_a_copy(store):
    wf = make_workflow(input={"a": {"b": 1}})
    store.save_workflow(wf)
    wf.input["a"]["b"] = 2  # the caller's object changes after the save
    got = store.get_workflow(wf.id)
    assert got.input == {"a": {"b": 1}}
    got.input["a"]["b"] = 3
    assert store.get_workflow(wf.id).input == {"a": {"b": 1}}


def test_save_workflow_is_an_upsert(store):
    wf = make_workflow(created_at=T0)
    store.save_workflow(wf)
    wf.status = WorkflowStatus.COMPLETED
    wf.output = {"done": True}
    wf.context = {"c": 1}
    wf.retry_count = 1
    wf.completed_at = T0 + timedelta(minutes=1)
    store.save_workflow(wf)
    got = store.get_workflow(wf.id)
    assert got.status == WorkflowStatus.COMPLETED
    assert got.output == {"done": True} and got.context == {"c": 1}
    assert got.retry_count == 1 and got.completed_at == T0 + timedelta(minutes=1)
    assert store.list_workflows()[1] == 1


@pytest.mark.parametrize("missing", MISSING)
def test_unknown_workflow_ids(store, missing):
    with pytest.raises(WorkflowNotFoundError, match=f"^workflow not found: {missing}$"):
        store.get_workflow(missing)
    with pytest.raises(WorkflowNotFoundError):
        store.update_workflow_status(missing, WorkflowStatus.RUNNING)
    with pytest.raises(WorkflowNotFoundError):
        store.update_workflow_output(missing, {"a": 1})
    with pytest.raises(WorkflowNotFoundError):
        store.update_workflow_error(missing, "x")
    with pytest.raises(WorkflowNotFoundError):
        store.get_workflow_steps(missing)
    with pytest.raises(WorkflowNotFoundError):
        store.get_workflow_events(missing)


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
def test_update_workflow_status_terminal_sets_completed_at(store, status):
    wf = make_workflow(status=WorkflowStatus.RUNNING)
    store.save_workflow(wf)
    before = datetime.now(UTC)
    store.update_workflow_status(wf.id, WorkflowStatus(status))
    got = store.get_workflow(wf.id)
    assert got.status == status
    assert got.completed_at is not None and got.completed_at >= before - timedelta(seconds=1)


@pytest.mark.parametrize("status", ["pending", "running", "retrying"])
def test_update_workflow_status_non_terminal(store, status):
    wf = make_workflow()
    store.save_workflow(wf)
    store.update_workflow_status(wf.id, status)  # a plain string is accepted too
    got = store.get_workflow(wf.id)
    assert got.status == WorkflowStatus(status)
    assert got.completed_at is None


def test_update_workflow_output(store):
    wf = make_workflow(output={"old": 1})
    store.save_workflow(wf)
    store.update_workflow_output(wf.id, {"new": [1, {"x": None}]})
    assert store.get_workflow(wf.id).output == {"new": [1, {"x": None}]}


def test_update_workflow_error_sets_failed(store):
    wf = make_workflow(status=WorkflowStatus.RUNNING)
    store.save_workflow(wf)
    store.update_workflow_error(wf.id, RuntimeError("it broke"))
    got = store.get_workflow(wf.id)
    assert got.status == WorkflowStatus.FAILED and got.error == "it broke" and got.completed_at is not None
    wf2 = make_workflow()
    store.save_workflow(wf2)
    store.update_workflow_error(wf2.id, "plain text")
    assert store.get_workflow(wf2.id).error == "plain text"


@pytest.mark.parametrize("bad", ["not-a-uuid", "", "0000"])
def test_ids_must_be_uuids(store, bad):
    with pytest.raises(ValidationError):
        store.save_workflow(make_workflow(id=bad))
    wf = make_workflow()
    store.save_workflow(wf)
    with pytest.raises(ValidationError):
        store.save_step(make_step(wf, id=bad))
    with pytest.raises(ValidationError):
        store.save_event(WorkflowEvent(id=bad, workflow_inst_id=wf.id, event_type="x"))
    assert store.list_workflows()[1] == 1 and store.get_workflow_steps(wf.id) == []


def test_invalid_json_is_refused(store):
    with pytest.raises(ValidationError):
        store.save_workflow(make_workflow(input={"x": float("nan")}))
    with pytest.raises(ValidationError):
        store.save_workflow(make_workflow(output={"x": {1, 2}}))
    with pytest.raises(ValidationError):
        store.save_workflow(make_workflow(metadata={"x": "nul\x00"}))
    assert store.list_workflows() == ([], 0)
    wf = make_workflow()
    store.save_workflow(wf)
    with pytest.raises(ValidationError):
        store.save_step(make_step(wf, output={"x": float("inf")}))
    with pytest.raises(ValidationError):
        store.update_workflow_output(wf.id, {"x": object()})
    with pytest.raises(ValidationError):
        store.save_event(event(wf, "x", bad={1}))
    assert store.get_workflow(wf.id).output == {}
    assert store.get_workflow_steps(wf.id) == [] and store.get_workflow_events(wf.id) == []


# -- listing --------------------------------------------------------------------------------


@pytest.fixture
def listed(store):
    rows = [
        ("a", "completed", "t1", "c1", "b1"),
        ("a", "failed", "t1", "c2", ""),
        ("b", "completed", "t2", "c1", "b1"),
        ("b", "running", "t2", "c2", "b2"),
        ("a", "completed", "t3", "c3", ""),
    ]
    ids = []
    for i, (wid, status, t, c, b) in enumerate(rows):
        wf = make_workflow(
            workflow_id=wid, status=WorkflowStatus(status), trace_id=t, correlation_id=c,
            business_id=b, created_at=T0 + timedelta(seconds=i),
        )
        store.save_workflow(wf)
        ids.append(wf.id)
    return store, ids


def test_list_newest_first(listed):
    store, ids = listed
    items, total = store.list_workflows()
    assert total == 5
    assert [w.id for w in items] == ids[::-1]
    assert all(w.steps == [] for w in items)


def test_list_ties_on_created_at_break_by_id_desc(store):
    ids = sorted(new_id() for _ in range(4))
    for i in ids:
        store.save_workflow(make_workflow(id=i, created_at=T0))
    assert [w.id for w in store.list_workflows()[0]] == sorted(ids, reverse=True)


@pytest.mark.parametrize(
    "filters, expected",
    [
        ({"workflow_id": "a"}, [0, 1, 4]),
        ({"status": WorkflowStatus.COMPLETED}, [0, 2, 4]),
        ({"status": "completed"}, [0, 2, 4]),
        ({"status": "cancelled"}, []),
        ({"trace_id": "t2"}, [2, 3]),
        ({"correlation_id": "c1"}, [0, 2]),
        ({"business_id": "b1"}, [0, 2]),
        ({"business_id": ""}, [1, 4]),
        ({"workflow_id": "a", "status": "completed", "trace_id": "t3"}, [4]),
        ({"workflow_id": "zzz"}, []),
    ],
)
def test_list_filters(listed, filters, expected):
    store, ids = listed
    items, total = store.list_workflows(filters)
    assert [w.id for w in items] == [ids[i] for i in reversed(expected)]
    assert total == len(expected)


def test_list_pagination_and_total(listed):
    store, ids = listed
    newest = ids[::-1]
    assert [w.id for w in store.list_workflows(None, 2, 0)[0]] == newest[:2]
    page, total = store.list_workflows(None, 2, 2)
    assert [w.id for w in page] == newest[2:4] and total == 5
    page, total = store.list_workflows({"workflow_id": "a"}, 1, 1)
    assert [w.id for w in page] == [ids[1]] and total == 3
    assert store.list_workflows(None, 10, 5) == ([], 5)
    assert store.list_workflows(None, 0, 0) == ([], 5)


@pytest.mark.parametrize(
    "filters, limit, offset",
    [
        ({"name": "x"}, 10, 0),
        ({"status": "nope"}, 10, 0),
        ({"workflow_id": 1}, 10, 0),
        ({"workflow_id = 'a' OR 1=1 --": "x"}, 10, 0),
        (None, -1, 0),
        (None, 10, -1),
    ],
)
def test_list_rejects_bad_arguments(listed, filters, limit, offset):
    store, _ = listed
    with pytest.raises(ValidationError):
        store.list_workflows(filters, limit, offset)


def test_list_filter_values_are_data_not_sql(listed):
    store, _ = listed
    assert store.list_workflows({"workflow_id": "a' OR '1'='1"}) == ([], 0)


# -- steps ----------------------------------------------------------------------------------


def test_step_round_trip_keeps_every_field(store):
    wf = make_workflow()
    store.save_workflow(wf)
    s = make_step(
        wf, "charge",
        status=StepStatus.COMPLETED,
        input={"amount": 10, "dep": {"x": [1]}},
        output={"charge_id": "ch_1"},
        started_at=T0,
        completed_at=T0 + timedelta(milliseconds=1500),
        error=None,
        retry_count=2,
        last_retry_at=T0 + timedelta(seconds=1),
        duration_ms=1500,
        execution_order=3,
        priority=-4,
        attempts=3,
    )
    store.save_step(s)
    got = store.get_step(s.id)
    assert got == s  # every field, dataclass equality
    assert got.status == StepStatus.COMPLETED and isinstance(got.status, StepStatus)
    assert store.get_workflow(wf.id).steps == [s]


def test_steps_come_back_in_execution_order(store):
    wf = make_workflow()
    store.save_workflow(wf)
    steps = [make_step(wf, f"s{o}", execution_order=o) for o in (2, 0, 3, 1)]
    for s in steps:
        store.save_step(s)
    assert [s.step_id for s in store.get_workflow_steps(wf.id)] == ["s0", "s1", "s2", "s3"]
    assert [s.step_id for s in store.get_workflow(wf.id).steps] == ["s0", "s1", "s2", "s3"]
    empty = make_workflow()
    store.save_workflow(empty)
    assert store.get_workflow_steps(empty.id) == []


def test_save_step_is_an_upsert(store):
    wf = make_workflow()
    store.save_workflow(wf)
    s = make_step(wf)
    store.save_step(s)
    s.status = StepStatus.FAILED
    s.error = "nope"
    s.retry_count = 4
    s.input = {"i": 1}
    store.save_step(s)
    got = store.get_workflow_steps(wf.id)
    assert len(got) == 1
    assert (got[0].status, got[0].error, got[0].retry_count, got[0].input) == (StepStatus.FAILED, "nope", 4, {"i": 1})


def test_save_step_of_an_unknown_workflow(store):
    ghost = make_workflow()
    with pytest.raises(WorkflowNotFoundError):
        store.save_step(make_step(ghost))


@pytest.mark.parametrize("missing", MISSING)
def test_unknown_step_ids(store, missing):
    with pytest.raises(StepNotFoundError, match=f"^step not found: {missing}$"):
        store.get_step(missing)
    with pytest.raises(StepNotFoundError):
        store.update_step_status(missing, StepStatus.RUNNING)
    with pytest.raises(StepNotFoundError):
        store.update_step_output(missing, {})
    with pytest.raises(StepNotFoundError):
        store.update_step_error(missing, "x")


def test_update_step_status_side_effects(store):
    wf = make_workflow()
    store.save_workflow(wf)
    s = make_step(wf)
    store.save_step(s)
    store.update_step_status(s.id, StepStatus.RUNNING)
    running = store.get_step(s.id)
    assert running.status == StepStatus.RUNNING
    assert running.started_at is not None and running.completed_at is None
    store.update_step_status(s.id, "retrying")
    assert store.get_step(s.id).started_at == running.started_at  # not moved by later states
    store.update_step_status(s.id, StepStatus.RUNNING)
    assert store.get_step(s.id).started_at == running.started_at
    store.update_step_status(s.id, StepStatus.COMPLETED)
    done = store.get_step(s.id)
    assert done.status == StepStatus.COMPLETED and done.completed_at is not None
    assert done.completed_at >= done.started_at


@pytest.mark.parametrize("status", ["completed", "failed", "skipped", "cancelled"])
def test_update_step_status_terminal_sets_completed_at(store, status):
    wf = make_workflow()
    store.save_workflow(wf)
    s = make_step(wf)
    store.save_step(s)
    store.update_step_status(s.id, StepStatus(status))
    assert store.get_step(s.id).completed_at is not None


def test_update_step_output_and_error(store):
    wf = make_workflow()
    store.save_workflow(wf)
    s = make_step(wf, status=StepStatus.RUNNING)
    store.save_step(s)
    store.update_step_output(s.id, {"o": {"deep": [1]}})
    assert store.get_step(s.id).output == {"o": {"deep": [1]}}
    store.update_step_error(s.id, ValueError("bad value"))
    got = store.get_step(s.id)
    assert (got.status, got.error) == (StepStatus.FAILED, "bad value")
    assert got.completed_at is not None


# -- events ---------------------------------------------------------------------------------


def test_events_round_trip_oldest_first_ties_in_emission_order(store):
    wf = make_workflow()
    store.save_workflow(wf)
    s = make_step(wf)
    store.save_step(s)
    later = event(wf, "later", ts=T0 + timedelta(seconds=1))
    store.save_event(later)
    tied = [event(wf, f"tie{i}", ts=T0, i=i) for i in range(15)]
    for e in tied:
        store.save_event(e)
    first = event(wf, "first", step=s, ts=T0 - timedelta(seconds=1), payload={"x": [1, 2]})
    store.save_event(first)
    got = store.get_workflow_events(wf.id)
    assert [e.event_type for e in got] == ["first"] + [f"tie{i}" for i in range(15)] + ["later"]
    assert got[0] == first  # every field
    assert got[0].step_inst_id == s.id and got[1].step_inst_id is None
    assert got[0].timestamp.tzinfo is not None
    assert got[1].event_data == {"i": 0}


def test_events_are_per_workflow(store):
    one, two = make_workflow(), make_workflow()
    store.save_workflow(one)
    store.save_workflow(two)
    store.save_event(event(one, "a"))
    store.save_event(event(two, "b"))
    assert [e.event_type for e in store.get_workflow_events(one.id)] == ["a"]
    assert [e.event_type for e in store.get_workflow_events(two.id)] == ["b"]
    three = make_workflow()
    store.save_workflow(three)
    assert store.get_workflow_events(three.id) == []


def test_saving_an_event_twice_stores_it_once(store):
    wf = make_workflow()
    store.save_workflow(wf)
    e = event(wf, "once")
    store.save_event(e)
    store.save_event(e)
    assert [x.event_type for x in store.get_workflow_events(wf.id)] == ["once"]


def test_event_of_unknown_workflow_or_step(store):
    ghost = make_workflow()
    with pytest.raises(WorkflowNotFoundError):
        store.save_event(event(ghost, "x"))
    wf = make_workflow()
    store.save_workflow(wf)
    with pytest.raises(StepNotFoundError):
        store.save_event(event(wf, "x", step=make_step(wf)))
    assert store.get_workflow_events(wf.id) == []


# -- transactions ---------------------------------------------------------------------------


def test_with_transaction_commits_and_returns_the_value(store):
    wf = make_workflow()
    s = make_step(wf)

    def work():
        store.save_workflow(wf)
        store.save_step(s)
        store.save_event(event(wf, "e", step=s))
        store.update_workflow_status(wf.id, WorkflowStatus.RUNNING)
        return "result"

    assert store.with_transaction(work) == "result"
    got = store.get_workflow(wf.id)
    assert got.status == WorkflowStatus.RUNNING and [x.id for x in got.steps] == [s.id]
    assert len(store.get_workflow_events(wf.id)) == 1


def test_with_transaction_rolls_back_every_write_and_reraises(store):
    existing = make_workflow(output={"keep": 1})
    store.save_workflow(existing)
    old_step = make_step(existing, "old", status=StepStatus.PENDING)
    store.save_step(old_step)
    store.save_event(event(existing, "before"))
    new = make_workflow()

    class Boom(Exception):
        pass

    def work():
        store.save_workflow(new)
        store.save_step(make_step(new))
        store.save_event(event(new, "e"))
        store.update_workflow_status(existing.id, WorkflowStatus.COMPLETED)
        store.update_workflow_output(existing.id, {"changed": 1})
        store.update_workflow_error(existing.id, "err")
        changed = store.get_step(old_step.id)
        changed.input = {"x": 1}
        store.save_step(changed)
        store.update_step_status(old_step.id, StepStatus.RUNNING)
        store.update_step_output(old_step.id, {"o": 1})
        store.update_step_error(old_step.id, "step err")
        store.save_event(event(existing, "during"))
        assert store.get_workflow(existing.id).status == WorkflowStatus.FAILED  # reads see own writes
        raise Boom("abort")

    with pytest.raises(Boom, match="abort"):
        store.with_transaction(work)
    with pytest.raises(WorkflowNotFoundError):
        store.get_workflow(new.id)
    got = store.get_workflow(existing.id)
    assert got.status == WorkflowStatus.PENDING and got.output == {"keep": 1} and got.error is None
    assert got.completed_at is None
    step = store.get_step(old_step.id)
    assert step == old_step
    assert [e.event_type for e in store.get_workflow_events(existing.id)] == ["before"]
    assert store.list_workflows()[1] == 1


def test_nested_transactions(store):
    outer_wf, inner_ok, inner_bad = make_workflow(), make_workflow(), make_workflow()

    def inner_fails():
        store.save_workflow(inner_bad)
        raise KeyError("inner")

    def outer():
        store.save_workflow(outer_wf)
        store.with_transaction(lambda: store.save_workflow(inner_ok))
        with pytest.raises(KeyError):
            store.with_transaction(inner_fails)
        return "ok"

    assert store.with_transaction(outer) == "ok"
    store.get_workflow(outer_wf.id)
    store.get_workflow(inner_ok.id)
    with pytest.raises(WorkflowNotFoundError):
        store.get_workflow(inner_bad.id)  # only the inner transaction rolled back


def test_outer_rollback_undoes_committed_inner_transactions(store):
    outer_wf, inner_wf = make_workflow(), make_workflow()

    def outer():
        store.save_workflow(outer_wf)
        store.with_transaction(lambda: store.save_workflow(inner_wf))
        raise RuntimeError("outer fails")

    with pytest.raises(RuntimeError):
        store.with_transaction(outer)
    for wf in (outer_wf, inner_wf):
        with pytest.raises(WorkflowNotFoundError):
            store.get_workflow(wf.id)


def test_transactions_from_several_threads(store):
    errors = []

    def worker(i: int) -> None:
        try:
            wf = make_workflow(workflow_id=f"t{i}")

            def work():
                store.save_workflow(wf)
                store.save_step(make_step(wf))
                if i % 2:
                    raise ValueError("odd")

            try:
                store.with_transaction(work)
            except ValueError:
                pass
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    items, total = store.list_workflows()
    assert total == 4 and sorted(w.workflow_id for w in items) == ["t0", "t2", "t4", "t6"]


# -- a whole workflow through the orchestrator ----------------------------------------------


def _orchestrated(store: StateManager) -> tuple[WorkflowInstance, Any, list[str]]:
    compensated: list[str] = []
    attempts = {"n": 0}

    def flaky(ctx, data):
        attempts["n"] += 1
        if ctx.attempt < 3:
            raise ConnectionError("flaky network")
        return {"charged": data["amount"]}

    def reserve(ctx, data):
        return {"reservation": "r-1"}

    orch = Orchestrator(store, async_workers=2)
    try:
        wf = (
            WorkflowBuilder("order", "Order")
            .add_step(StepBuilder("reserve", "Reserve", reserve).with_compensator(lambda c, d: compensated.append("reserve")).build())
            .add_step(
                StepBuilder("charge", "Charge", flaky)
                .with_dependencies("reserve")
                .with_retry_policy(RetryPolicyBuilder().with_max_attempts(3).with_initial_interval(0.001).build())
                .with_compensator(lambda c, d: compensated.append("charge"))
                .build()
            )
            .add_step(StepBuilder("notify", "Notify", lambda c, d: 1 / 0).with_required(False).with_async(True).with_dependencies("charge").build())
            .add_step(StepBuilder("ship", "Ship", lambda c, d: (_ for _ in ()).throw(RuntimeError("no truck"))).with_dependencies("notify").build())
            .build()
        )
        orch.register_workflow(wf)
        result = orch.start_workflow("order", {"amount": 10}, {"trace_id": "tr-1", "business_id": "order-9"})
        events = [e.event_type for e in orch.get_workflow_events(result.workflow_inst.id)]
        return orch.get_workflow_status(result.workflow_inst.id), result, events + compensated
    finally:
        orch.shutdown()


def test_a_whole_workflow_is_persisted(store):
    inst, result, trail = _orchestrated(store)
    assert not result.success
    assert str(result.error) == "step ship failed after 1 attempts: no truck"
    assert inst.status == WorkflowStatus.FAILED
    assert inst.error == "step ship failed after 1 attempts: no truck"
    assert inst.started_at is not None and inst.completed_at is not None and inst.completed_at >= inst.started_at
    assert inst.input == {"amount": 10}
    assert inst.output == {"reservation": "r-1", "charged": 10} == result.output
    assert inst.context == {"reserve": {"reservation": "r-1"}, "reservation": "r-1", "charge": {"charged": 10}, "charged": 10}
    assert (inst.trace_id, inst.business_id) == ("tr-1", "order-9")
    assert inst.metadata == {"trace_id": "tr-1", "business_id": "order-9"}
    steps = {s.step_id: s for s in inst.steps}
    assert [s.step_id for s in inst.steps] == ["reserve", "charge", "notify", "ship"]
    assert steps["reserve"].status == StepStatus.COMPLETED
    assert steps["charge"].status == StepStatus.COMPLETED
    assert steps["charge"].retry_count == 2
    assert steps["charge"].input == {"amount": 10, "reservation": "r-1", "reserve": {"reservation": "r-1"}}
    assert steps["charge"].output == {"charged": 10}
    assert steps["notify"].status == StepStatus.SKIPPED and steps["notify"].error == "division by zero"
    assert steps["ship"].status == StepStatus.FAILED and steps["ship"].error == "no truck"
    for s in inst.steps:
        assert s.started_at is not None and s.completed_at is not None, s.step_id
        assert s.duration_ms >= 0
    assert trail == [
        "workflow.started",
        "step.started", "step.completed",                                  # reserve
        "step.started", "step.attempt_failed", "step.retry",               # charge
        "step.attempt_failed", "step.retry", "step.completed",
        "step.started", "step.failed", "step.skipped",                     # notify
        "step.started", "step.failed",                                     # ship
        "step.compensated", "step.compensated",
        "workflow.failed",
        "charge", "reserve",                                               # compensators, newest first
    ]


def test_the_same_workflow_persists_the_same_way_on_every_store(store):
    """Compare with the in-memory reference, field by field (IDs and times aside)."""

    def shape(inst: WorkflowInstance) -> dict[str, Any]:
        return {
            "status": inst.status, "error": inst.error, "input": inst.input, "output": inst.output,
            "context": inst.context, "metadata": inst.metadata, "retry_count": inst.retry_count,
            "steps": [
                (s.step_id, s.status, s.input, s.output, s.error, s.retry_count, s.execution_order, s.attempts)
                for s in inst.steps
            ],
        }

    mine, _, trail = _orchestrated(store)
    reference, _, reference_trail = _orchestrated(InMemoryStateManager())
    assert shape(mine) == shape(reference)
    assert trail == reference_trail


def test_resume_across_orchestrators_on_the_store(store):
    state = {"fail": True, "a_runs": 0}

    def a(ctx, data):
        state["a_runs"] += 1
        return {"x": 1}

    def b(ctx, data):
        if state["fail"]:
            raise RuntimeError("down")
        return {"y": data["a"]["x"] + 1}  # the stored output of "a", namespaced

    wf = (
        WorkflowBuilder("w", "W")
        .add_step(StepBuilder("a", "A", a).build())
        .add_step(StepBuilder("b", "B", b).with_dependencies("a").build())
        .build()
    )
    first = Orchestrator(store)
    first.register_workflow(wf)
    inst_id = first.start_workflow("w", {}).workflow_inst.id
    first.shutdown()
    state["fail"] = False
    second = Orchestrator(store)
    second.register_workflow(wf)
    try:
        result = second.resume_workflow(inst_id)
    finally:
        second.shutdown()
    assert result.success, result.error
    assert result.output == {"x": 1, "y": 2}
    assert state["a_runs"] == 1
    stored = store.get_workflow(inst_id)
    assert stored.status == WorkflowStatus.COMPLETED and stored.retry_count == 1
    assert stored.output == {"x": 1, "y": 2}
