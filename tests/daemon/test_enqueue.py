"""The producer API: enqueue on the caller's transaction, batches, idempotency, SQL."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

import orchwf
from orchwf import Client, ValidationError, WorkflowNotFoundError, WorkflowStatus
from orchwf.client import enqueue, enqueue_many


def count_instances(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM orchwf_workflow_instances").fetchone()[0]


def test_enqueue_joins_the_callers_transaction(client: Client, app_db: str) -> None:
    with psycopg.connect(app_db) as conn:
        instance_id = enqueue(conn, "single", {"x": 1})
        assert conn.execute("SELECT count(*) FROM orchwf_workflow_instances WHERE id = %s", (instance_id,)).fetchone()[0] == 1
        conn.rollback()
    assert count_instances(app_db) == 0
    with psycopg.connect(app_db) as conn:
        kept = enqueue(conn, "single", {"x": 2})
        conn.commit()
    inst = client.get_workflow(kept)
    assert inst.status == WorkflowStatus.PENDING and inst.input == {"x": 2}
    assert [s.step_id for s in inst.steps] == ["only"]


def test_enqueue_rolled_back_leaves_no_step_event_or_ready_row(client: Client, app_db: str) -> None:
    with psycopg.connect(app_db) as conn:
        enqueue(conn, "fanin", {})
        conn.rollback()
    with psycopg.connect(app_db) as conn:
        for table in ("orchwf_step_instances", "orchwf_workflow_events", "orchwf_ready_steps"):
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0, table  # noqa: S608


def test_enqueue_many_returns_ids_in_input_order(client: Client) -> None:
    ids = client.enqueue_many("single", [{"n": i} for i in range(50)])
    assert len(ids) == len(set(ids)) == 50
    assert [client.get_workflow(i).input["n"] for i in ids] == list(range(50))


def test_duplicate_idempotency_key_returns_the_existing_instance(client: Client, app_db: str) -> None:
    first = client.enqueue("single", {"v": 1}, idempotency_key="order-42")
    again = client.enqueue("single", {"v": 2}, idempotency_key="order-42")
    assert again == first
    assert client.get_workflow(first).input == {"v": 1}
    batch = client.enqueue_many("single", [{}, {}, {}], idempotency_keys=["order-42", "k2", "k2"])
    assert batch[0] == first and batch[1] == batch[2] != first
    assert count_instances(app_db) == 2


def test_idempotency_is_per_workflow(client: Client) -> None:
    a = client.enqueue("single", {}, idempotency_key="same")
    b = client.enqueue("chain", {}, idempotency_key="same")
    assert a != b


def test_unknown_workflow_is_not_found_and_writes_nothing(client: Client, app_db: str) -> None:
    with pytest.raises(WorkflowNotFoundError, match="workflow not found: nope"):
        client.enqueue("nope", {})
    assert count_instances(app_db) == 0


@pytest.mark.parametrize(
    "bad",
    [[1, 2], "text", 42, {"nan": math.nan}, {"inf": math.inf}, {"nul": "a\x00b"}, {1: "int key"},
     {"set": {1, 2}}, {"surrogate": "\ud800"}],
)
def test_input_that_is_not_a_json_object_is_refused(client: Client, app_db: str, bad: object) -> None:
    with pytest.raises(ValidationError):
        client.enqueue("single", bad)  # type: ignore[arg-type]
    assert count_instances(app_db) == 0


@pytest.mark.parametrize(
    "options",
    [{"priority": 2**40}, {"priority": "high"}, {"queue": ""}, {"queue": "x" * 300},
     {"idempotency_key": ""}, {"run_after": datetime(2030, 1, 1)}, {"metadata": []}],
)
def test_bad_options_are_refused(client: Client, app_db: str, options: dict) -> None:
    with pytest.raises(ValidationError):
        client.enqueue("single", {}, **options)
    assert count_instances(app_db) == 0


def test_metadata_ids_priority_and_queue_are_stored(client: Client, app_db: str) -> None:
    iid = client.enqueue("single", {}, metadata={"trace_id": "t-1", "business_id": "b-9"}, priority=7, queue="urgent")
    inst = client.get_workflow(iid)
    assert (inst.trace_id, inst.business_id, inst.priority, inst.queue) == ("t-1", "b-9", 7, "urgent")
    with psycopg.connect(app_db) as conn:
        assert conn.execute("SELECT queue, priority FROM orchwf_ready_steps").fetchall() == [("urgent", 7)]


def test_sql_function_enqueues_for_non_python_producers(client: Client, app_db: str) -> None:
    with psycopg.connect(app_db) as conn:
        iid = conn.execute("SELECT orchwf_enqueue('chain', '{\"from\": \"psql\"}')").fetchone()[0]
        conn.commit()
        with pytest.raises(psycopg.Error, match="input must be a JSON object"):
            conn.execute("SELECT orchwf_enqueue('chain', '[1]')")
    inst = client.get_workflow(str(iid))
    assert inst.input == {"from": "psql"} and len(inst.steps) == 3


def test_run_after_keeps_the_root_out_of_the_ready_queue(client: Client, app_db: str) -> None:
    later = datetime.now(timezone.utc) + timedelta(hours=1)
    client.enqueue("single", {}, run_after=later)
    with psycopg.connect(app_db) as conn:
        assert conn.execute("SELECT count(*) FROM orchwf_ready_steps").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM orchwf_step_instances WHERE run_after IS NOT NULL").fetchone()[0] == 1


def test_dependents_wait_for_their_parents(client: Client, app_db: str) -> None:
    client.enqueue("fanin", {})
    with psycopg.connect(app_db) as conn:
        ready = conn.execute(
            "SELECT s.step_id FROM orchwf_ready_steps r JOIN orchwf_step_instances s ON s.id = r.step_inst_id"
        ).fetchall()
        counters = dict(conn.execute("SELECT step_id, pending_deps FROM orchwf_step_instances").fetchall())
    assert ready == [("start",)]
    assert counters == {"start": 0, "fan0": 1, "fan1": 1, "fan2": 1, "fan3": 1, "join": 4}


def test_wait_times_out_on_an_instance_nobody_runs(client: Client) -> None:
    iid = client.enqueue("single", {})
    with pytest.raises(TimeoutError):
        client.wait(iid, timeout=0.3)


def test_cancel_of_a_pending_instance(client: Client, app_db: str) -> None:
    iid = client.enqueue("chain", {})
    assert client.cancel_workflow(iid) == "cancelled"
    inst = client.get_workflow(iid)
    assert inst.status == WorkflowStatus.CANCELLED
    assert {s.status.value for s in inst.steps} == {"cancelled"}
    with psycopg.connect(app_db) as conn:
        assert conn.execute("SELECT count(*) FROM orchwf_ready_steps").fetchone()[0] == 0
    assert client.cancel_workflow(iid) == "cancelled"  # idempotent
    with pytest.raises(WorkflowNotFoundError):
        client.cancel_workflow("00000000-0000-0000-0000-000000000000")
    with pytest.raises(WorkflowNotFoundError):
        client.cancel_workflow("not-a-uuid")


def test_register_workflow_is_idempotent_and_tracks_versions(client: Client, app_db: str) -> None:
    import daemonapp

    client.register_workflow(daemonapp.single)
    with psycopg.connect(app_db) as conn:
        row = conn.execute(
            "SELECT version_hash, definition->'steps'->0->>'id' FROM orchwf_workflow_definitions WHERE workflow_id = 'single'"
        ).fetchone()
    assert row == (daemonapp.single.version_hash, "only")


def test_module_level_enqueue_is_exported() -> None:
    assert orchwf.enqueue is enqueue
    assert callable(enqueue_many)


def test_generated_ids_are_unique_time_ordered_uuid7(app_db: str) -> None:
    with psycopg.connect(app_db) as conn:
        before = datetime.now(timezone.utc)
        ids = [r[0] for r in conn.execute("SELECT orchwf_uuid7() FROM generate_series(1, 20000)").fetchall()]
        after = datetime.now(timezone.utc)
    assert len(set(ids)) == len(ids)
    for u in ids[:: 997]:
        assert u.version == 7 and u.variant == "specified in RFC 4122"
        ms = u.int >> 80
        assert before.timestamp() * 1000 - 5 <= ms <= after.timestamp() * 1000 + 5
    # the random bits are not stuck: every one of the 74 takes both values
    rand = [u.int & ((1 << 62) - 1) | (((u.int >> 64) & 0xFFF) << 62) for u in ids]
    assert all(any(r >> b & 1 for r in rand) and not all(r >> b & 1 for r in rand) for b in range(74))
    # time-ordered: sorted by generation time, up to the milliseconds they share
    assert [u.int >> 80 for u in ids] == sorted(u.int >> 80 for u in ids)
