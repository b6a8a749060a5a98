"""CronService and the Client's schedule API against a real database: one instance per
tick (idempotency key per tick), misfire policies after an outage, pause and resume,
definition schedules kept in step, bad input refused with nothing stored."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from maintkit import SCHEMA, Q, connection

import orchwf
from orchwf import Client, StepBuilder, ValidationError, WorkflowBuilder, WorkflowNotFoundError
from orchwf.client import register_workflow
from orchwf.daemon.maintenance.cron import Clock, CronService


@pytest.fixture(autouse=True)
def _only_these_schedules(client: Client) -> None:
    """daemonapp's "scheduled" workflow brings a schedule of its own: not here."""
    client.remove_schedule("scheduled-every-minute")


def ahead(seconds: float) -> Clock:
    """A clock ``seconds`` ahead of the database's (it runs at double speed from an
    anchor that far back: enough for one test)."""
    return Clock(2.0, time.time() - seconds)


def _of_single(client: Client) -> list[Any]:
    """The schedules of the workflow these tests use (daemonapp's "scheduled" has its own)."""
    return [s for s in client.list_schedules() if s.workflow_id == "single"]


def _instances(conn: psycopg.Connection[Any], name: str) -> list[tuple[str, dict[str, Any]]]:
    return conn.execute("SELECT idempotency_key, input FROM orchwf_workflow_instances"
                        " WHERE metadata->>'orchwf_schedule' = %s ORDER BY idempotency_key", (name,)).fetchall()


def test_add_list_pause_resume_remove(client: Client, app_db: str) -> None:
    name = client.add_schedule("single", "*/5 * * * *", timezone="Europe/Berlin", input={"n": 1})
    assert name == "single */5 * * * *"
    [row] = _of_single(client)
    assert (row.name, row.workflow_id, row.timezone, row.input, row.misfire, row.source, row.paused) == (
        name, "single", "Europe/Berlin", {"n": 1}, "once", "client", False)
    assert row.next_run_at.minute % 5 == 0 and row.last_run_at is None
    client.pause_schedule(name)
    assert _of_single(client)[0].paused
    client.resume_schedule(name)
    assert not _of_single(client)[0].paused
    client.add_schedule("single", "@hourly", name=name, misfire="all")  # replaced by name
    [row] = _of_single(client)
    assert (row.cron, row.misfire) == ("@hourly", "all") and row.next_run_at.minute == 0
    client.remove_schedule(name)
    assert _of_single(client) == []
    with pytest.raises(KeyError, match="schedule not found"):
        client.remove_schedule(name)
    with pytest.raises(KeyError):
        client.pause_schedule("nope")


@pytest.mark.parametrize(("args", "kwargs", "error", "message"), [
    (("single", "* * *"), {}, ValidationError, "has 3 fields"),
    (("single", "0 0 * * *"), {"timezone": "Moon/Base"}, ValidationError, "unknown time zone"),
    (("single", "@daily"), {"misfire": "never"}, ValidationError, "misfire must be"),
    (("single", "@daily"), {"input": {"bad": "\x00"}}, ValidationError, "NUL"),
    (("not_registered", "@daily"), {}, WorkflowNotFoundError, "not_registered"),
])
def test_bad_input_is_refused_with_nothing_stored(client: Client, args: tuple, kwargs: dict,
                                                  error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        client.add_schedule(*args, **kwargs)
    assert _of_single(client) == []


def test_each_tick_starts_one_instance_with_its_key(client: Client, app_db: str) -> None:
    name = client.add_schedule("single", "* * * * *", input={"from": "cron"}, misfire="all")
    service = CronService(SCHEMA, ahead(150))  # two or three ticks are due
    with connection(app_db) as conn:
        first = service.run_once(conn)
        assert first.started in (2, 3) and first.fired == 1
        again = service.run_once(conn)
        assert again.started == 0 and again.next_in is not None and 0 < again.next_in <= 60
        got = _instances(conn, name)
    assert len(got) == first.started and all(data == {"from": "cron"} for _, data in got)
    [row] = _of_single(client)
    assert row.last_run_at is not None and row.last_instance_id is not None and row.last_error is None
    n = first.started
    assert [k for k, _ in got] == [f"cron:{name}:{(row.last_run_at - timedelta(minutes=n - 1 - i)):%Y-%m-%dT%H:%MZ}"
                                   for i in range(n)]  # consecutive minutes, one instance each


@pytest.mark.parametrize(("misfire", "started"), [("once", 1), ("all", 5), ("skip", 0)])
def test_missed_ticks_follow_the_misfire_policy(client: Client, app_db: str, misfire: str, started: int) -> None:
    """Five hourly ticks missed (no daemon ran for five hours; the last one half an hour
    ago): one run, each, or none."""
    with connection(app_db) as conn:
        now = Q.db_now(conn)
        name = client.add_schedule("single", f"{(now.minute + 30) % 60} * * * *", misfire=misfire)
        conn.execute("UPDATE orchwf_schedules SET next_run_at = now() - interval '5 hours' WHERE name = %s", (name,))
        result = CronService(SCHEMA, Clock()).run_once(conn)
        assert result.started == started
        assert len(_instances(conn, name)) == started
        [row] = _of_single(client)
        assert timedelta(minutes=29) < row.next_run_at - now <= timedelta(minutes=31)


def test_a_paused_schedule_does_not_fire_and_resumes_from_now(client: Client, app_db: str) -> None:
    name = client.add_schedule("single", "* * * * *", misfire="all")
    client.pause_schedule(name)
    service = CronService(SCHEMA, ahead(300))
    with connection(app_db) as conn:
        assert service.run_once(conn).started == 0
        client.resume_schedule(name)  # ticks passed while paused are skipped
        assert service.run_once(conn).started <= 5
        assert len(_instances(conn, name)) <= 5


def test_a_schedule_whose_workflow_is_gone_records_the_error(client: Client, app_db: str) -> None:
    name = client.add_schedule("single", "* * * * *")
    with connection(app_db) as conn:
        conn.execute("UPDATE orchwf_schedules SET workflow_id = 'deleted_workflow' WHERE name = %s", (name,))
        result = CronService(SCHEMA, ahead(90)).run_once(conn)
        assert result.started == 0 and result.fired == 1
    [row] = client.list_schedules()
    assert row.last_error is not None and "deleted_workflow" in row.last_error and row.last_run_at is None
    with connection(app_db) as conn:  # it waits for its next tick, not retried in a loop
        assert row.next_run_at > ahead(90).now(Q.db_now(conn))


def test_two_hosts_at_once_start_each_tick_once(client: Client, app_db: str) -> None:
    """One host holds the due schedule's lock; the other skips it, then finds it moved on."""
    name = client.add_schedule("single", "* * * * *", misfire="all")
    clock = ahead(200)
    with connection(app_db) as one, connection(app_db) as two:
        with one.transaction():
            rows = Q.due_schedules(one, clock.now(Q.db_now(one)), 10)
            assert [r.name for r in rows] == [name]
            assert CronService(SCHEMA, clock).run_once(two).started == 0  # locked: skipped
        first = CronService(SCHEMA, clock).run_once(two)
        second = CronService(SCHEMA, clock).run_once(one)
        assert first.started >= 3 and second.started == 0
        keys = [k for k, _ in _instances(one, name)]
    assert len(keys) == len(set(keys)) == first.started


def _reporting(*schedules: tuple[str, dict[str, Any]]) -> orchwf.WorkflowDefinition:
    builder = WorkflowBuilder("single", "One step").add_step(
        StepBuilder("only", "Only", lambda ctx, data: {}).build())
    for cron, options in schedules:
        builder.with_schedule(cron, **options)
    return builder.build()


def test_definition_schedules_follow_the_registered_definition(client: Client, app_db: str) -> None:
    client.add_schedule("single", "@daily", name="by-hand")
    with psycopg.connect(app_db, autocommit=True) as conn:
        register_workflow(conn, _reporting(("*/10 * * * *", {}), ("@hourly", {"name": "hourly", "input": {"a": 1}})))
        rows = {r.name: r for r in _of_single(client)}
        assert set(rows) == {"by-hand", "single */10 * * * *", "hourly"}
        assert rows["hourly"].source == "definition" and rows["hourly"].input == {"a": 1}
        register_workflow(conn, _reporting(("*/10 * * * *", {}), ("@hourly", {"name": "hourly", "input": {"a": 1}})))
        again = {r.name: r for r in _of_single(client)}
        assert again["hourly"].next_run_at == rows["hourly"].next_run_at  # unchanged: kept
        register_workflow(conn, _reporting(("@hourly", {"name": "hourly", "input": {"a": 2}})))
        last = {r.name: r for r in _of_single(client)}
    assert set(last) == {"by-hand", "hourly"}  # the dropped one went; the Client's stays
    assert last["hourly"].input == {"a": 2}
