"""Migrations against a real Postgres: up/down/up, schemas, dry runs, concurrency, crashes, CLI."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.conninfo import make_conninfo

from orchwf.cli.main import cli
from orchwf.db.migrations import (
    DatabaseConnectionError,
    MigrationError,
    load_migrations,
    migrate,
    plan,
    rollback,
    status,
)
from orchwf.errors import ValidationError

ALL = [m.version for m in load_migrations()]
TRACKING = {"orchwf_migrations", "orchwf_api_files"}  # the migrator's own tables
ORCHWF_TABLES = {
    "orchwf_workflow_definitions",
    "orchwf_live_instances",
    "orchwf_live_steps",
    "orchwf_ready_steps",
    "orchwf_running_steps",
    "orchwf_instance_history",
    "orchwf_step_history",
    "orchwf_event_history",
    "orchwf_workers",
}


def tables(dsn: str, schema: str = "public") -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)
        ).fetchall()
    return {r[0] for r in rows}


def schema_exists(dsn: str, schema: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone()
    return row is not None


def applied_versions(dsn: str, schema: str = "public") -> list[str]:
    return [s.version for s in status(dsn, schema) if s.applied]


def write_migrations(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(textwrap.dedent(text))
    return directory


# -- the real migrations -------------------------------------------------------------------


def test_files_are_found_and_sorted() -> None:
    found = load_migrations()
    assert found[0].version == "001" and found[0].name == "init"
    assert [m.number for m in found] == sorted(m.number for m in found)
    assert all(m.down_sql for m in found), "every shipped migration needs a .down.sql"


def test_up_down_up(empty_db_dsn: str) -> None:
    assert migrate(empty_db_dsn) == ALL
    assert ORCHWF_TABLES <= tables(empty_db_dsn)
    assert applied_versions(empty_db_dsn) == ALL
    assert migrate(empty_db_dsn) == []  # idempotent

    assert rollback(empty_db_dsn, steps=len(ALL)) == list(reversed(ALL))
    assert tables(empty_db_dsn) == TRACKING
    assert applied_versions(empty_db_dsn) == []

    assert migrate(empty_db_dsn) == ALL
    assert ORCHWF_TABLES <= tables(empty_db_dsn)


def test_rollback_one_step_at_a_time(empty_db_dsn: str) -> None:
    migrate(empty_db_dsn)
    for expected in reversed(ALL):
        assert rollback(empty_db_dsn) == [expected]
    assert rollback(empty_db_dsn) == []


def test_status_and_down_on_a_fresh_database(empty_db_dsn: str) -> None:
    rows = status(empty_db_dsn)
    assert [r.version for r in rows] == ALL
    assert all(r.applied_at is None for r in rows)
    assert rollback(empty_db_dsn) == []
    assert rollback(empty_db_dsn, "brand_new") == []


def test_status_has_timezone_aware_times(empty_db_dsn: str) -> None:
    migrate(empty_db_dsn)
    for row in status(empty_db_dsn):
        assert row.applied_at is not None and row.applied_at.utcoffset() is not None


def test_target_version(empty_db_dsn: str) -> None:
    assert migrate(empty_db_dsn, target="1") == ["001"]
    assert applied_versions(empty_db_dsn) == ["001"]
    with pytest.raises(ValidationError, match="unknown target"):
        migrate(empty_db_dsn, target="999")
    with pytest.raises(ValidationError, match="invalid target"):
        migrate(empty_db_dsn, target="latest")
    assert migrate(empty_db_dsn) == ALL[1:]


def test_dry_run_returns_sql_and_changes_nothing(empty_db_dsn: str) -> None:
    text = plan(empty_db_dsn, "dba_review")
    assert 'SET LOCAL search_path TO "dba_review";' in text
    assert "pg_advisory_xact_lock" in text
    assert 'CREATE TABLE IF NOT EXISTS "dba_review".orchwf_migrations' in text
    # a fresh install: sql/schema.sql in one transaction, then the API files in another
    assert "-- orchwf fresh install (sql/schema.sql)" in text
    assert "CREATE TABLE orchwf_live_instances" in text
    assert "CREATE OR REPLACE FUNCTION orchwf_claim_steps" in text
    assert text.count("BEGIN;") == 2 and text.count("COMMIT;") == 2
    for version in ALL:
        assert (f"INSERT INTO \"dba_review\".orchwf_migrations (version, description) VALUES ('{version}', "  # noqa: S608
                in text)
    assert not schema_exists(empty_db_dsn, "dba_review")
    assert plan(empty_db_dsn, direction="down") == ""  # nothing applied yet

    migrate(empty_db_dsn, "dba_review", target="001")
    text = plan(empty_db_dsn, "dba_review")  # step by step from here, then the API
    assert text.count("BEGIN;") == len(ALL)
    assert "-- orchwf migration 002_daemon (up)" in text and "-- orchwf SQL API" in text
    text = plan(empty_db_dsn, "dba_review", direction="down")
    assert "DROP TABLE IF EXISTS orchwf_workflow_instances;" in text
    assert "DELETE FROM \"dba_review\".orchwf_migrations WHERE version = '001';" in text
    assert applied_versions(empty_db_dsn, "dba_review") == ["001"]


@pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed")
def test_dry_run_output_is_a_runnable_psql_script(empty_db_dsn: str) -> None:
    script = plan(empty_db_dsn, "by_hand")
    subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", empty_db_dsn],
        input=script,
        text=True,
        check=True,
        capture_output=True,
    )
    assert applied_versions(empty_db_dsn, "by_hand") == ALL
    assert ORCHWF_TABLES <= tables(empty_db_dsn, "by_hand")


def test_custom_schemas_coexist(empty_db_dsn: str) -> None:
    assert migrate(empty_db_dsn, "orchwf_a") == ALL
    assert migrate(empty_db_dsn, "orchwf_b") == ALL
    assert ORCHWF_TABLES <= tables(empty_db_dsn, "orchwf_a")
    assert ORCHWF_TABLES <= tables(empty_db_dsn, "orchwf_b")
    assert tables(empty_db_dsn, "public") == set()  # nothing leaks into public

    rollback(empty_db_dsn, "orchwf_a", steps=len(ALL))
    assert tables(empty_db_dsn, "orchwf_a") == TRACKING
    assert ORCHWF_TABLES <= tables(empty_db_dsn, "orchwf_b")
    assert applied_versions(empty_db_dsn, "orchwf_b") == ALL


@pytest.mark.parametrize("bad", ["", "1abc", "a-b", 'x"; DROP TABLE t; --', "a" * 64, "pg_catalog"])
def test_invalid_schema_names_are_rejected(empty_db_dsn: str, bad: str) -> None:
    for call in (migrate, rollback, status, plan):
        with pytest.raises(ValidationError, match="schema name"):
            call(empty_db_dsn, bad)


def test_uses_a_given_connection_and_leaves_it_open(empty_db_dsn: str) -> None:
    with psycopg.connect(empty_db_dsn) as conn:  # not autocommit
        assert migrate(conn) == ALL
        assert not conn.closed
        assert [s.version for s in status(conn) if s.applied] == ALL
        conn.execute("SELECT 1")  # opens a transaction
        with pytest.raises(MigrationError, match="transaction open"):
            rollback(conn)
        conn.rollback()
        assert rollback(conn) == [ALL[-1]]
        assert not conn.closed


def test_a_failing_migration_leaves_the_previous_version(empty_db_dsn: str, tmp_path: Path) -> None:
    mdir = write_migrations(
        tmp_path / "m",
        {
            "001_a.sql": "CREATE TABLE a (x int);",
            "002_b.sql": "CREATE TABLE b (x int);\nSELECT * FROM no_such_table;",
        },
    )
    with pytest.raises(MigrationError, match="002_b failed") as info:
        migrate(empty_db_dsn, migrations_dir=mdir)
    assert "no_such_table" in str(info.value)
    assert applied_versions_in(empty_db_dsn, mdir) == ["001"]
    assert tables(empty_db_dsn) == {"orchwf_migrations", "a"}  # b was rolled back


def applied_versions_in(dsn: str, mdir: Path, schema: str = "public") -> list[str]:
    return [s.version for s in status(dsn, schema, migrations_dir=mdir) if s.applied]


def test_numeric_order_and_file_errors(tmp_path: Path) -> None:
    mdir = write_migrations(
        tmp_path / "ok",
        {"10_c.sql": "", "2_b.sql": "", "1_a.sql": "", "1_a.down.sql": "", "README.md": "x"},
    )
    assert [m.version for m in load_migrations(mdir)] == ["1", "2", "10"]
    assert [m.down_sql is not None for m in load_migrations(mdir)] == [True, False, False]

    dup = write_migrations(tmp_path / "dup", {"1_a.sql": "", "001_b.sql": ""})
    with pytest.raises(MigrationError, match="two migrations with version 1"):
        load_migrations(dup)
    orphan = write_migrations(tmp_path / "orphan", {"1_a.sql": "", "1_x.down.sql": ""})
    with pytest.raises(MigrationError, match="without an up migration"):
        load_migrations(orphan)
    with pytest.raises(MigrationError, match="not found"):
        load_migrations(tmp_path / "missing")


def test_rollback_without_down_script_fails_cleanly(empty_db_dsn: str, tmp_path: Path) -> None:
    mdir = write_migrations(tmp_path / "m", {"001_a.sql": "CREATE TABLE a (x int);"})
    migrate(empty_db_dsn, migrations_dir=mdir)
    with pytest.raises(MigrationError, match="no down script"):
        rollback(empty_db_dsn, migrations_dir=mdir)
    assert "a" in tables(empty_db_dsn)


def test_unknown_applied_version_is_listed_and_blocks_rollback(
    empty_db_dsn: str, tmp_path: Path
) -> None:
    newer = write_migrations(
        tmp_path / "newer",
        {"001_a.sql": "CREATE TABLE a (x int);", "002_b.sql": "CREATE TABLE b (x int);"},
    )
    older = write_migrations(tmp_path / "older", {"001_a.sql": "CREATE TABLE a (x int);"})
    migrate(empty_db_dsn, migrations_dir=newer)
    rows = status(empty_db_dsn, migrations_dir=older)
    assert [(r.version, r.applied) for r in rows] == [("001", True), ("002", True)]
    assert migrate(empty_db_dsn, migrations_dir=older) == []
    with pytest.raises(MigrationError, match="unknown to this version"):
        rollback(empty_db_dsn, migrations_dir=older)


# -- concurrency and crashes ------------------------------------------------------------------


def test_concurrent_migrators_apply_each_migration_once(empty_db_dsn: str, tmp_path: Path) -> None:
    # The slow first migration makes every migrator arrive while another holds the lock.
    # A double apply would fail (CREATE TABLE without IF NOT EXISTS) or double-count.
    mdir = write_migrations(
        tmp_path / "m",
        {
            "001_a.sql": "CREATE TABLE a (x int); INSERT INTO a VALUES (1); SELECT pg_sleep(0.5);",
            "002_b.sql": "CREATE TABLE b (x int); INSERT INTO b VALUES (1);",
            "003_c.sql": "INSERT INTO a VALUES (3);",
        },
    )
    n = 6
    barrier = threading.Barrier(n)
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            results.append(migrate(empty_db_dsn, migrations_dir=mdir))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(v for r in results for v in r) == ["001", "002", "003"]
    with psycopg.connect(empty_db_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM a").fetchone() == (2,)
        assert conn.execute("SELECT count(*) FROM b").fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM orchwf_migrations").fetchone() == (3,)


def test_concurrent_migrators_in_processes_with_the_real_migrations(empty_db_dsn: str) -> None:
    code = "import sys; from orchwf.db.migrations import migrate; print(','.join(migrate(sys.argv[1])))"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, empty_db_dsn], stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    applied = [v for out in outputs if out for v in out.split(",")]
    assert sorted(applied) == ALL
    assert applied_versions(empty_db_dsn) == ALL


def _backend_running(admin: psycopg.Connection, dbname: str, needle: str) -> int | None:
    row = admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND query LIKE %s "
        "AND pid <> pg_backend_pid()",
        (dbname, f"%{needle}%"),
    ).fetchone()
    return row[0] if row else None


def test_killed_mid_migration_leaves_the_previous_version(
    empty_db_dsn: str, tmp_path: Path
) -> None:
    mdir = write_migrations(
        tmp_path / "m",
        {
            "001_a.sql": "CREATE TABLE a (x int);",
            "002_b.sql": "CREATE TABLE b (x int);\nINSERT INTO b VALUES (1);\nSELECT pg_sleep(60);",
        },
    )
    # The server notices the dead client within 0.1 s and aborts its transaction.
    child_dsn = make_conninfo(empty_db_dsn, options="-c client_connection_check_interval=100")
    code = "import sys; from orchwf.db.migrations import migrate; migrate(sys.argv[1], migrations_dir=sys.argv[2])"
    proc = subprocess.Popen([sys.executable, "-c", code, child_dsn, str(mdir)])
    dbname = psycopg.conninfo.conninfo_to_dict(empty_db_dsn)["dbname"]
    with psycopg.connect(empty_db_dsn, autocommit=True) as admin:
        try:
            deadline = time.monotonic() + 30
            pid = None
            while pid is None and time.monotonic() < deadline:
                pid = _backend_running(admin, str(dbname), "pg_sleep(60)")
                time.sleep(0.05)
            assert pid is not None, "the migration never reached pg_sleep"
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        deadline = time.monotonic() + 10
        while _backend_running(admin, str(dbname), "pg_sleep(60)") and time.monotonic() < deadline:
            time.sleep(0.05)
        if _backend_running(admin, str(dbname), "pg_sleep(60)"):  # pragma: no cover - old server
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

    assert applied_versions_in(empty_db_dsn, mdir) == ["001"]
    assert tables(empty_db_dsn) == {"orchwf_migrations", "a"}

    (mdir / "002_b.sql").write_text("CREATE TABLE b (x int);")
    assert migrate(empty_db_dsn, migrations_dir=mdir) == ["002"]


# -- errors and passwords ---------------------------------------------------------------------

SECRET = "hunter2-Sup3rSecret"
BAD_DSNS = [
    f"postgresql://alice:{SECRET}@127.0.0.1:1/nodb",
    f"host=127.0.0.1 port=1 user=alice password={SECRET} dbname=nodb",
    f"host=127.0.0.1 password={SECRET} dbname",  # malformed: libpq echoes the text back
    f"postgresql://alice:{SECRET}@127.0.0.1:1/nodb?sslmode=bogus",
]


@pytest.mark.parametrize("dsn", BAD_DSNS)
def test_connection_errors_never_show_the_password(dsn: str) -> None:
    for call in (migrate, rollback, status, plan):
        with pytest.raises(DatabaseConnectionError) as info:
            call(dsn)
        assert SECRET not in str(info.value)
        assert "cannot connect to" in str(info.value)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("dsn", BAD_DSNS)
def test_cli_connection_errors_never_show_the_password(dsn: str) -> None:
    result = CliRunner().invoke(cli, ["migrate", "up", "--dsn", dsn])
    assert result.exit_code == 1
    assert SECRET not in result.output
    assert SECRET not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot connect to")


# -- CLI --------------------------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


STATUS_LINE = re.compile(r"^(\d+) - (.+): (APPLIED \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+00:00|PENDING)$")


def status_lines(output: str) -> list[tuple[str, str]]:
    out = []
    for line in output.splitlines():
        match = STATUS_LINE.match(line)
        if match:
            out.append((match[1], match[3].split()[0]))
    return out


def test_cli_flags_in_any_order(empty_db_dsn: str) -> None:
    result = run_cli("migrate", "status", "--schema", "cli_a", "--dsn", empty_db_dsn)
    assert result.exit_code == 0, result.output
    assert status_lines(result.output) == [(v, "PENDING") for v in ALL]

    result = run_cli("migrate", "up", "--dsn", empty_db_dsn, "--schema", "cli_a")
    assert result.exit_code == 0, result.output
    assert [f"Applied migration: {v}" in result.output for v in ALL] == [True] * len(ALL)

    result = run_cli("migrate", "up", "--schema", "cli_a", "--dsn", empty_db_dsn)
    assert result.exit_code == 0 and "up to date" in result.output

    result = run_cli("migrate", "--dsn", empty_db_dsn, "status", "--schema", "cli_a")
    assert status_lines(result.output) == [(v, "APPLIED") for v in ALL]

    steps = str(len(ALL))
    result = run_cli(
        "migrate", "down", "--schema", "cli_a", "--dsn", empty_db_dsn, "--steps", steps
    )
    assert result.exit_code == 0, result.output
    assert "Rolled back migration: 001 - init" in result.output
    assert applied_versions(empty_db_dsn, "cli_a") == []


def test_cli_environment_fallback(empty_db_dsn: str) -> None:
    env = {"ORCHWF_DSN": empty_db_dsn, "ORCHWF_SCHEMA": "from_env"}
    result = run_cli("migrate", "up", env=env)
    assert result.exit_code == 0, result.output
    assert applied_versions(empty_db_dsn, "from_env") == ALL
    # an explicit flag beats the environment
    result = run_cli("migrate", "status", "--schema", "other", env=env)
    assert status_lines(result.output) == [(v, "PENDING") for v in ALL]


def test_cli_down_and_status_on_a_fresh_database(empty_db_dsn: str) -> None:
    result = run_cli("migrate", "down", "--dsn", empty_db_dsn)
    assert result.exit_code == 0
    assert "nothing to roll back" in result.output
    result = run_cli("migrate", "status", "--dsn", empty_db_dsn)
    assert result.exit_code == 0
    assert status_lines(result.output) == [(v, "PENDING") for v in ALL]


def test_cli_dry_run_prints_sql_and_changes_nothing(empty_db_dsn: str) -> None:
    result = run_cli("migrate", "up", "--dry-run", "--schema", "dry", "--dsn", empty_db_dsn)
    assert result.exit_code == 0
    assert 'SET LOCAL search_path TO "dry";' in result.output
    assert "CREATE TABLE orchwf_live_steps" in result.output
    assert not schema_exists(empty_db_dsn, "dry")

    result = run_cli("migrate", "status", "--dsn", empty_db_dsn, "--schema", "dry", "--dry-run")
    assert status_lines(result.output) == [(v, "PENDING") for v in ALL]
    assert not schema_exists(empty_db_dsn, "dry")

    result = run_cli("migrate", "--dry-run", "down", "--dsn", empty_db_dsn)
    assert result.exit_code == 0 and "nothing to roll back" in result.output


def test_cli_usage_errors_exit_2(empty_db_dsn: str) -> None:
    result = CliRunner().invoke(
        cli, ["migrate", "up", "--dsn", empty_db_dsn, "--schema", "bad;name"]
    )
    assert result.exit_code == 2
    assert "schema name" in result.stderr
    result = CliRunner().invoke(cli, ["migrate", "sideways"])
    assert result.exit_code == 2
    result = CliRunner().invoke(cli, ["migrate", "down", "--steps", "0", "--dsn", empty_db_dsn])
    assert result.exit_code == 2


def test_cli_migration_failure_is_one_line_exit_1(empty_db_dsn: str) -> None:
    # A table of orchwf's name already there (not a fresh install): 001 fails on it.
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE orchwf_ready_steps (x int)")
    result = CliRunner().invoke(cli, ["migrate", "up", "--dsn", empty_db_dsn])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: migration 001_init failed")
    assert "already exists" in lines[0]
