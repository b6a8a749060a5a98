"""The daemon end to end: real supervisor and worker processes against real Postgres."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest
from daemonkit import executions, wait_for

from orchwf import Client, StepBuilder, WorkflowBuilder, WorkflowStatus

pytestmark = pytest.mark.slow


def events_of(client: Client, iid: str) -> list[str]:
    return [e.event_type for e in client.get_workflow_events(iid)]


def test_dag_with_fan_in_runs_each_step_once(client: Client, start_daemon, app_db: str) -> None:
    start_daemon("--workers", "2")
    iid = client.enqueue("fanin", {"seed": 1})
    inst = client.wait(iid, timeout=30)
    assert inst.status == WorkflowStatus.COMPLETED
    assert inst.output["total"] == 60
    assert {s.step_id: s.status.value for s in inst.steps} == {
        "start": "completed", "fan0": "completed", "fan1": "completed", "fan2": "completed",
        "fan3": "completed", "join": "completed"}
    ran = sorted(step for _, step, *_ in executions(app_db, iid))
    assert ran == ["fan0", "fan1", "fan2", "fan3", "join", "start"]
    assert events_of(client, iid).count("step.completed") == 6
    # the join saw every parent's output, namespaced and flattened
    join = inst.step("join")
    assert join.input["fan3"] == {"fan": 30} and join.input["seed"] == 1


def test_retries_go_back_through_the_queue_with_backoff(client: Client, start_daemon, app_db: str) -> None:
    start_daemon("--workers", "1")
    iid = client.enqueue("retrying", {"succeed_on": 3})
    inst = client.wait(iid, timeout=30)
    assert inst.status == WorkflowStatus.COMPLETED
    assert inst.output == {"flaky_attempt": 3}
    assert [attempt for _, _, attempt, _, _ in executions(app_db, iid)] == [1, 2, 3]
    step = inst.step("flaky")
    assert step.retry_count == 2
    kinds = events_of(client, iid)
    assert kinds.count("step.attempt_failed") == 2 and kinds.count("step.retry") == 2
    with psycopg.connect(app_db) as conn:
        times = [r[0] for r in conn.execute(
            "SELECT at FROM orchwf_test_exec WHERE instance_id = %s ORDER BY id", (iid,)).fetchall()]
    assert (times[1] - times[0]).total_seconds() >= 0.05  # the backoff was honoured
    assert (times[2] - times[1]).total_seconds() >= 0.1


def test_required_failure_cancels_the_rest_and_compensates(client: Client, start_daemon, app_db: str) -> None:
    start_daemon("--workers", "2")
    iid = client.enqueue("failing", {})
    inst = client.wait(iid, timeout=30)
    assert inst.status == WorkflowStatus.FAILED
    assert inst.error == "step pay failed after 3 attempts: boom"
    statuses = {s.step_id: s.status.value for s in inst.steps}
    assert statuses["book"] == "completed"
    assert statuses["pay"] == "failed"
    assert statuses["ship"] == "cancelled"
    assert statuses["optional"] in ("skipped", "cancelled")
    assert all(s.status.is_terminal for s in inst.steps)
    notes = [(step, note) for _, step, _, _, note in executions(app_db, iid)]
    assert ("book", "compensated") in notes
    kinds = events_of(client, iid)
    assert "step.compensated" in kinds and kinds[-1] == "workflow.failed"
    with psycopg.connect(app_db) as conn:
        assert conn.execute("SELECT count(*) FROM orchwf_ready_steps").fetchone()[0] == 0


def test_optional_failure_still_releases_its_dependent(client: Client, start_daemon) -> None:
    start_daemon("--workers", "1")
    iid = client.enqueue("optional", {})
    inst = client.wait(iid, timeout=30)
    assert inst.status == WorkflowStatus.COMPLETED
    assert inst.step("maybe").status.value == "skipped"
    assert inst.step("after").status.value == "completed"
    maybe = [(e.event_type, e.event_data) for e in client.get_workflow_events(iid)
             if e.step_inst_id == inst.step("maybe").id]
    # a skipped step records its failure, then that it was skipped; each with its own document
    assert [kind for kind, _ in maybe] == ["step.started", "step.failed", "step.skipped"]
    assert maybe[1][1].keys() == {"error", "retries"} and maybe[2][1].keys() == {"error"}
    assert maybe[1][1]["error"] == maybe[2][1]["error"] != ""


def test_a_released_dependent_is_claimed_in_its_parents_finish_transaction(
        client: Client, start_daemon, app_db: str) -> None:
    # At light load too: the worker that commits a parent's result claims the steps it
    # released in the same transaction, so they start without another round trip. Both
    # timestamps are that transaction's now().
    start_daemon("--workers", "1")
    for _ in range(3):
        inst = client.wait(client.enqueue("chain", {}), timeout=30)
        assert inst.status == WorkflowStatus.COMPLETED
        steps = sorted(inst.steps, key=lambda s: s.execution_order)
        assert len(steps) == 3
        for parent, child in zip(steps, steps[1:], strict=False):
            assert child.started_at == parent.completed_at, (parent.step_id, child.step_id)


def test_a_worker_hides_what_it_started_with_from_the_collector(client: Client, start_daemon) -> None:
    # The app, orchwf and the libraries a worker starts with live as long as it does: frozen
    # (gc.freeze), a full collection skips them instead of traversing tens of thousands of
    # objects with the GIL held, every few seconds, in the middle of the claim loop.
    start_daemon("--workers", "1")
    inst = client.wait(client.enqueue("collector", {}), timeout=30)
    assert inst.status == WorkflowStatus.COMPLETED
    seen = inst.step("look").output
    assert seen["frozen"] > 10_000 and seen["frozen"] > 3 * seen["tracked"], seen


def test_non_retryable_error_fails_at_once(client: Client, start_daemon, app_db: str) -> None:
    start_daemon("--workers", "1")
    iid = client.enqueue("nonretryable", {})
    inst = client.wait(iid, timeout=30)
    assert inst.status == WorkflowStatus.FAILED
    assert len(executions(app_db, iid)) == 1
    assert "do not retry me" in (inst.error or "")


def test_timeout_is_enforced_on_a_step_that_ignores_it(client: Client, start_daemon, app_db: str) -> None:
    daemon = start_daemon("--workers", "1")
    first_pids = daemon.worker_pids(1)
    iid = client.enqueue("timeout", {"hang": 3})
    inst = client.wait(iid, timeout=30)
    assert inst.status == WorkflowStatus.FAILED
    assert "timed out" in (inst.error or "")
    assert inst.step("hang").output == {}  # the late result was never recorded
    # the worker that holds the abandoned thread is replaced by a fresh process
    wait_for(lambda: daemon.worker_pids(1) != first_pids, timeout=20, what="worker recycle")
    time.sleep(3.5)  # let the abandoned thread return: its result must still be discarded
    assert client.get_workflow(iid).step("hang").output == {}


def test_transactional_step_commits_its_writes_with_its_result(client: Client, start_daemon, app_db: str) -> None:
    start_daemon("--workers", "1")
    ok = client.enqueue("transactional", {"value": 7})
    bad = client.enqueue("transactional", {"value": 8, "fail": True})
    assert client.wait(ok, timeout=30).status == WorkflowStatus.COMPLETED
    assert client.wait(bad, timeout=30).status == WorkflowStatus.FAILED
    with psycopg.connect(app_db) as conn:
        rows = conn.execute("SELECT instance_id::text, value FROM orchwf_test_effects").fetchall()
    assert rows == [(ok, 7)]  # the failed step's write rolled back with it


def test_transactional_steps_reuse_their_threads_connection_until_one_fails(client: Client, start_daemon) -> None:
    """One executor thread: its transactional steps run on one connection (one session),
    until a step raises; the next step gets a new one."""
    start_daemon("--workers", "1", "--concurrency", "1")

    def backend(value: int, fail: bool = False) -> int | None:
        iid = client.enqueue("transactional", {"value": value, "fail": fail})
        inst = client.wait(iid, timeout=30)
        return (inst.step("write").output or {}).get("backend")

    first = [backend(n) for n in range(3)]
    assert len(set(first)) == 1 and first[0] is not None
    assert backend(3, fail=True) is None
    after = backend(4)
    assert after is not None and after != first[0]


def test_kill_9_of_a_worker_mid_step_reruns_it_once(client: Client, start_daemon, app_db: str, tmp_path: Path) -> None:
    start_daemon("--workers", "2")
    gate = tmp_path / "gate"
    iid = client.enqueue("gated", {"gate": str(gate)})
    first = wait_for(lambda: executions(app_db, iid), what="first execution")
    victim = first[0][3]
    os.kill(victim, signal.SIGKILL)
    # the supervisor gives the claim back at once and another worker picks it up
    wait_for(lambda: len(executions(app_db, iid)) >= 2, timeout=60, what="re-execution")
    gate.touch()
    inst = client.wait(iid, timeout=30)
    assert inst.status == WorkflowStatus.COMPLETED
    runs = executions(app_db, iid)
    assert len(runs) == 2 and runs[1][3] != victim
    kinds = events_of(client, iid)
    assert kinds.count("step.completed") == 1 and kinds.count("workflow.completed") == 1
    assert "step.rescued" in kinds
    step = inst.step("wait")
    assert step.retry_count == 0  # a crash does not use up the retry budget


def test_lost_lease_result_is_discarded(client: Client, start_daemon, app_db: str, tmp_path: Path) -> None:
    start_daemon("--workers", "2", "--lease-seconds", "60")
    gate = tmp_path / "gate"
    iid = client.enqueue("gated", {"gate": str(gate)})
    wait_for(lambda: executions(app_db, iid), what="first execution")
    with psycopg.connect(app_db, autocommit=True) as conn:
        # The lease runs out while the first worker still runs the step (as if it stalled).
        conn.execute("UPDATE orchwf_live_steps SET lease_expires_at = now() - interval '1 second' WHERE status = 'running'")
        rescued = conn.execute("SELECT * FROM orchwf_rescue_steps()").fetchall()
    assert len(rescued) == 1
    wait_for(lambda: len(executions(app_db, iid)) >= 2, timeout=60, what="rescued copy")
    gate.touch()
    inst = client.wait(iid, timeout=30)
    assert inst.status == WorkflowStatus.COMPLETED
    time.sleep(0.5)
    kinds = events_of(client, iid)
    assert kinds.count("step.completed") == 1  # the stale worker's result was dropped
    with psycopg.connect(app_db) as conn:
        attempts = conn.execute("SELECT attempts FROM orchwf_step_instances WHERE workflow_inst_id = %s", (iid,)).fetchone()[0]
    assert attempts == 2


def test_sigterm_under_load_drains_cleanly_and_loses_nothing(client: Client, start_daemon, app_db: str) -> None:
    ids = client.enqueue_many("chain", [{"sleep": 0.01} for _ in range(150)])
    daemon = start_daemon("--workers", "2", "--concurrency", "4")
    wait_for(lambda: len(executions(app_db, ids)) > 60, timeout=30, what="some progress")
    assert daemon.stop(signal.SIGTERM, timeout=40) == 0
    with psycopg.connect(app_db) as conn:
        assert conn.execute("SELECT count(*) FROM orchwf_step_instances WHERE status = 'running'").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM orchwf_workers").fetchone()[0] == 0
    start_daemon("--workers", "2", "--concurrency", "4")
    for iid in ids:
        assert client.wait(iid, timeout=60).status == WorkflowStatus.COMPLETED
    runs = executions(app_db, ids)
    twice = _ran_twice(runs)
    assert not twice, f"drained, not killed, yet these ran twice: {_histories(client, twice)}"
    assert len(runs) == 450


def _ran_twice(runs: list[tuple]) -> list[tuple]:
    counts = Counter((i, s) for i, s, *_ in runs)
    return [r for r in runs if counts[(r[0], r[1])] > 1]


def _histories(client: Client, runs: list[tuple]) -> str:
    """The runs and every event of their instances, for a failure message."""
    lines = [str(r) for r in runs]
    for iid in sorted({r[0] for r in runs}):
        lines += [f"  {e.timestamp.isoformat()} {e.event_type} {e.step_inst_id} {e.event_data}"
                  for e in client.get_workflow_events(iid)]
    return "\n".join(lines)


def test_sighup_replaces_workers_without_losing_steps(client: Client, start_daemon, app_db: str) -> None:
    daemon = start_daemon("--workers", "2", "--concurrency", "2")
    before = daemon.worker_pids(2)
    ids = client.enqueue_many("chain", [{"sleep": 0.02} for _ in range(40)])
    wait_for(lambda: len(executions(app_db, ids)) > 10, what="progress")
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: not set(daemon.worker_pids()) & set(before), timeout=30, what="new workers")
    for iid in ids:
        assert client.wait(iid, timeout=60).status == WorkflowStatus.COMPLETED
    events = [e for iid in ids for e in client.get_workflow_events(iid)]
    assert sum(e.event_type == "step.completed" for e in events) == 120


def test_supervisor_kill_9_makes_its_workers_exit(client: Client, start_daemon) -> None:
    daemon = start_daemon("--workers", "2")
    workers = daemon.worker_pids(2)
    os.kill(daemon.proc.pid, signal.SIGKILL)
    daemon.proc.wait(5)

    def all_gone() -> bool:
        return not any(os.path.exists(f"/proc/{pid}") and _state(pid) != "Z" for pid in workers)

    wait_for(all_gone, timeout=20, what="orphaned workers to exit")


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_a_step_of_a_version_this_worker_lacks_waits_for_a_worker_that_has_it(
        client: Client, start_daemon, app_db: str) -> None:
    """Versioned definitions: an instance of a newer version than the worker's code is not
    claimed by it (which would fail its new step); it waits, visibly."""
    newer = (
        WorkflowBuilder("single", "One step, and a step only newer code has")
        .add_step(StepBuilder("only", "Only", lambda c, d: None).build())
        .add_step(StepBuilder("brand_new", "New", lambda c, d: None).build())
        .build()
    )
    client.register_workflow(newer)
    iid = client.enqueue("single", {})
    start_daemon("--workers", "1")  # registers its own (older) definition, without brand_new
    time.sleep(3)
    assert client.get_workflow(iid).status == WorkflowStatus.PENDING
    assert executions(app_db, iid) == []
    with psycopg.connect(app_db) as conn:
        [(workflow, version, n)] = conn.execute(
            "SELECT workflow_id, version_hash, instances FROM orchwf_unserved_versions(60)").fetchall()
    assert (workflow, version, n) == ("single", newer.version_hash, 1)


def test_resume_reruns_only_what_failed(client: Client, start_daemon, app_db: str) -> None:
    start_daemon("--workers", "1")
    iid = client.enqueue("retrying", {"succeed_on": 99})
    assert client.wait(iid, timeout=30).status == WorkflowStatus.FAILED
    assert len(executions(app_db, iid)) == 3
    with psycopg.connect(app_db, autocommit=True) as conn:  # make the next try succeed
        conn.execute("UPDATE orchwf_instance_history SET input = '{\"succeed_on\": 1}' WHERE id = %s", (iid,))
    assert client.resume_workflow(iid) == "running"
    inst = client.wait(iid, timeout=30)
    assert inst.status == WorkflowStatus.COMPLETED
    assert len(executions(app_db, iid)) == 4
    assert "workflow.resumed" in events_of(client, iid)


def test_cancel_discards_a_running_steps_result(client: Client, start_daemon, app_db: str, tmp_path: Path) -> None:
    start_daemon("--workers", "1")
    gate = tmp_path / "gate"
    iid = client.enqueue("gated", {"gate": str(gate)})
    wait_for(lambda: executions(app_db, iid), what="execution")
    assert client.cancel_workflow(iid) == "cancelled"
    gate.touch()
    time.sleep(1.0)
    inst = client.get_workflow(iid)
    assert inst.status == WorkflowStatus.CANCELLED
    assert inst.step("wait").status.value == "cancelled" and inst.step("wait").output == {}
    assert "step.completed" not in events_of(client, iid)


def test_async_steps_share_an_event_loop_and_time_out(client: Client, start_daemon) -> None:
    start_daemon("--workers", "1", "--concurrency", "4")
    iid = client.enqueue("async_flow", {})
    inst = client.wait(iid, timeout=30)
    assert inst.status == WorkflowStatus.COMPLETED
    one, two, hang = inst.step("one"), inst.step("two"), inst.step("hang")
    assert one.output["loop"] == two.output["loop"]  # one loop per worker process
    assert hang.status.value == "skipped" and "timed out" in (hang.error or "")


def test_orchwf_worker_console_script_runs_the_same_daemon(client: Client, app_db: str) -> None:
    import shutil
    import subprocess
    import sys

    # the script pip installed beside this interpreter (a venv's bin/), else on PATH
    beside = os.path.join(os.path.dirname(sys.executable), "orchwf-worker")
    exe = beside if os.access(beside, os.X_OK) else shutil.which("orchwf-worker") or ""
    if not exe:
        pytest.skip("orchwf-worker is not installed (pip install -e .)")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(__file__), ORCHWF_TEST_APP_DSN=app_db)
    proc = subprocess.Popen([exe, "--app", "daemonapp:single", "--dsn", app_db, "--workers", "1",
                             "--metrics-port", "0"], env=env, start_new_session=True)
    try:
        iid = client.enqueue("single", {})
        assert client.wait(iid, timeout=30).status == WorkflowStatus.COMPLETED
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_a_crash_does_not_fail_a_step_without_retry_policy(client: Client, start_daemon, app_db: str, tmp_path: Path) -> None:
    start_daemon("--workers", "2")
    gate = tmp_path / "gate"
    iid = client.enqueue("gated_once", {"gate": str(gate)})  # max_attempts is 1
    first = wait_for(lambda: executions(app_db, iid), what="first execution")
    os.kill(first[0][3], signal.SIGKILL)
    wait_for(lambda: len(executions(app_db, iid)) >= 2, what="re-execution")
    gate.touch()
    inst = client.wait(iid, timeout=60)
    assert inst.status == WorkflowStatus.COMPLETED
    step = inst.step("wait")
    assert step.retry_count == 0 and step.attempts == 2


def test_a_step_raising_system_exit_fails_instead_of_hanging(client: Client, start_daemon, app_db: str) -> None:
    start_daemon("--workers", "1")
    iid = client.enqueue("exiting", {})
    inst = client.wait(iid, timeout=60)
    assert inst.status == WorkflowStatus.FAILED
    assert "SystemExit" in (inst.step("exit").error or "")
    assert len(executions(app_db, iid)) == 1


def test_poison_step_is_failed_after_its_crash_budget_and_others_flow(client: Client, start_daemon, app_db: str) -> None:
    # A step that kills its worker also costs a crash to the steps running beside it, once:
    # then they are suspects and run alone in the quarantine worker, as the poison does.
    start_daemon("--workers", "2", "--concurrency", "4")
    bad = client.enqueue("poison", {})
    good = client.enqueue_many("single", [{} for _ in range(20)])
    inst = client.wait(bad, timeout=90)
    assert inst.status == WorkflowStatus.FAILED
    assert "died while running the step" in (inst.step("abort").error or "")
    assert len(executions(app_db, bad)) == 3  # crash budget: max(3, max_attempts=3)
    for iid in good:
        assert client.wait(iid, timeout=60).status == WorkflowStatus.COMPLETED


def test_sigquit_gives_claims_back_without_failing_them(client: Client, start_daemon, app_db: str, tmp_path: Path) -> None:
    daemon = start_daemon("--workers", "1")
    gate = tmp_path / "gate"
    iid = client.enqueue("gated_once", {"gate": str(gate)})
    wait_for(lambda: executions(app_db, iid), what="execution")
    daemon.proc.send_signal(signal.SIGQUIT)
    daemon.proc.wait(20)
    inst = client.get_workflow(iid)
    assert inst.step("wait").status.value == "pending"  # released, not failed
    gate.touch()
    start_daemon("--workers", "1")
    assert client.wait(iid, timeout=60).status == WorkflowStatus.COMPLETED


def test_a_worker_whose_claims_fail_backs_off_instead_of_spinning(client: Client, start_daemon, app_db: str) -> None:
    # The database takes the connection but refuses every claim (here: a broken claim
    # function; in life a missing grant or a read-only server), before any claim worked.
    with psycopg.connect(app_db, autocommit=True) as conn:
        conn.execute("ALTER FUNCTION orchwf_claim_steps(text, text[], text[], integer, double precision, boolean,"
                     " text[]) RENAME TO orchwf_claim_steps_gone")
    daemon = start_daemon("--workers", "1")
    [worker] = daemon.worker_pids(expected=1)
    wait_for(lambda: "database error" in daemon.output(), timeout=15, what="the first refused claim")

    def cpu_seconds() -> float:
        with open(f"/proc/{worker}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    before = cpu_seconds()
    time.sleep(3)
    # a busy loop would burn ~3 s of CPU here; waiting out the backoff costs next to nothing
    assert cpu_seconds() - before < 0.5
    assert daemon.proc.poll() is None
