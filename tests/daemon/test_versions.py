"""Versioned definitions through a rolling deploy: two daemons run versions 1 and 2 of one
workflow side by side; every instance runs only steps of its own version, none fails;
an instance whose version no worker has waits, visibly, until one comes."""

from __future__ import annotations

import json
import time

import psycopg
import pytest
import versionapp_v1
from click.testing import CliRunner
from daemonkit import executions, wait_for

from orchwf import Client
from orchwf.cli.main import cli

pytestmark = pytest.mark.slow


def _hashes(dsn: str, ids: list[str]) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT id::text, definition_hash FROM orchwf_workflow_instances"
                                 " WHERE id = ANY(%s::uuid[])", (ids,)).fetchall())


def _statuses(dsn: str, ids: list[str]) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT id::text, status FROM orchwf_workflow_instances WHERE id = ANY(%s::uuid[])",
                                 (ids,)).fetchall())


def _stats(dsn: str) -> dict:
    result = CliRunner(env={"ORCHWF_DSN": dsn}).invoke(cli, ["stats", "--json"], catch_exceptions=False)
    return json.loads(result.stdout)


def _waiting_versions(dsn: str) -> list[dict]:
    """`orchwf stats`' instances waiting for a version, of the workflow under test: the
    client fixture also registers daemonapp's "scheduled", whose every-minute schedule
    these daemons' supervisors start at a minute boundary and none of their workers runs."""
    return [w for w in _stats(dsn)["waiting_for_a_version"] if w["workflow_id"] == "versioned"]


def test_each_instance_runs_only_its_own_version_through_a_rolling_deploy(client: Client, app_db: str,
                                                                          start_daemon) -> None:
    v1 = start_daemon("--workers", "1", "--concurrency", "4", app="versionapp_v1")
    wait_for(lambda: any(r["workflow_id"] == "versioned" for r in _workflows(app_db)), 30, "version 1 registered")
    first = client.enqueue_many("versioned", [{} for _ in range(30)])      # version 1 is current
    v2 = start_daemon("--workers", "1", "--concurrency", "4", app="versionapp_v2")
    wait_for(lambda: [(r["version"], r["current"]) for r in _workflows(app_db) if r["workflow_id"] == "versioned"]
             == [("1", False), ("2", True)], 30, "version 2 registered")
    second = client.enqueue_many("versioned", [{} for _ in range(30)])     # version 2 is current
    ids = first + second
    wait_for(lambda: set(_statuses(app_db, ids).values()) == {"completed"}, 90, "every instance")
    hashes = _hashes(app_db, ids)
    v1_hash, v2_hash = versionapp_v1.versioned.version_hash, hashes[second[0]]
    assert {hashes[i] for i in first} == {v1_hash} and {hashes[i] for i in second} == {v2_hash} != {v1_hash}
    ran: dict[str, set[str]] = {}
    steps: dict[str, list[str]] = {}
    for instance, step, _attempt, _pid, note in executions(app_db):
        ran.setdefault(instance, set()).add(note)
        steps.setdefault(instance, []).append(step)
    assert all(ran[i] == {"v1"} and sorted(steps[i]) == ["a", "b"] for i in first), "a v1 instance ran v2 code"
    assert all(ran[i] == {"v2"} and sorted(steps[i]) == ["a", "b", "c"] for i in second), "a v2 instance ran v1 code"
    assert _waiting_versions(app_db) == []

    # Version 1's daemon leaves (the deploy ends); an instance of version 1 enqueued now waits.
    v1.stop()
    with psycopg.connect(app_db, autocommit=True) as conn:
        from orchwf.client import register_workflow

        register_workflow(conn, versionapp_v1.versioned)  # e.g. a producer still on the old release
    late = client.enqueue("versioned", {})
    time.sleep(2.0)
    assert _statuses(app_db, [late]) == {late: "pending"}  # neither failed nor run with version 2's code
    [waiting] = _waiting_versions(app_db)
    assert (waiting["workflow_id"], waiting["version_hash"], waiting["instances"]) == ("versioned", v1_hash, 1)
    workflows = CliRunner(env={"ORCHWF_DSN": app_db}).invoke(cli, ["workflows"], catch_exceptions=False).stdout
    assert v1_hash in workflows and v2_hash in workflows
    start_daemon("--workers", "1", app="versionapp_v1")  # a worker with version 1 comes back
    wait_for(lambda: _statuses(app_db, [late]) == {late: "completed"}, 30, "the late version-1 instance")
    assert {note for inst, *_rest, note in executions(app_db) if inst == late} == {"v1"}
    assert v2.proc.poll() is None


def _workflows(dsn: str) -> list[dict]:
    result = CliRunner(env={"ORCHWF_DSN": dsn}).invoke(cli, ["workflows", "--json"], catch_exceptions=False)
    return json.loads(result.stdout)
