"""Scenarios 1, 2 and 9: workers and supervisors killed, and a step that kills its worker."""

from __future__ import annotations

import os
import random
import signal
import time

import pytest
from harness import PROFILE, record_figures, wait_for, wait_until_done
from ledger import check_ledger
from proctools import children, pid_alive

pytestmark = [pytest.mark.slow, pytest.mark.timeout(PROFILE.timeout)]


def test_worker_kill_storm(chaos) -> None:
    """1. A random worker is kill -9'd every 200-500 ms until every workflow is done."""
    n = PROFILE.storm_workflows
    ids = chaos.enqueue("dag5", n, {"sleep": 0.002})
    daemon = chaos.start("--workers", str(PROFILE.storm_workers), "--concurrency", "5",
                         "--lease-seconds", "10", metrics=True)
    daemon.wait_workers(PROFILE.storm_workers)
    rng = random.Random(7)
    kills = 0
    next_kill = time.monotonic() + rng.uniform(0.2, 0.5)

    def storm() -> None:
        nonlocal kills, next_kill
        if time.monotonic() < next_kill:
            return
        next_kill = time.monotonic() + rng.uniform(0.2, 0.5)
        pids = daemon.workers()
        if pids:
            try:
                os.kill(rng.choice(pids), signal.SIGKILL)
                kills += 1
            except ProcessLookupError:
                pass

    elapsed = wait_until_done(chaos.dsn, ids, timeout=PROFILE.timeout - 40, daemons=[daemon], during=storm, poll=0.02)
    assert daemon.alive(), daemon.log_tail()
    live = check_ledger(chaos.dsn, ids, final=False, metrics_url=daemon.metrics_url, metrics_exact=False)
    daemon.stop()
    led = check_ledger(chaos.dsn, ids)
    led.metrics = live.metrics
    assert led.instance_status == {"completed": n}, led.instance_status
    record_figures("1 worker kill storm", {"workflows": n, "steps": led.steps, "workers": PROFILE.storm_workers,
                                           "kills": kills, "seconds": round(elapsed, 1), **led.figures()})
    assert kills >= 3


def test_supervisor_kill_9(chaos) -> None:
    """2. kill -9 of the supervisor: its workers drain and exit (no orphans); a new supervisor
    takes over. Then a whole host dies (supervisor and workers at once): nobody reaps the
    workers, so their leases expire and the new supervisor rescues them."""
    n = PROFILE.supervisor_workflows
    ids = chaos.enqueue("dag5", n, {"sleep": 0.02})
    first = chaos.start("--workers", "2", "--concurrency", "4", "--lease-seconds", "2",
                        "--shutdown-timeout", "5", "--hostname", "host1")
    workers = first.wait_workers(2)
    wait_for(lambda: _executions(chaos.dsn) > 20, what="progress")
    os.kill(first.pid, signal.SIGKILL)
    t0 = time.monotonic()
    first.proc.wait(5)
    wait_for(lambda: not any(pid_alive(p) for p in workers), timeout=5 + 10, what="orphaned workers to exit")
    orphans_gone = time.monotonic() - t0

    second = chaos.start("--workers", "2", "--concurrency", "4", "--lease-seconds", "2", "--hostname", "host2")
    second.wait_workers(2)
    wait_for(lambda: _executions(chaos.dsn) > 3 * n, timeout=60, what="progress under the second supervisor")
    with _conn(chaos.dsn) as conn:
        running_before = conn.execute("SELECT count(*) FROM orchwf_step_instances WHERE status = 'running'").fetchone()[0]
    # The host dies: supervisor and workers at once, mid-step.
    victims = [second.pid, *children(second.pid)]
    second.kill_group()
    wait_for(lambda: not any(pid_alive(p) for p in victims), timeout=10, what="the host's processes to die")
    with _conn(chaos.dsn) as conn:
        stranded = conn.execute("SELECT count(*) FROM orchwf_step_instances WHERE status = 'running'").fetchone()[0]

    third = chaos.start("--workers", "2", "--concurrency", "4", "--lease-seconds", "2", "--hostname", "host3")
    elapsed = wait_until_done(chaos.dsn, ids, timeout=90, daemons=[third])
    third.stop()
    led = check_ledger(chaos.dsn, ids)
    assert led.instance_status == {"completed": n}
    with _conn(chaos.dsn) as conn:
        lease_rescues = conn.execute(
            "SELECT count(*) FROM orchwf_workflow_events WHERE event_type = 'step.rescued'"
            " AND event_data->>'cause' LIKE 'lease expired%'").fetchone()[0]
    if stranded:
        assert lease_rescues >= 1, "steps stranded by the dead host were not rescued by lease expiry"
    record_figures("2 supervisor kill -9", {
        "workflows": n, "orphans_exited_after_s": round(orphans_gone, 1), "stranded_running_steps": stranded,
        "running_before_host_death": running_before, "lease_expiry_rescues": lease_rescues,
        "seconds_to_finish_after_takeover": round(elapsed, 1), **led.figures()})


def test_poison_step_is_failed_and_the_fleet_survives(chaos) -> None:
    """9. A step that aborts its worker every time, and one that exhausts its memory every
    time: each is retried per policy, then failed; the others keep flowing."""
    n = PROFILE.poison_workflows
    daemon = chaos.start("--workers", "2", "--concurrency", "4", "--lease-seconds", "5", metrics=True)
    daemon.wait_workers(2)
    poison = chaos.enqueue("poison", 3)
    good = chaos.enqueue("dag5", n, {"sleep": 0.005})
    elapsed = wait_until_done(chaos.dsn, poison + good, timeout=120, daemons=[daemon])
    # then the memory hog (apart: an abort would also end a hog attempt running in the same process)
    hog = chaos.enqueue("hog", 1, {"budget_mb": 256})
    good += chaos.enqueue("dag5", n // 2, {"sleep": 0.005})
    elapsed += wait_until_done(chaos.dsn, hog + good, timeout=120, daemons=[daemon])
    assert daemon.alive()
    live = check_ledger(chaos.dsn, poison + hog + good, final=False, metrics_url=daemon.metrics_url,
                        metrics_exact=False)
    daemon.stop()
    led = check_ledger(chaos.dsn, poison + hog + good)
    led.metrics = live.metrics
    inst = [chaos.client.get_workflow(i) for i in poison + hog]
    assert {i.status.value for i in inst} == {"failed"}
    for i in inst[:3]:
        step = i.step("boom")
        # orchwf counts a worker crash as a crash, and fails the step when crashes reach max_attempts
        assert (step.attempts, step.status.value) == (3, "failed"), (step.attempts, step.error)
        assert "died while running the step (crash 3 of at most 3)" in (step.error or ""), step.error
    hog_step = inst[3].step("hog")
    # three MemoryErrors: two retries, then failed; the worker process lives on
    assert (hog_step.status.value, hog_step.retry_count, hog_step.attempts) == ("failed", 2, 3), hog_step
    assert "MemoryError" in (hog_step.error or ""), hog_step.error
    counts = {i.status.value for i in (chaos.client.get_workflow(g) for g in good)}
    assert counts == {"completed"}
    with _conn(chaos.dsn) as conn:
        crashes = conn.execute("SELECT coalesce(sum(crashes), 0) FROM orchwf_step_instances WHERE step_id = 'boom'"
                               ).fetchone()[0]
    log = daemon.log_text()
    deaths = log.count("died with signal 6")
    # one abort crashes every poison step its worker held at that moment
    assert crashes == 9 and 3 <= deaths <= 9, (crashes, deaths)
    record_figures("9 poison step", {"poison_instances": 3, "memory_hog_instances": 1, "other_workflows": n,
                                     "worker_aborts": deaths, "seconds": round(elapsed, 1), **led.figures()})


def test_poison_step_does_not_fail_its_bystanders(chaos) -> None:
    """9b. One worker, ten slots: a poison step and nine ordinary one-step workflows are
    claimed together. The poison step must fail after its crash budget; the nine must not:
    they come back as suspects and run alone in the quarantine worker, so the first crash
    is the only one charged to them."""
    poison = chaos.enqueue("poison", 1)
    bystanders = chaos.enqueue("plain", 9)
    daemon = chaos.start("--workers", "1", "--concurrency", "10", "--lease-seconds", "5")
    wait_until_done(chaos.dsn, poison + bystanders, timeout=60, daemons=[daemon])
    daemon.stop()
    check_ledger(chaos.dsn, poison + bystanders)
    assert chaos.client.get_workflow(poison[0]).status.value == "failed"
    statuses = [chaos.client.get_workflow(b).status.value for b in bystanders]
    assert statuses == ["completed"] * 9, statuses


def _conn(dsn: str):
    from harness import connect

    return connect(dsn)


def _executions(dsn: str) -> int:
    with _conn(dsn) as conn:
        return int(conn.execute("SELECT count(*) FROM orchwf_chaos_exec").fetchone()[0])
