"""Upgrades in place: a database of an earlier release migrates with its data intact, to
the same catalog as a fresh install, while the previous release's workers keep running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from releases import SIDE_TABLE_SQL, catalog, extract, install_release

from orchwf.db.migrations import migrate, rollback

HERE = Path(__file__).parent
REPO = HERE.parent.parent

pytestmark = pytest.mark.slow


def test_fresh_install_and_upgrades_from_both_releases_give_the_same_catalog(
        make_empty_db, tmp_path: Path) -> None:
    fresh_dsn = make_empty_db()
    migrate(fresh_dsn)
    fresh = catalog(fresh_dsn)
    assert fresh["functions"] and fresh["indexes"]
    for release in ("release-1", "release-2", "release-3"):
        dsn = make_empty_db()
        install_release(dsn, extract(release, tmp_path))
        migrate(dsn)
        upgraded = catalog(dsn)
        for part, rows in fresh.items():
            assert upgraded[part] == rows, f"{release}: {part} differ from a fresh install"


class Daemon:
    """``orchwf worker`` of one release (old: that release's package first on the path)."""

    def __init__(self, dsn: str, release: str, root: Path, log: Path) -> None:
        env = dict(os.environ, PYTHONPATH=f"{root}{os.pathsep}{HERE}", ORCHWF_TEST_APP_DSN=dsn,
                   UPGRADE_RELEASE=release)
        env.pop("NOTIFY_SOCKET", None)
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchwf", "worker", "--app", "upgradeapp", "--dsn", dsn, "--workers", "1",
             "--concurrency", "4", "--metrics-port", "0", "--lease-seconds", "5"],
            cwd=root, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


# The releases whose workers run beside this one's: release 2 (migration 004, before the
# runtime tables) and release 3 (migration 006, the previous release).
OLD_RELEASES = ("release-2", "release-3")


def migrations_since_release_3() -> list[str]:
    """The versions this checkout adds to release 3's 001-006, newest first."""
    versions = {p.name[:3] for p in (REPO / "sql" / "migrations").glob("[0-9][0-9][0-9]_*.sql")}
    return sorted((v for v in versions if v > "006"), reverse=True)


@pytest.fixture(params=OLD_RELEASES)
def old_release(request: pytest.FixtureRequest, empty_db_dsn: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A database at an old release, with the app's workflows registered by that
    release's own code, and the release unpacked."""
    root = extract(request.param, tmp_path)
    install_release(empty_db_dsn, root)
    code = ("import sys, upgradeapp, psycopg; from orchwf.client import register_workflow\n"
            "with psycopg.connect(sys.argv[1]) as c:\n"
            "    [register_workflow(c, d) for d in (upgradeapp.chain, upgradeapp.fan)]\n")
    env = dict(os.environ, PYTHONPATH=f"{root}{os.pathsep}{HERE}")
    subprocess.run([sys.executable, "-c", code, empty_db_dsn], cwd=root, env=env, check=True, timeout=60)
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        conn.execute(SIDE_TABLE_SQL)
    yield empty_db_dsn, root


def enqueue(dsn: str, workflow: str, n: int) -> list[str]:
    """Through the SQL API, which both releases share (as a producer in psql would)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [str(conn.execute("SELECT orchwf_enqueue(%s, %s::jsonb)", (workflow, '{"sleep": 0.02}')).fetchone()[0])
                for _ in range(n)]


def statuses(dsn: str, ids: list[str]) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT id::text, status FROM orchwf_workflow_instances WHERE id = ANY(%s::uuid[])",
                                 (ids,)).fetchall())


def wait_done(dsn: str, ids: list[str], timeout: float = 90) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        got = statuses(dsn, ids)
        if all(s in ("completed", "failed", "cancelled") for s in got.values()) and len(got) == len(ids):
            return got
        if time.monotonic() > deadline:
            pending = {i: s for i, s in got.items() if s not in ("completed", "failed", "cancelled")}
            raise AssertionError(f"{len(pending)} instances not finished: {list(pending.items())[:5]}")
        time.sleep(0.2)


# Every instance with its steps' and events' contents, through the names both releases read.
SNAPSHOT = """
SELECT i.id, i.status, i.output, i.input, i.created_at, i.completed_at,
       (SELECT jsonb_agg(jsonb_build_array(s.step_id, s.status, s.output, s.attempts, s.retry_count) ORDER BY s.step_id)
        FROM orchwf_step_instances s WHERE s.workflow_inst_id = i.id),
       (SELECT jsonb_agg(jsonb_build_array(e.id, e.event_type, e.event_data, e.step_inst_id) ORDER BY e.seq)
        FROM orchwf_workflow_events e WHERE e.workflow_inst_id = i.id)
FROM orchwf_workflow_instances i ORDER BY i.id
"""


def test_an_old_release_database_upgrades_in_place_with_its_data(old_release: tuple[str, Path], tmp_path: Path) -> None:
    dsn, root = old_release
    done = enqueue(dsn, "upgrade_chain", 5) + enqueue(dsn, "upgrade_fan", 5)
    old = Daemon(dsn, "old", root, tmp_path / "old.log")
    try:
        wait_done(dsn, done)
    finally:
        old.stop()
    waiting = enqueue(dsn, "upgrade_chain", 5)  # no worker runs: they wait through the upgrade
    with psycopg.connect(dsn) as conn:
        before = conn.execute(
            SNAPSHOT).fetchall()
    assert len(before) == 15

    migrate(dsn)

    with psycopg.connect(dsn) as conn:
        after = conn.execute(
            SNAPSHOT).fetchall()
    assert after == before
    new = Daemon(dsn, "new", REPO, tmp_path / "new.log")
    try:
        assert set(wait_done(dsn, waiting).values()) == {"completed"}, new.output()
    finally:
        new.stop()
    with psycopg.connect(dsn) as conn:
        ran = conn.execute("SELECT release, count(*) FROM upgrade_exec WHERE instance_id = ANY(%s::uuid[]) "
                           "GROUP BY 1", (waiting,)).fetchall()
    assert dict(ran) == {"new": 5 * 4}  # a, b, and c twice (its first attempt fails)


def test_old_release_workers_keep_working_through_a_rolling_upgrade(old_release: tuple[str, Path], tmp_path: Path) -> None:
    dsn, root = old_release
    old = Daemon(dsn, "old", root, tmp_path / "old.log")
    new: Daemon | None = None
    ids: list[str] = []
    try:
        ids += enqueue(dsn, "upgrade_chain", 10) + enqueue(dsn, "upgrade_fan", 10)
        time.sleep(0.5)  # the old release is mid-way through some of them
        migrate(dsn)  # while it runs
        migrated_at = time.time()
        ids += enqueue(dsn, "upgrade_chain", 10) + enqueue(dsn, "upgrade_fan", 10)
        time.sleep(1.0)  # the old release alone, on the new schema
        new = Daemon(dsn, "new", REPO, tmp_path / "new.log")
        ids += enqueue(dsn, "upgrade_chain", 20) + enqueue(dsn, "upgrade_fan", 20)
        time.sleep(1.0)
        old.stop()  # the rolling deploy's last step: the old release drains and leaves
        ids += enqueue(dsn, "upgrade_chain", 5)
        final = wait_done(dsn, ids)
    finally:
        old.stop()
        if new is not None:
            new.stop()
    failed = {i: s for i, s in final.items() if s != "completed"}
    assert not failed, f"{failed}\n--- old ---\n{old.output()[-3000:]}"
    with psycopg.connect(dsn) as conn:
        runs = conn.execute(
            "SELECT instance_id::text, step_id, attempt, count(*) FROM upgrade_exec "
            "GROUP BY 1, 2, 3 HAVING count(*) > 1").fetchall()
        by_release = dict(conn.execute(
            "SELECT release, count(*) FROM upgrade_exec WHERE at > to_timestamp(%s) GROUP BY 1",
            (migrated_at,)).fetchall())
        compensations = conn.execute("SELECT count(*) FROM upgrade_exec WHERE step_id = 'root' AND attempt > 1"
                                     ).fetchone()[0]
    assert runs == [], "a step attempt ran twice"
    assert by_release.get("old", 0) > 0, "the old release stopped working after the migration"
    assert by_release.get("new", 0) > 0
    assert compensations == 0


def test_a_rollback_to_an_old_release_keeps_the_data_and_the_old_release_runs_on_it(
        old_release: tuple[str, Path], tmp_path: Path) -> None:
    """Up with data, work done on the new layout, then down to the old release's schema:
    every instance, step and event is back where the old release reads it (release 2's
    tables, after 006 down), and the old release's workers finish what waits."""
    dsn, root = old_release
    migrate(dsn)
    new = Daemon(dsn, "new", REPO, tmp_path / "new.log")
    try:
        wait_done(dsn, enqueue(dsn, "upgrade_chain", 5) + enqueue(dsn, "upgrade_fan", 5))
    finally:
        new.stop()
    waiting = enqueue(dsn, "upgrade_chain", 5)  # live instances at the rollback
    with psycopg.connect(dsn) as conn:
        before = conn.execute(SNAPSHOT).fetchall()
    assert len(before) == 15

    # Down to release 3's schema; for release 2 also 006 (release 2 runs on 005's).
    down = migrations_since_release_3() + (["006"] if root.name == "release-2" else [])
    assert rollback(dsn, steps=len(down)) == down

    with psycopg.connect(dsn) as conn:
        kinds = dict(conn.execute(
            "SELECT relname, relkind FROM pg_class WHERE relname IN "
            "('orchwf_workflow_instances', 'orchwf_step_instances', 'orchwf_workflow_events')").fetchall())
        after = conn.execute(SNAPSHOT).fetchall()
    if root.name == "release-2":
        assert set(kinds.values()) == {"r"}, kinds  # tables again, not views
    assert after == before
    old = Daemon(dsn, "old", root, tmp_path / "old.log")
    try:
        assert set(wait_done(dsn, waiting).values()) == {"completed"}, old.output()
    finally:
        old.stop()


# The runtime grants release 3 documented (docs/reliability.md), for its schema "public".
RELEASE_3_RUNTIME_GRANTS = [
    "GRANT USAGE ON SCHEMA public TO {role}",
    "GRANT SELECT ON orchwf_migrations TO {role}",
    "GRANT SELECT, INSERT, UPDATE ON orchwf_workflow_definitions TO {role}",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON orchwf_live_instances TO {role}",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON orchwf_live_steps TO {role}",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON orchwf_ready_steps TO {role}",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON orchwf_running_steps TO {role}",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON orchwf_workers TO {role}",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON orchwf_instance_history TO {role}",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON orchwf_step_history TO {role}",
    "GRANT SELECT, INSERT ON orchwf_event_history TO {role}",
    "GRANT SELECT ON orchwf_partitioning, orchwf_partitions TO {role}",
    "GRANT SELECT ON orchwf_workflow_instances, orchwf_step_instances TO {role}",
    "GRANT SELECT, INSERT ON orchwf_workflow_events TO {role}",
    "GRANT USAGE ON SEQUENCE orchwf_lease_token_seq, orchwf_event_seq TO {role}",
    "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO {role}"
]


def test_a_least_privilege_runtime_role_keeps_working_after_the_upgrade(make_empty_db, tmp_path: Path) -> None:
    """A release-3 install whose daemon runs as a role with exactly release 3's documented
    grants: after `orchwf migrate up` (as the owner) that role still claims (the claim now
    records wait samples), finishes, rolls the trends up, fires schedules and takes
    signals: the migrations grant their new tables to it."""
    import secrets

    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    from orchwf import Client, StepBuilder, WorkflowBuilder, wait_for_signal
    from orchwf.daemon.maintenance.cron import Clock, CronService
    from orchwf.db.queries import ClaimRequest, Queries
    from orchwf.db.rows import StepResult

    dsn = make_empty_db()
    install_release(dsn, extract("release-3", tmp_path))
    role = f"orchwf_rt_{secrets.token_hex(3)}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        for grant in RELEASE_3_RUNTIME_GRANTS:
            conn.execute(grant.format(role=sql.Identifier(role).as_string(conn)))
    try:
        migrate(dsn)
        runtime = make_conninfo(dsn, user=role)
        flow = (WorkflowBuilder("lp_flow", "Least privilege")
                .add_step(StepBuilder("a", "A", lambda ctx, data: {}).build())
                .add_step(wait_for_signal("go", "go").with_dependencies("a").build()).build())
        q = Queries.of("public")
        with Client(runtime) as client:
            client.register_workflow(flow)
            instance = client.enqueue("lp_flow", {})
            with psycopg.connect(runtime, autocommit=True) as conn:
                [step] = q.claim_steps(conn, ClaimRequest("w-lp", ["default"], ["lp_flow"], 5, 30))
                assert q.finish_steps(conn, [StepResult(step.step_inst_id, step.lease_token, "completed", {}, None,
                                                        1)]) == {step.step_inst_id: True}
                assert q.roll_up_stats(conn, 10.0, 86400.0) > 0
                assert conn.execute("SELECT count(*) FROM orchwf_stats_minutes").fetchone()[0] > 0
                client.add_schedule("lp_flow", "* * * * *", misfire="all")
                assert CronService("public", Clock(2.0, time.time() - 130)).run_once(conn).started >= 1
                # the signal completes the waiting step, and with it the instance, in its
                # own transaction: as this role
                client.signal(instance, "go", {"ok": True})
                assert client.get_workflow(instance).status.value == "completed"
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_old_release_workers_obey_a_paused_queue_after_the_upgrade(old_release: tuple[str, Path],
                                                                    tmp_path: Path) -> None:
    """The old release's workers call orchwf_claim_steps by name: once 008's API is in,
    its queue controls hold for them too (docs/schema.md, "Queue controls")."""
    dsn, root = old_release
    migrate(dsn)
    old = Daemon(dsn, "old", root, tmp_path / "old.log")
    try:
        wait_done(dsn, enqueue(dsn, "upgrade_chain", 2))  # the old release is up and claiming
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT orchwf_pause_queue('default')")
        held = enqueue(dsn, "upgrade_chain", 5)
        time.sleep(3.0)  # the old workers poll and are woken by the enqueues' notifications
        assert set(statuses(dsn, held).values()) == {"pending"}, old.output()[-3000:]
        with psycopg.connect(dsn) as conn:
            ran = conn.execute("SELECT count(*) FROM upgrade_exec WHERE instance_id = ANY(%s::uuid[])",
                               (held,)).fetchone()[0]
        assert ran == 0
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT orchwf_resume_queue('default')")
        assert set(wait_done(dsn, held, timeout=60).values()) == {"completed"}, old.output()[-3000:]
    finally:
        old.stop()
