"""Faults of history's partitions: a range missing when work arrives, ranges made by
several sessions at once, created_at from a skewed clock, retention racing a running
instance, and retention as whole partitions.

History is partitioned by the instance's created_at, one range a day by default, made
ahead of time (orchwf_extend_partitions: maintenance each round, an enqueue that finds
the horizon passed) or on demand (orchwf_store_cover: the in-process store, whose
created_at may be any time). There is no default partition: a row without its range
fails, so the ranges must always be there. tests/daemon/maintenance/test_pruner.py
covers the pruner's straggler case through Pruner.run_once; here the SQL function path.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from storagekit import (
    WORKFLOW,
    add_history,
    attached,
    captured_plans,
    connect,
    days_ago,
    define_workflow,
    drop_range,
    enqueue,
    horizon,
    ranges,
)

from orchwf import (
    DBStateManager,
    StepInstance,
    StepStatus,
    WorkflowEvent,
    WorkflowInstance,
    WorkflowStatus,
)
from orchwf.cli.main import cli
from orchwf.daemon.maintenance.pruner import Pruner
from orchwf.db.queries import Queries
from orchwf.errors import WorkflowNotFoundError
from orchwf.ids import new_id

Q = Queries.of("public")
DAY = timedelta(days=1)


def _today(conn: psycopg.Connection[Any]) -> datetime:
    row = conn.execute("SELECT orchwf_partition_floor(now(), interval '1 day')").fetchone()
    assert row is not None
    return row[0]


def _store_instance(store: DBStateManager, created: datetime, status: WorkflowStatus, *, inst_id: str | None = None,
                    completed: datetime | None = None) -> WorkflowInstance:
    """An instance saved by the in-process store with ``created`` as its created_at (the
    host's clock), with one step and one event."""
    inst = WorkflowInstance(id=inst_id or new_id(created), workflow_id=WORKFLOW, status=status, created_at=created,
                            started_at=created, completed_at=completed)
    store.save_workflow(inst)
    store.save_step(StepInstance(id=new_id(created), step_id="a", workflow_inst_id=inst.id,
                                 status=StepStatus.COMPLETED, output={"x": 1}))
    store.save_event(WorkflowEvent(id=new_id(created), workflow_inst_id=inst.id, event_type="workflow.started"))
    return inst


def _finish(store: DBStateManager, inst: WorkflowInstance, completed: datetime) -> None:
    """The store saves it finished: it moves to history, into its created_at's range."""
    inst.status, inst.completed_at = WorkflowStatus.COMPLETED, completed
    store.save_workflow(inst)


def _assert_whole(store: DBStateManager, inst: WorkflowInstance, status: WorkflowStatus) -> None:
    """Found by its ID, with its step and its event."""
    found = store.get_workflow(inst.id)
    assert found.status == status and found.created_at == inst.created_at
    assert [s.step_id for s in store.get_workflow_steps(inst.id)] == ["a"]
    assert [e.event_type for e in store.get_workflow_events(inst.id)] == ["workflow.started"]


def _where(conn: psycopg.Connection[Any], inst_id: str) -> str:
    """'live', or the history partition holding the instance."""
    row = conn.execute("SELECT 'live' FROM orchwf_live_instances WHERE id = %(id)s UNION ALL"
                       " SELECT tableoid::regclass::text FROM orchwf_instance_history WHERE id = %(id)s",
                       {"id": inst_id}).fetchone()
    assert row is not None, f"{inst_id} is nowhere"
    return row[0]


# --------------------------------------------------------------------------- (a) a missing range


def _maintenance_down_for_days(conn: psycopg.Connection[Any]) -> datetime:
    """The premade ranges from today on used up (dropped) and the horizon in the past, as
    after maintenance was down for days; returns the start of today's range."""
    today = _today(conn)
    for lower, _, suffix in ranges(conn):
        if lower >= today:
            drop_range(conn, suffix)
    conn.execute("UPDATE orchwf_partitioning SET horizon = (SELECT max(upper) FROM orchwf_partitions)")
    return today


def test_an_enqueue_after_maintenance_was_down_for_days_makes_its_range(db_dsn: str) -> None:
    """Maintenance down across day boundaries: the premade ranges are used up (here:
    dropped) and the horizon lies in the past. The enqueue makes today's range itself,
    and nothing of it is lost: instances, steps, ready queue, events."""
    with connect(db_dsn) as conn:
        define_workflow(conn)
        today = _maintenance_down_for_days(conn)
        assert all(upper <= today for _, upper, _ in ranges(conn))

        ids = enqueue(conn, 5)

        assert any(lower == today for lower, _, _ in ranges(conn))
        reach = horizon(conn)
        assert reach is not None and reach >= today + 2 * DAY
        for inst_id in ids:
            row = Q.get_workflow(conn, uuid.UUID(inst_id))
            assert row is not None and row["status"] == "pending"
            assert [e["event_type"] for e in Q.workflow_events(conn, uuid.UUID(inst_id))] == ["workflow.started"]
        ready = conn.execute("SELECT count(*) FROM orchwf_ready_steps WHERE workflow_inst_id = ANY(%s::uuid[])",
                             (ids,)).fetchone()
        assert ready == (5,)


def test_the_maintenance_round_remakes_missing_ranges(db_dsn: str) -> None:
    with connect(db_dsn) as conn:
        today = _maintenance_down_for_days(conn)
        Q.maintain(conn, "sup", True, ["default"], [WORKFLOW])
        premade = {lower for lower, _, _ in ranges(conn)}
        assert {today + i * DAY for i in range(4)} <= premade


def test_the_archive_of_an_instance_beyond_the_premade_ranges_is_kept(db_dsn: str) -> None:
    """An instance created after the last premade range (the store given a created_at ten
    days ahead) gets its range on demand, live and again when it is archived."""
    with DBStateManager(db_dsn) as store, connect(db_dsn) as conn:
        last = max(upper for _, upper, _ in ranges(conn))
        created = last + 10 * DAY + timedelta(hours=5)
        inst = _store_instance(store, created, WorkflowStatus.RUNNING)
        _assert_whole(store, inst, WorkflowStatus.RUNNING)
        _finish(store, inst, datetime.now(timezone.utc))
        _assert_whole(store, inst, WorkflowStatus.COMPLETED)
        suffix = "p" + created.strftime("%Y%m%d") + "t000000"
        assert _where(conn, inst.id) == f"orchwf_instance_history_{suffix}"


def test_a_range_made_far_ahead_does_not_hide_the_days_before_it(db_dsn: str) -> None:
    """The store saves an instance 30 days ahead (a host's clock far off): its range is
    made, but the days between the premade ranges and it are not. The horizon must stay
    where the ranges stop being contiguous, or nothing makes those days once now()
    reaches them and every enqueue fails (seen: "no partition of relation
    orchwf_event_history found for row")."""
    with DBStateManager(db_dsn) as store, connect(db_dsn) as conn:
        define_workflow(conn)
        far = datetime.now(timezone.utc) + 30 * DAY
        _store_instance(store, far, WorkflowStatus.RUNNING)
        reach = horizon(conn)
        assert reach is not None
        covered = ranges(conn)
        at = datetime.now(timezone.utc)
        while at < reach:  # every day up to the horizon has its range
            assert any(lower <= at < upper for lower, upper, _ in covered), f"{at} is not covered below {reach}"
            at += timedelta(hours=6)

        # Days later, the premade ranges are used up (dropped here, as now() cannot move)
        # and a session ensures some range again (here the far one: a no-op but for the horizon).
        today = _today(conn)
        for lower, _, suffix in covered:
            if today <= lower < far - DAY:
                drop_range(conn, suffix)
        conn.execute("SELECT orchwf_ensure_partitions(%s, %s)", (far, far + timedelta(microseconds=1)))
        ids = enqueue(conn, 3)
        assert all(Q.workflow_exists(conn, uuid.UUID(i)) for i in ids)


# --------------------------------------------------------------------------- (b) concurrency


def _together(n: int, work: Any) -> list[BaseException]:
    """Run work(i) in n threads released at once; the errors they raised."""
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            work(i)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    return errors


def _assert_registry_matches_catalog(conn: psycopg.Connection[Any]) -> None:
    """Each range once, without overlap, with its three partitions attached."""
    covered = ranges(conn)
    for (_, upper, _), (lower, _, _) in zip(covered, covered[1:], strict=False):
        assert upper <= lower, f"overlapping ranges: {covered}"
    expected = {f"orchwf_{t}_history_{s}" for _, _, s in covered for t in ("instance", "step", "event")}
    assert attached(conn) == expected


def test_ranges_made_by_several_sessions_at_once(db_dsn: str) -> None:
    """Eight sessions make overlapping ranges 20 to 30 days ahead at the same moment,
    half through orchwf_ensure_partitions and half by saving instances there (the store's
    on-demand range): no error, each range made once, every instance stored."""
    base = datetime.now(timezone.utc) + 20 * DAY
    made: list[WorkflowInstance] = []

    def work(i: int) -> None:
        if i % 2:
            with connect(db_dsn) as conn:
                conn.execute("SELECT orchwf_ensure_partitions(%s, %s)", (base + i * DAY / 2, base + (i + 4) * DAY))
        else:
            with DBStateManager(db_dsn) as store:
                made.append(_store_instance(store, base + i * DAY + timedelta(hours=1), WorkflowStatus.RUNNING))

    errors = _together(8, work)
    assert not errors, errors
    with connect(db_dsn) as conn:
        _assert_registry_matches_catalog(conn)
        assert len(made) == 4 and all(Q.workflow_exists(conn, uuid.UUID(i.id)) for i in made)


def test_enqueues_that_all_find_the_horizon_passed(db_dsn: str) -> None:
    """Maintenance down: six producers enqueue at once, each finds the horizon passed and
    extends the ranges; they serialise on the advisory lock and all succeed."""
    with connect(db_dsn) as conn:
        define_workflow(conn)
        _maintenance_down_for_days(conn)
    ids: list[str] = []

    def work(i: int) -> None:
        with connect(db_dsn) as conn:
            ids.extend(enqueue(conn, 10))

    errors = _together(6, work)
    assert not errors, errors
    with connect(db_dsn) as conn:
        _assert_registry_matches_catalog(conn)
        assert len(ids) == 60
        assert conn.execute("SELECT count(*) FROM orchwf_live_instances").fetchone() == (60,)


# --------------------------------------------------------------------------- (c) clock skew


@pytest.mark.parametrize(("id_offset", "created_offset"), [
    (timedelta(hours=7), timedelta(hours=7)),    # a host's clock 7 hours ahead
    (-timedelta(hours=7), -timedelta(hours=7)),  # 7 hours behind
    (-40 * DAY, -40 * DAY),                      # far behind: a range retention may have dropped
    (timedelta(0), -timedelta(hours=30)),        # an ID from one clock, created_at from another
    (None, timedelta(hours=3)),                  # not a time-ordered ID at all
], ids=["ahead", "behind", "far-behind", "id-and-created-apart", "random-id"])
def test_an_instance_from_a_skewed_clock_is_stored_and_found_by_id(
        db_dsn: str, id_offset: timedelta | None, created_offset: timedelta) -> None:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    inst_id = str(uuid.uuid4()) if id_offset is None else new_id(now + id_offset)
    with DBStateManager(db_dsn) as store, connect(db_dsn) as conn:
        inst = _store_instance(store, now + created_offset, WorkflowStatus.RUNNING, inst_id=inst_id)
        _assert_whole(store, inst, WorkflowStatus.RUNNING)
        _finish(store, inst, now)
        _assert_whole(store, inst, WorkflowStatus.COMPLETED)
        lower = conn.execute("SELECT orchwf_partition_floor(%s, interval '1 day')", (inst.created_at,)).fetchone()
        assert lower is not None
        assert _where(conn, inst.id) == "orchwf_instance_history_p" + lower[0].strftime("%Y%m%dt%H%M%S")


# --------------------------------------------------------------------------- (d) retention


def test_sql_retention_keeps_the_range_of_an_instance_still_running(db_dsn: str) -> None:
    """orchwf_drop_expired_partitions with a retention of one day: a range of three days
    ago holds an instance still running, so it stays (and with it the instances that
    finished beside it); the range of four days ago, all finished, goes. The straggler
    then finishes into its kept range, and goes once that finish is old too."""
    with DBStateManager(db_dsn) as store, connect(db_dsn) as conn:
        gone = _store_instance(store, days_ago(4), WorkflowStatus.RUNNING)
        _finish(store, gone, days_ago(3.5))
        beside = _store_instance(store, days_ago(3), WorkflowStatus.RUNNING)
        _finish(store, beside, days_ago(2.9))
        straggler = _store_instance(store, days_ago(3), WorkflowStatus.RUNNING)

        dropped = conn.execute("SELECT orchwf_drop_expired_partitions(interval '1 day')").fetchone()
        assert dropped is not None and dropped[0] >= 1
        assert not Q.workflow_exists(conn, uuid.UUID(gone.id))
        _assert_whole(store, straggler, WorkflowStatus.RUNNING)
        _assert_whole(store, beside, WorkflowStatus.COMPLETED)

        _finish(store, straggler, datetime.now(timezone.utc))
        assert conn.execute("SELECT orchwf_prune(interval '1 day')").fetchone() == (0,)
        _assert_whole(store, straggler, WorkflowStatus.COMPLETED)

        _finish(store, straggler, days_ago(2))
        conn.execute("SELECT orchwf_prune(interval '1 day')")
        assert not Q.workflow_exists(conn, uuid.UUID(straggler.id))
        assert not Q.workflow_exists(conn, uuid.UUID(beside.id))


# --------------------------------------------------------------------------- (e) whole partitions


def _history_deletes(plans: Any) -> list[str]:
    """Statements that deleted rows of history (a ModifyTable Delete on it)."""
    found: list[str] = []

    def walk(node: dict[str, Any], query: str) -> None:
        if node["Node Type"] == "ModifyTable" and node.get("Operation") == "Delete" \
                and node.get("Relation Name", "").startswith(("orchwf_instance_history", "orchwf_step_history",
                                                              "orchwf_event_history")):
            found.append(query)
        for child in node.get("Plans", ()):
            walk(child, query)

    for plan in plans.plans:
        walk(plan["Plan"], plan.get("Query Text", ""))
    return found


def test_retention_drops_whole_partitions_and_never_deletes(db_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Five days of history (500 instances at noon of each): the pruner (DETACH
    CONCURRENTLY) and orchwf_prune (in one transaction) drop the old ranges' partitions;
    no statement deletes a row of history, and the range kept is untouched. `orchwf prune`
    then finds nothing left to drop."""
    with connect(db_dsn) as conn:
        define_workflow(conn)
        today = _today(conn)
        for day in range(1, 6):
            add_history(conn, today - day * DAY + timedelta(hours=12), 500)
        before = {s for _, _, s in ranges(conn)}
        yesterday = "SELECT count(*) FROM orchwf_instance_history WHERE created_at >= %s"
        kept = conn.execute(yesterday, (today - DAY,)).fetchone()

        with captured_plans(conn) as plans:
            first = Pruner("public", 3 * 86400).run_once(conn)  # days 4 and 5
            second = conn.execute("SELECT orchwf_prune(interval '1 day')").fetchone()  # days 2 and 3
        assert (first.partitions, first.pruned) == (2, 1000)
        assert second == (1000,)
        assert not _history_deletes(plans), _history_deletes(plans)

        dropped = before - {s for _, _, s in ranges(conn)}
        assert len(dropped) == 4
        tables = {r[0] for r in conn.execute("SELECT relname FROM pg_class WHERE relname LIKE 'orchwf_%%_history_p%%'"
                                             " AND relkind = 'r'").fetchall()}
        assert not {f"orchwf_{t}_history_{s}" for s in dropped for t in ("instance", "step", "event")} & tables
        _assert_registry_matches_catalog(conn)
        assert conn.execute(yesterday, (today - DAY,)).fetchone() == kept == (500,)

    monkeypatch.delenv("ORCHWF_SCHEMA", raising=False)
    result = CliRunner(env={"ORCHWF_DSN": db_dsn}).invoke(cli, ["prune", "--older-than", "1d", "--json"],
                                                         catch_exceptions=False)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert json.loads(result.stdout) == {"pruned": 0, "partitions": 0, "older_than_seconds": 86400}


def test_a_resume_racing_retention_keeps_the_instance_whole(db_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The resume lands between retention's question and its detach (injected in the
    pruner's per-range count, which runs between the two): retention's last check, under
    the range's lock, finds the resumed instance and keeps the range."""
    with DBStateManager(db_dsn) as store, connect(db_dsn) as conn:
        created = days_ago(3)
        inst = WorkflowInstance(id=new_id(created), workflow_id=WORKFLOW, status=WorkflowStatus.FAILED,
                                created_at=created, started_at=created, completed_at=days_ago(2.9),
                                run_mode="daemon", error="boom")
        store.save_workflow(inst)
        store.save_step(StepInstance(id=new_id(created), step_id="a", workflow_inst_id=inst.id,
                                     status=StepStatus.FAILED, error="boom"))
        store.save_event(WorkflowEvent(id=new_id(created), workflow_inst_id=inst.id, event_type="workflow.started"))

        p = Pruner("public", 86400)
        count = p.q.partition_rows

        def resume_then_count(c: psycopg.Connection[Any], lower: datetime) -> int:
            with connect(db_dsn) as operator:
                operator.execute("SELECT orchwf_resume_workflow(%s)", (inst.id,))
            return count(c, lower)

        monkeypatch.setattr(p.q, "partition_rows", resume_then_count)
        p.drop_expired(conn, 86400)
        monkeypatch.undo()

        assert store.get_workflow(inst.id).status == WorkflowStatus.RUNNING
        assert [e.event_type for e in store.get_workflow_events(inst.id)] == ["workflow.started", "workflow.resumed"]
        conn.execute("SELECT orchwf_record_event(%s, NULL, 'step.started', '{}')", (inst.id,))


def _failed_instance_days_ago(store: DBStateManager, days: float) -> WorkflowInstance:
    created = days_ago(days)
    inst = WorkflowInstance(id=new_id(created), workflow_id=WORKFLOW, status=WorkflowStatus.FAILED,
                            created_at=created, started_at=created, completed_at=days_ago(days - 0.1),
                            run_mode="daemon", error="boom")
    store.save_workflow(inst)
    store.save_step(StepInstance(id=new_id(created), step_id="a", workflow_inst_id=inst.id,
                                 status=StepStatus.FAILED, error="boom"))
    return inst


def _advisory_waiters(conn: psycopg.Connection[Any]) -> int:
    return conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted").fetchone()[0]


def test_a_resume_during_retentions_drop_waits_and_finds_the_instance_gone(db_dsn: str,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The resume arrives while retention detaches the range: it waits for the range's
    lock (it has read nothing of history yet, so the detach does not wait for it), then
    finds the instance gone and says so. Nothing is left half-moved: no live instance
    whose history partitions were dropped. Fails without the lock: the resume moves the
    instance back while the detach waits for it, and the range is dropped under it."""
    with DBStateManager(db_dsn) as store, connect(db_dsn) as conn, connect(db_dsn) as watcher:
        inst = _failed_instance_days_ago(store, 3)
        p = Pruner("public", 86400)
        detach = p.q.detach_partition
        outcome: dict[str, Any] = {}

        def resume() -> None:
            try:
                with connect(db_dsn) as operator:
                    outcome["status"] = operator.execute("SELECT orchwf_resume_workflow(%s)", (inst.id,)).fetchone()[0]
            except psycopg.Error as exc:
                outcome["error"] = exc

        def detach_with_a_resume_under_way(c: psycopg.Connection[Any], parent: str, child: str, **kw: Any) -> None:
            if "thread" not in outcome:
                outcome["thread"] = threading.Thread(target=resume)
                outcome["thread"].start()
                deadline = time.monotonic() + 10
                while not (_advisory_waiters(watcher) or "status" in outcome or "error" in outcome):
                    assert time.monotonic() < deadline, "the resume neither waited nor ended"
                    time.sleep(0.02)
            detach(c, parent, child, **kw)

        monkeypatch.setattr(p.q, "detach_partition", detach_with_a_resume_under_way)
        result = p.drop_expired(conn, 86400)
        monkeypatch.undo()
        outcome["thread"].join(30)

        assert result.partitions >= 1
        assert "status" not in outcome, outcome
        assert isinstance(outcome.get("error"), psycopg.Error) and "workflow not found" in str(outcome["error"])
        live = conn.execute("SELECT count(*) FROM orchwf_live_instances WHERE id = %s", (inst.id,)).fetchone()[0]
        assert live == 0
        with pytest.raises(WorkflowNotFoundError):
            store.get_workflow(inst.id)



def test_retention_skips_a_range_a_resume_holds_and_drops_it_on_the_next_run(db_dsn: str) -> None:
    """A resume of the range still in its transaction (it holds the range's lock shared):
    retention neither waits for it (it would stall the supervisor's loop) nor drops the
    range under it; the range goes on a later run, once the lock is free. The same for
    retention in one SQL call."""
    with DBStateManager(db_dsn) as store, connect(db_dsn) as conn, connect(db_dsn) as resumer:
        inst = _failed_instance_days_ago(store, 3)
        resumer.execute("BEGIN")
        resumer.execute("SELECT pg_advisory_xact_lock_shared(orchwf_history_range_key(%s))", (days_ago(3),))
        before = {s for _, _, s in ranges(conn)}
        p = Pruner("public", 86400)
        p.drop_expired(conn, 86400)
        assert conn.execute("SELECT orchwf_drop_expired_partitions(interval '1 day')").fetchone()[0] == 0
        assert store.get_workflow(inst.id).status == WorkflowStatus.FAILED  # its range is still there
        resumer.execute("ROLLBACK")
        dropped = p.drop_expired(conn, 86400)
        assert dropped.partitions >= 1
        assert before - {s for _, _, s in ranges(conn)}
        with pytest.raises(WorkflowNotFoundError):
            store.get_workflow(inst.id)


# --------------------------------------------------------------------------- vacuum settings (015)


CHURNING = ("orchwf_live_instances", "orchwf_live_steps", "orchwf_ready_steps", "orchwf_running_steps",
            "orchwf_wait_samples", "orchwf_queues", "orchwf_concurrency_keys", "orchwf_key_slots",
            "orchwf_key_waits")
RARELY_ANALYZED = {"autovacuum_analyze_threshold": "100000", "autovacuum_analyze_scale_factor": "0.5"}


def _options(conn: psycopg.Connection[Any], table: str) -> dict[str, str]:
    row = conn.execute("SELECT coalesce(reloptions, '{}') FROM pg_class WHERE oid = %s::regclass", (table,)).fetchone()
    assert row is not None
    return dict(o.split("=", 1) for o in row[0])


def _history_partitions(conn: psycopg.Connection[Any]) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent IN ('orchwf_instance_history'::regclass,"
        " 'orchwf_step_history'::regclass, 'orchwf_event_history'::regclass) ORDER BY 1")]


def test_churning_tables_are_never_truncated_and_history_is_analyzed_rarely(db_dsn: str) -> None:
    """015: vacuum never truncates a runtime table (its ACCESS EXCLUSIVE lock stalled the
    queue), and every history partition, premade or made on demand later, is analyzed
    rarely; 015 down puts back what 014 had, and 015 up
    again the new settings, on the partitions that exist by then too."""
    from orchwf.db.migrations import migrate, rollback

    with connect(db_dsn) as conn:
        define_workflow(conn)
        today = _maintenance_down_for_days(conn)  # the enqueue below makes today's range on demand
        enqueue(conn, 2)
        assert any(lower == today for lower, _, _ in ranges(conn))
        for table in CHURNING:
            assert _options(conn, table).get("vacuum_truncate") == "false", table
        parts = _history_partitions(conn)
        assert len(parts) >= 3 * 4
        for part in parts:
            options = _options(conn, part)
            assert {k: options.get(k) for k in RARELY_ANALYZED} == RARELY_ANALYZED, part
            assert options["autovacuum_freeze_min_age"] == "0", part

    assert rollback(db_dsn, steps=4) == ["018", "017", "016", "015"]
    with connect(db_dsn) as conn:
        for table in CHURNING:
            assert "vacuum_truncate" not in _options(conn, table), table
        for part in _history_partitions(conn):
            options = _options(conn, part)
            assert not set(RARELY_ANALYZED) & set(options), part
            assert options["autovacuum_freeze_min_age"] == "0", part
        conn.execute("SELECT orchwf_ensure_partitions(now() + interval '30 days', now() + interval '31 days')")
        newest = _history_partitions(conn)
        made_after = [p for p in newest if p not in parts]
        assert made_after and len(made_after) % 3 == 0
        for part in made_after:  # made by 014's function again
            assert not set(RARELY_ANALYZED) & set(_options(conn, part)), part

    assert migrate(db_dsn) == ["015", "016", "017", "018"]
    with connect(db_dsn) as conn:
        for part in _history_partitions(conn):
            options = _options(conn, part)
            assert {k: options.get(k) for k in RARELY_ANALYZED} == RARELY_ANALYZED, part


# --------------------------------------------------------------------------- statistics targets (017)


HISTORY = ("orchwf_instance_history", "orchwf_step_history", "orchwf_event_history")


def _targets(conn: psycopg.Connection[Any], table: str) -> dict[str, int | None]:
    """Each column's statistics target; None: the server's default (-1 before PG 17, NULL after)."""
    return {name: (None if target is None or target < 0 else target) for name, target in conn.execute(
        "SELECT attname, attstattarget FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
        " AND NOT attisdropped", (table,))}


def _parent(part: str) -> str:
    return next(t for t in HISTORY if part.startswith(t + "_"))


def _sample_of_40000_rows(conn: psycopg.Connection[Any], partition: str) -> int:
    """The rows ANALYZE VERBOSE takes as its sample of an instance partition given 40,000
    finished instances (in a transaction rolled back after)."""
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    with conn.transaction(force_rollback=True):
        conn.execute("""
            INSERT INTO orchwf_instance_history (id, workflow_id, status, output, created_at, completed_at)
            SELECT gen_random_uuid(), 'w', 'completed', jsonb_build_object('n', g), p.lower, now()
            FROM generate_series(1, 40000) g, orchwf_partitions p
            WHERE %s = 'orchwf_instance_history_' || p.suffix""", (partition,))
        conn.execute(f"ANALYZE VERBOSE {partition}")  # sql-ok: a partition name from the catalog
    found = [int(m.split(" rows in sample")[0].rsplit(" ", 1)[1]) for m in notices if " rows in sample" in m]
    assert found, notices
    return found[-1]


def test_history_is_analyzed_from_a_small_sample(db_dsn: str) -> None:
    """017: every history partition, premade or made on demand, samples 3,000 rows (a
    target of 10) and skips the documents, where the server's default sampled 30,000 and
    sorted every jsonb document: 1-2.6 s of a core per analyze in the soak. 017 down puts
    the server's default back, on the partitions and on those made after; up again sets
    them on every partition there by then."""
    from orchwf.db.migrations import migrate, rollback

    with connect(db_dsn) as conn:
        define_workflow(conn)
        _maintenance_down_for_days(conn)
        enqueue(conn, 2)  # makes today's range on demand
        parents = {t: _targets(conn, t) for t in HISTORY}
        assert parents["orchwf_instance_history"]["created_at"] == 10
        assert parents["orchwf_instance_history"]["output"] == 0
        assert parents["orchwf_event_history"]["event_data"] == 0
        assert all(v is not None for t in HISTORY for v in parents[t].values())
        parts = _history_partitions(conn)
        assert len(parts) >= 3 * 4
        for part in parts:
            assert _targets(conn, part) == parents[_parent(part)], part
        instances = next(p for p in parts if p.startswith("orchwf_instance_history_"))
        assert _sample_of_40000_rows(conn, instances) == 3000

    assert rollback(db_dsn, steps=2) == ["018", "017"]
    with connect(db_dsn) as conn:
        for table in (*HISTORY, *_history_partitions(conn)):
            assert set(_targets(conn, table).values()) == {None}, table
        conn.execute("SELECT orchwf_ensure_partitions(now() + interval '30 days', now() + interval '31 days')")
        made_after = [p for p in _history_partitions(conn) if p not in parts]
        assert made_after
        for part in made_after:  # made by 016's function again
            assert set(_targets(conn, part).values()) == {None}, part
        assert _sample_of_40000_rows(conn, instances) == 30000

    assert migrate(db_dsn) == ["017", "018"]
    with connect(db_dsn) as conn:
        for part in _history_partitions(conn):
            assert _targets(conn, part) == parents[_parent(part)], part


# --------------------------------------------------------------------------- vacuum in fixed slices (018)


def test_history_is_vacuumed_in_slices_of_a_fixed_size(db_dsn: str) -> None:
    """018: every history partition, premade or made on demand, is vacuumed after 50,000
    new rows whatever its size (a share of it, 5% before, made each vacuum grow with the
    day: the soak's late slow seconds). 018 down puts 5% back, on the partitions and on
    those made after; up again sets 0 on every partition there by then."""
    from orchwf.db.migrations import migrate, rollback

    fixed = {"autovacuum_vacuum_insert_threshold": "50000", "autovacuum_vacuum_insert_scale_factor": "0"}
    with connect(db_dsn) as conn:
        define_workflow(conn)
        _maintenance_down_for_days(conn)
        enqueue(conn, 2)  # makes today's range on demand
        parts = _history_partitions(conn)
        assert len(parts) >= 3 * 4
        for part in parts:
            options = _options(conn, part)
            assert {k: options.get(k) for k in fixed} == fixed, part

    assert rollback(db_dsn) == ["018"]
    with connect(db_dsn) as conn:
        conn.execute("SELECT orchwf_ensure_partitions(now() + interval '30 days', now() + interval '31 days')")
        now_parts = _history_partitions(conn)
        made_after = [p for p in now_parts if p not in parts]
        assert made_after and len(made_after) % 3 == 0
        for part in now_parts:  # those of before, and those 017's function made
            assert _options(conn, part).get("autovacuum_vacuum_insert_scale_factor") == "0.05", part
            assert _options(conn, part).get("autovacuum_vacuum_insert_threshold") == "50000", part

    assert migrate(db_dsn) == ["018"]
    with connect(db_dsn) as conn:
        for part in _history_partitions(conn):
            options = _options(conn, part)
            assert {k: options.get(k) for k in fixed} == fixed, part
        conn.execute("SELECT orchwf_ensure_partitions(now() + interval '40 days', now() + interval '41 days')")
        for part in [p for p in _history_partitions(conn) if p not in now_parts]:
            assert _options(conn, part).get("autovacuum_vacuum_insert_scale_factor") == "0", part
