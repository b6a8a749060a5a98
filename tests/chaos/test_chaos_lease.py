"""Scenario 5: a lease expires while its worker is frozen; the stale result loses the race."""

from __future__ import annotations

import os
import signal
import time

import pytest
from harness import PROFILE, connect, executions, record_figures, scrape, wait_for, wait_until_done
from ledger import check_ledger

pytestmark = [pytest.mark.slow, pytest.mark.timeout(PROFILE.timeout)]

LEASE = 2.0


@pytest.mark.parametrize("order", ["rescued_finishes_first", "stale_finishes_first"])
def test_lease_expiry_race(chaos, order: str) -> None:
    """5. The worker running a step is frozen (SIGSTOP: no heartbeats, no progress) for longer
    than its lease. The lease expires, the supervisor rescues the step, another worker
    runs it. Then the frozen worker resumes (SIGCONT) and finishes its stale copy:
    - rescued_finishes_first: the rescued copy has committed already;
    - stale_finishes_first: the rescued copy is still running under its new lease.
    Either way the stale result is discarded and the output is the rescued copy's."""
    daemon = chaos.start("--workers", "2", "--concurrency", "2", "--lease-seconds", str(LEASE), metrics=True)
    daemon.wait_workers(2)
    if order == "rescued_finishes_first":
        first, later = 1.5, 0.2
    else:
        first, later = 0.5, 4.0
    iid = chaos.client.enqueue("stalling", {"first": first, "later": later})
    original = wait_for(lambda: executions(chaos.dsn, iid), what="the first execution")[0]
    victim = original[4]
    os.kill(victim, signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        rescued = wait_for(lambda: executions(chaos.dsn, iid)[1:], timeout=20, what="the rescued copy")[0]
        assert rescued[4] != victim and rescued[3] == 2
        if order == "rescued_finishes_first":
            wait_until_done(chaos.dsn, [iid], timeout=20, daemons=[daemon])
        else:
            time.sleep(0.3)
            now = chaos.client.get_workflow(iid)
            assert not now.status.is_terminal and now.step("slow").status.value == "running"
    finally:
        frozen_for = time.monotonic() - frozen_at
        os.kill(victim, signal.SIGCONT)
    # the stale original finishes its work and offers its result
    wait_for(lambda: executions(chaos.dsn, iid)[0][6] is not None, timeout=10, what="the stale copy to finish")
    wait_until_done(chaos.dsn, [iid], timeout=20, daemons=[daemon])
    time.sleep(0.5)  # the stale worker's commit attempt
    inst = chaos.client.get_workflow(iid)
    step = inst.step("slow")
    runs = executions(chaos.dsn, iid)
    assert inst.status.value == "completed"
    assert len(runs) == 2 and runs[0][6] is not None and runs[1][6] is not None  # both ran to the end
    assert inst.output["slow"] == {"exec": rescued[0], "attempt": 2, "pid": rescued[4]}, inst.output
    assert step.attempts == 2
    kinds = [e.event_type for e in chaos.client.get_workflow_events(iid)]
    assert kinds.count("step.completed") == 1 and kinds.count("step.rescued") == 1, kinds
    if order == "stale_finishes_first":
        assert runs[0][6] < runs[1][6], "the stale copy did not finish first"
    else:
        assert runs[0][6] > runs[1][6], "the rescued copy did not finish first"
    with connect(chaos.dsn) as conn:
        cause = conn.execute("SELECT event_data->>'cause' FROM orchwf_workflow_events WHERE workflow_inst_id = %s"
                             " AND event_type = 'step.rescued'", (iid,)).fetchone()[0]
    assert cause.startswith("lease expired"), cause
    assert daemon.alive() and os.path.exists(f"/proc/{victim}"), "the frozen worker was not supposed to be killed"
    sample = scrape(daemon.metrics_url) if daemon.metrics_url else None
    stale = None if sample is None else sample.get("orchwf_stale_results_total", 0.0)
    if stale is not None:
        assert stale == 1.0, f"orchwf_stale_results_total={stale}"
    led = check_ledger(chaos.dsn, [iid], final=False, allow_concurrent=True, metrics_url=daemon.metrics_url)
    daemon.stop()
    check_ledger(chaos.dsn, [iid], allow_concurrent=True)
    record_figures(f"5 lease expiry race ({order})", {
        "lease_s": LEASE, "frozen_s": round(frozen_for, 1), "executions": len(runs),
        "committed_attempt": inst.output["slow"]["attempt"], "stale_results_metric": stale, **led.figures()})
