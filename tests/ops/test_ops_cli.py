"""The operator CLI: through click's runner (fast, every path) and as real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from opskit import Daemon, query, run_one, wait_for

from orchwf import Client
from orchwf.cli.main import cli
from orchwf.cli.ops_commands import age, parse_duration


@pytest.fixture
def orchwf(ops_db: str, monkeypatch):
    """orchwf(*args) -> click Result, with ORCHWF_DSN pointing at the test database."""
    monkeypatch.delenv("ORCHWF_SCHEMA", raising=False)
    runner = CliRunner(env={"ORCHWF_DSN": ops_db})

    def invoke(*args: str, input: str | None = None):
        return runner.invoke(cli, list(args), input=input, catch_exceptions=False)

    return invoke


def ok(result) -> str:
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout


def failed(result, code: int = 1) -> str:
    """The one error line of a failed command (exit code ``code``)."""
    assert result.exit_code == code, (result.stdout, result.stderr)
    if code == 1:
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert "Traceback" not in result.stderr
        return lines[0]
    return result.stderr


def failed_instance(dsn: str) -> str:
    """An ops_fail instance whose 'boom' step failed (its 'after' step cancelled)."""
    with Client(dsn) as client:
        iid = client.enqueue("ops_fail", {})
    assert run_one(dsn, "completed", workflows=("ops_fail",)) == (iid, "first")
    assert run_one(dsn, "failed", workflows=("ops_fail",)) == (iid, "boom")
    return iid


# -- enqueue -----------------------------------------------------------------------------------


def test_enqueue_inline_file_and_stdin(orchwf, ops_db: str, tmp_path: Path) -> None:
    iid = ok(orchwf("enqueue", "ops_chain", "--input", '{"n": 1}')).strip()
    doc = tmp_path / "input.json"
    doc.write_text('{"n": 2}')
    from_file = json.loads(ok(orchwf("enqueue", "ops_chain", "--input", f"@{doc}", "--json")))
    from_stdin = ok(orchwf("enqueue", "ops_chain", "--input", "-", input='{"n": 3}')).strip()
    rows = dict(query(ops_db, "SELECT id::text, input->>'n' FROM orchwf_workflow_instances"))
    assert rows == {iid: "1", from_file["id"]: "2", from_stdin: "3"}
    assert from_file["workflow_id"] == "ops_chain"


def test_enqueue_options(orchwf, ops_db: str) -> None:
    first = ok(orchwf("enqueue", "ops_chain", "--queue", "bulk", "--priority", "5", "--idempotency-key", "k1",
                      "--metadata", '{"trace_id": "t-1"}')).strip()
    again = ok(orchwf("enqueue", "ops_chain", "--idempotency-key", "k1")).strip()
    assert again == first  # idempotent
    assert query(ops_db, "SELECT queue, priority, trace_id FROM orchwf_workflow_instances") == [("bulk", 5, "t-1")]


@pytest.mark.parametrize("args, message", [
    (["--input", "{nope"], "not valid JSON"),
    (["--input", "[1, 2]"], "must be a JSON object"),
    (["--input", "@/nonexistent/input.json"], "cannot read"),
    (["--priority", "high"], "not a valid integer"),
])
def test_enqueue_usage_errors_exit_2(orchwf, args: list[str], message: str) -> None:
    assert message in failed(orchwf("enqueue", "ops_chain", *args), code=2)


def test_enqueue_unknown_workflow_is_one_line(orchwf) -> None:
    assert failed(orchwf("enqueue", "no_such_flow")) == "error: workflow not found: no_such_flow"


# -- list, show --------------------------------------------------------------------------------


def test_list_filters_paging_and_json(orchwf, ops_db: str) -> None:
    with Client(ops_db) as client:
        chains = client.enqueue_many("ops_chain", [{}] * 3, metadata={"trace_id": "tr-9"})
        client.enqueue("ops_slow", {})
    bad = failed_instance(ops_db)
    doc = json.loads(ok(orchwf("list", "--json")))
    assert doc["total"] == 5 and len(doc["workflows"]) == 5
    assert json.loads(ok(orchwf("list", "--workflow", "ops_chain", "--json")))["total"] == 3
    failed_only = json.loads(ok(orchwf("list", "--status", "failed", "--json")))
    assert [w["id"] for w in failed_only["workflows"]] == [bad]
    assert "step boom failed" in failed_only["workflows"][0]["error"]
    traced = json.loads(ok(orchwf("list", "--trace-id", "tr-9", "--json")))
    assert sorted(w["id"] for w in traced["workflows"]) == sorted(chains)
    page = json.loads(ok(orchwf("list", "--limit", "2", "--offset", "1", "--json")))
    assert (page["total"], len(page["workflows"]), page["offset"]) == (5, 2, 1)
    text = ok(orchwf("list", "--limit", "2"))
    assert text.splitlines()[0].split() == ["ID", "WORKFLOW", "STATUS", "QUEUE", "CREATED", "TOOK", "ERROR"]
    assert text.splitlines()[-1] == "-- 1-2 of 5"
    assert ok(orchwf("list", "--workflow", "nothing")).strip() == "no workflow instances match"


def test_list_usage_errors(orchwf) -> None:
    assert "Invalid value for '--status'" in failed(orchwf("list", "--status", "exploded"), code=2)
    assert "Invalid value for '--limit'" in failed(orchwf("list", "--limit", "0"), code=2)
    assert "invalid schema name" in failed(orchwf("list", "--schema", "no-such schema"), code=2)


def test_show_a_failed_instance_as_a_tree_and_as_json(orchwf, ops_db: str) -> None:
    iid = failed_instance(ops_db)
    text = ok(orchwf("show", iid))
    lines = text.splitlines()
    assert lines[0] == f"workflow {iid}  ops_fail  FAILED"
    assert any(line.strip() == "error       step boom failed after 1 attempts: boom" for line in lines)
    assert any(line.startswith("  ├── first  completed") for line in lines)
    assert any(line.startswith("  ├── boom   failed     attempts 1/1") for line in lines)
    assert any(line.startswith("  └── after  cancelled") for line in lines)
    assert "error: boom" in text and "step.failed" in text and "workflow.failed" in text
    doc = json.loads(ok(orchwf("show", iid, "--json")))
    assert doc["status"] == "failed" and doc["workflow_id"] == "ops_fail"
    steps = {s["step_id"]: s for s in doc["steps"]}
    assert steps["boom"]["status"] == "failed" and steps["boom"]["error"] == "boom"
    assert steps["boom"]["attempts"] == 1 and steps["boom"]["max_attempts"] == 1
    assert [e["type"] for e in steps["boom"]["events"]] == ["step.started", "step.failed"]
    assert [e["type"] for e in doc["events"]] == ["workflow.started", "workflow.failed"]


def test_show_a_running_step_names_its_worker(orchwf, ops_db: str) -> None:
    with Client(ops_db) as client:
        iid = client.enqueue("ops_slow", {})
    query(ops_db, "SELECT * FROM orchwf_claim_steps('host:42:1', '{default}', '{ops_slow}', 1, 30, false)")
    text = ok(orchwf("show", iid))
    assert "running on host:42:1, lease expires in" in text


def test_show_unknown_or_malformed_ids(orchwf) -> None:
    assert failed(orchwf("show", "42")) == "error: workflow not found: 42"
    missing = "00000000-0000-0000-0000-000000000000"
    assert failed(orchwf("show", missing)) == f"error: workflow not found: {missing}"


# -- cancel, resume, retry-step ------------------------------------------------------------------


def test_cancel_and_resume(orchwf, ops_db: str) -> None:
    with Client(ops_db) as client:
        iid = client.enqueue("ops_chain", {})
    assert ok(orchwf("cancel", iid)).strip() == f"cancelled {iid}: now cancelled"
    assert json.loads(ok(orchwf("cancel", iid, "--json"))) == {"id": iid, "status": "cancelled"}  # idempotent
    assert query(ops_db, "SELECT count(*) FROM orchwf_ready_steps")[0][0] == 0
    assert ok(orchwf("resume", iid)).strip() == f"resumed {iid}: now running"
    assert query(ops_db, "SELECT count(*) FROM orchwf_ready_steps")[0][0] == 1
    assert "only failed or cancelled instances can be resumed" in failed(orchwf("resume", iid))


def test_cancel_a_finished_instance_fails(orchwf, ops_db: str) -> None:
    iid = failed_instance(ops_db)
    assert failed(orchwf("cancel", iid)) == f"error: workflow {iid} is already failed"
    assert failed(orchwf("cancel", "nope")) == "error: workflow not found: nope"


def test_retry_step_reruns_the_failed_step_and_what_was_cancelled(orchwf, ops_db: str) -> None:
    iid = failed_instance(ops_db)
    doc = json.loads(ok(orchwf("retry-step", iid, "boom", "--json")))
    assert doc == {"id": iid, "status": "running", "step_id": "boom"}
    steps = dict(query(ops_db, "SELECT step_id, status FROM orchwf_step_instances WHERE workflow_inst_id = %s", (iid,)))
    assert steps == {"first": "completed", "boom": "pending", "after": "pending"}
    ready = query(ops_db, "SELECT s.step_id FROM orchwf_ready_steps r JOIN orchwf_step_instances s ON s.id = r.step_inst_id")
    assert ready == [("boom",)]  # 'after' waits for it
    assert run_one(ops_db, "completed") == (iid, "boom")
    assert run_one(ops_db, "completed") == (iid, "after")
    status, output = query(ops_db, "SELECT status, output FROM orchwf_workflow_instances WHERE id = %s", (iid,))[0]
    assert status == "completed" and output == {"first": True, "boom": True, "after": True}
    events = [e for (e,) in query(ops_db, "SELECT event_type FROM orchwf_workflow_events WHERE workflow_inst_id = %s"
                                          " ORDER BY seq", (iid,))]
    assert events.count("workflow.resumed") == 1 and events[-1] == "workflow.completed"


def test_retry_step_refusals(orchwf, ops_db: str) -> None:
    iid = failed_instance(ops_db)
    assert failed(orchwf("retry-step", iid, "first")) == (
        "error: step first is completed; only failed, skipped or cancelled steps can be retried")
    assert failed(orchwf("retry-step", iid, "nope")) == f"error: step not found: nope (workflow {iid})"
    # 'after' was cancelled, but 'boom' failed too: re-running 'after' alone cannot finish
    assert "other steps of workflow" in failed(orchwf("retry-step", iid, "after"))
    ok(orchwf("retry-step", iid, "boom"))
    assert f"workflow {iid} is running" in failed(orchwf("retry-step", iid, "boom"))
    assert failed(orchwf("retry-step", "42", "boom")) == "error: workflow not found: 42"


def test_retry_step_of_a_skipped_step_in_a_cancelled_instance(orchwf, ops_db: str) -> None:
    with Client(ops_db) as client:
        iid = client.enqueue("ops_optional", {})
    assert run_one(ops_db, "skipped") == (iid, "maybe")
    ok(orchwf("cancel", iid))
    ok(orchwf("retry-step", iid, "maybe"))
    steps = dict(query(ops_db, "SELECT step_id, status FROM orchwf_step_instances WHERE workflow_inst_id = %s", (iid,)))
    assert steps == {"maybe": "pending", "after": "pending"}


# -- stats, workers, prune ---------------------------------------------------------------------


def test_stats(orchwf, ops_db: str) -> None:
    with Client(ops_db) as client:
        client.enqueue_many("ops_chain", [{}] * 3)
        client.enqueue_many("ops_chain", [{}] * 2, queue="bulk", priority=9)
    query(ops_db, "UPDATE orchwf_ready_steps SET ready_at = now() - interval '2 minutes' WHERE queue = 'bulk'")
    failed_instance(ops_db)
    query(ops_db, "SELECT * FROM orchwf_claim_steps('host:1:1', '{default}', '{ops_chain}', 1, 30, false)")
    doc = json.loads(ok(orchwf("stats", "--json", "--window", "1h")))
    queues = {q["queue"]: q for q in doc["queues"]}
    assert queues["bulk"]["ready"] == 2 and 115 < queues["bulk"]["oldest_ready_age_seconds"] < 300
    assert queues["default"]["ready"] == 2  # 3 chains, one claimed
    assert doc["steps"] == {"running": 1, "scheduled": 0}
    assert doc["instances"] == {"pending": 5, "running": 0}
    assert doc["finished"] == {"completed": 0, "failed": 1, "cancelled": 0}
    assert doc["window_seconds"] == 3600 and doc["per_minute"]["failed"] == pytest.approx(1 / 60, abs=1e-3)
    text = ok(orchwf("stats"))
    assert text.splitlines()[0].split() == ["QUEUE", "READY", "OLDEST", "READY", "STATE", "RATE", "LIMIT"]
    assert any(line.split()[:2] == ["bulk", "2"] and line.split()[2].startswith("2m") for line in text.splitlines())
    assert "failed 1" in text
    assert "Invalid value for '--window'" in failed(orchwf("stats", "--window", "soon"), code=2)


def test_workers_lists_processes_and_their_claims(orchwf, ops_db: str) -> None:
    query(ops_db, "INSERT INTO orchwf_workers (worker_id, supervisor_id, host, pid, role, queues, concurrency)"
                  " VALUES ('h:1:1', 'h:1:1', 'h', 1, 'supervisor', '{default}', 2),"
                  " ('h:2:1', 'h:1:1', 'h', 2, 'worker', '{default}', 10),"
                  " ('h:3:1', 'h:1:1', 'h', 3, 'worker', '{default}', 10)")
    query(ops_db, "UPDATE orchwf_workers SET heartbeat_at = now() - interval '10 minutes' WHERE pid = 3")
    with Client(ops_db) as client:
        iid = client.enqueue("ops_slow", {})
        client.enqueue("ops_chain", {})
    query(ops_db, "SELECT * FROM orchwf_claim_steps('h:2:1', '{default}', '{ops_slow}', 5, 30, false)")
    query(ops_db, "SELECT * FROM orchwf_claim_steps('gone:9:9', '{default}', '{ops_chain}', 5, 30, false)")
    doc = json.loads(ok(orchwf("workers", "--json")))
    by_id = {w["worker_id"]: w for w in doc["workers"]}
    assert by_id["h:2:1"]["live"] and not by_id["h:3:1"]["live"]
    assert [(c["workflow_inst_id"], c["step_id"]) for c in by_id["h:2:1"]["running"]] == [(iid, "nap")]
    assert [c["lease_owner"] for c in doc["unregistered_claims"]] == ["gone:9:9"]
    text = ok(orchwf("workers"))
    assert f"h:2:1: ops_slow/nap of {iid}" in text
    assert "1 running steps held by unregistered workers" in text
    assert any(line.startswith("h:3:1") and " stale " in line for line in text.splitlines())


def old_finished_instance(dsn: str, days: int) -> str:
    """A finished instance created ``days`` ago (its history partition is that day's),
    with a step and events, saved through the in-process store."""
    from datetime import datetime, timedelta, timezone

    from orchwf import (
        DBStateManager,
        StepInstance,
        StepStatus,
        WorkflowEvent,
        WorkflowInstance,
        WorkflowStatus,
    )
    from orchwf.ids import new_id

    at = (datetime.now(timezone.utc) - timedelta(days=days)).replace(microsecond=0)
    with DBStateManager(dsn) as store:
        inst = WorkflowInstance(id=new_id(at), workflow_id="ops_fail", status=WorkflowStatus.RUNNING, created_at=at,
                                started_at=at)
        store.save_workflow(inst)
        step = StepInstance(id=new_id(at), step_id="boom", workflow_inst_id=inst.id, status=StepStatus.FAILED)
        store.save_step(step)
        store.save_event(WorkflowEvent(id=new_id(at), workflow_inst_id=inst.id, event_type="step.failed",
                                       step_inst_id=step.id))
        inst.status, inst.completed_at = WorkflowStatus.FAILED, at + timedelta(hours=1)
        store.save_workflow(inst)
    return inst.id


def test_prune(orchwf, ops_db: str) -> None:
    old = old_finished_instance(ops_db, days=9)
    recent = failed_instance(ops_db)
    with Client(ops_db) as client:
        running = client.enqueue("ops_chain", {})
    assert {i for (i,) in query(ops_db, "SELECT id::text FROM orchwf_workflow_instances")} == {old, recent, running}
    assert json.loads(ok(orchwf("prune", "--older-than", "7d", "--json"))) == {
        "pruned": 1, "partitions": 1, "older_than_seconds": 7 * 86400}
    ids = {i for (i,) in query(ops_db, "SELECT id::text FROM orchwf_workflow_instances")}
    assert ids == {recent, running}
    # the pruned instance's steps and events went with its partition, the others' stayed
    steps = {i for (i,) in query(ops_db, "SELECT DISTINCT workflow_inst_id::text FROM orchwf_step_instances")}
    events = {i for (i,) in query(ops_db, "SELECT DISTINCT workflow_inst_id::text FROM orchwf_workflow_events")}
    assert steps == events == {recent, running}
    # today's range holds a running instance and one that just finished: kept (only empty
    # ranges of earlier days may go)
    assert ok(orchwf("prune", "--older-than", "1s")).startswith("pruned 0 finished instances (")
    assert {i for (i,) in query(ops_db, "SELECT id::text FROM orchwf_workflow_instances")} == {recent, running}
    assert "not a duration" in failed(orchwf("prune", "--older-than", "7 days"), code=2)
    assert "Missing option '--older-than'" in failed(orchwf("prune"), code=2)


def test_durations_and_ages() -> None:
    assert parse_duration("7d") == 7 * 86400
    assert parse_duration("1h30m") == 5400
    assert parse_duration("2w") == 14 * 86400
    assert parse_duration("90") == 90
    assert parse_duration("0.5s") == 0.5
    for bad in ("", "7x", "d", "1h 30m", "-1d"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert [age(x) for x in (None, 3.21, 312, 7380, 3 * 86400 + 4 * 3600)] == ["-", "3.2s", "5m12s", "2h03m", "3d04h"]


# -- errors ---------------------------------------------------------------------------------------


def test_unreachable_database_is_one_redacted_line(monkeypatch) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["list", "--dsn", "postgresql://postgres:hunter2@127.0.0.1:1/x?connect_timeout=2"])
    line = failed(result)
    assert line.startswith("error: cannot connect to postgresql://postgres:***@127.0.0.1:1/x")
    assert "hunter2" not in result.stderr


def test_an_unmigrated_database_says_so(orchwf, empty_db_dsn: str) -> None:
    line = failed(orchwf("stats", "--dsn", empty_db_dsn))
    assert "is the database migrated? run `orchwf migrate up`" in line


def test_the_group_turns_stray_database_errors_into_one_line(monkeypatch) -> None:
    import click
    import psycopg

    @cli.command("boom-for-test")
    def boom() -> None:
        raise psycopg.errors.QueryCanceled("canceling statement due to statement timeout\nCONTEXT: password=s3cret")

    try:
        result = CliRunner().invoke(cli, ["boom-for-test"])
    finally:
        cli.commands.pop("boom-for-test")
    assert failed(result) == "error: database error: canceling statement due to statement timeout CONTEXT: password=***"
    assert isinstance(boom, click.Command)

    @cli.command("lost-for-test")
    def lost() -> None:
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    try:
        result = CliRunner().invoke(cli, ["lost-for-test"])
    finally:
        cli.commands.pop("lost-for-test")
    assert failed(result) == "error: cannot reach the database: server closed the connection unexpectedly"


# -- real subprocesses ----------------------------------------------------------------------------


def orchwf_process(*args: str, dsn: str | None = None, input: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ORCHWF_DSN", "ORCHWF_SCHEMA")}
    if dsn is not None:
        env["ORCHWF_DSN"] = dsn
    return subprocess.run([sys.executable, "-m", "orchwf", *args], capture_output=True, text=True,
                          input=input, env=env, timeout=60)


@pytest.mark.slow
def test_cli_as_a_subprocess_against_a_running_daemon(daemon, ops_db: str, tmp_path: Path) -> None:
    d: Daemon = daemon("--workers", "2")
    d.wait_ready()
    marker = tmp_path / "broken"
    marker.touch()
    enq = orchwf_process("enqueue", "ops_fail", "--input", json.dumps({"fail_while": str(marker)}), dsn=ops_db)
    assert enq.returncode == 0 and enq.stderr == "", enq.stderr
    iid = enq.stdout.strip()

    def status() -> str:
        shown = orchwf_process("show", iid, "--json", "--dsn", ops_db)
        assert shown.returncode == 0, shown.stderr
        return json.loads(shown.stdout)["status"]

    wait_for(lambda: status() == "failed", what="the instance to fail")
    workers = json.loads(orchwf_process("workers", "--json", dsn=ops_db).stdout)["workers"]
    assert sorted(w["role"] for w in workers if w["live"]) == ["supervisor", "worker", "worker"]
    marker.unlink()  # "fix" the bug, then re-run just that step
    retried = orchwf_process("retry-step", iid, "boom", dsn=ops_db)
    assert retried.returncode == 0 and retried.stdout.strip() == f"retrying step boom of {iid}: now running"
    wait_for(lambda: status() == "completed", what="the instance to complete")
    stats = json.loads(orchwf_process("stats", "--json", dsn=ops_db).stdout)
    assert stats["live_processes"] == {"supervisor": 1, "worker": 2}


def test_cli_subprocess_errors_and_exit_codes(ops_db: str) -> None:
    missing = orchwf_process("show", "42", dsn=ops_db)
    assert (missing.returncode, missing.stdout, missing.stderr) == (1, "", "error: workflow not found: 42\n")
    usage = orchwf_process("enqueue", "ops_chain", "--input", "{", dsn=ops_db)
    assert usage.returncode == 2 and "not valid JSON" in usage.stderr and "Traceback" not in usage.stderr
    unknown = orchwf_process("frobnicate")
    assert unknown.returncode == 2
    listed = orchwf_process("list", "--json", "--dsn", ops_db)
    assert listed.returncode == 0 and json.loads(listed.stdout)["total"] == 0
    stdin = orchwf_process("enqueue", "ops_chain", "--input", "-", dsn=ops_db, input='{"from": "stdin"}')
    assert stdin.returncode == 0
    assert query(ops_db, "SELECT input FROM orchwf_workflow_instances") == [({"from": "stdin"},)]


def test_every_command_honours_schema(empty_db_dsn: str) -> None:
    import opsapp

    from orchwf.daemon import metrics
    from orchwf.db.migrations import migrate

    migrate(empty_db_dsn, "ops")
    with Client(empty_db_dsn, schema="ops") as client:
        client.register_workflow(opsapp.chain)
    runner = CliRunner(env={"ORCHWF_DSN": empty_db_dsn, "ORCHWF_SCHEMA": "ops"})

    def run(*args: str) -> str:
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        return ok(result)

    iid = run("enqueue", "ops_chain").strip()
    assert json.loads(run("list", "--json"))["total"] == 1
    assert json.loads(run("show", iid, "--json"))["status"] == "pending"
    assert json.loads(run("stats", "--json"))["queues"][0]["ready"] == 1
    assert json.loads(run("workers", "--json")) == {"workers": [], "unregistered_claims": []}
    assert json.loads(run("cancel", iid, "--json"))["status"] == "cancelled"
    assert json.loads(run("resume", iid, "--json"))["status"] == "running"
    assert json.loads(run("prune", "--older-than", "1d", "--json"))["pruned"] == 0
    # not in public: the default schema does not see it
    assert "does not exist" in failed(runner.invoke(cli, ["list", "--schema", "public"]))
    import psycopg

    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        families = {m.name: m for m in metrics.DatabaseCollector("ops", lambda: conn).collect()}
    assert families["orchwf_db_stats_up"].samples[0].value == 1
    assert {s.labels["queue"]: s.value for s in families["orchwf_ready_steps"].samples} == {"default": 1}
    assert {s.labels["table"] for s in families["orchwf_table_dead_tuples"].samples} == set(metrics.HOT_TABLES)
