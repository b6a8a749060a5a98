"""The metrics endpoint of a real daemon: scraped during a run, checked against the database."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from opskit import Daemon, parse, promtool, query, total, wait_for

from orchwf import Client
from orchwf.daemon.worker import QUARANTINE_IDLE

pytestmark = pytest.mark.slow

CONCURRENCY = 4


def _finished(dsn: str, ids: list[str]) -> bool:
    rows = query(dsn, "SELECT count(*) FROM orchwf_workflow_instances WHERE id = ANY(%s::uuid[])"
                      " AND status IN ('completed', 'failed', 'cancelled')", (ids,))
    return rows[0][0] == len(ids)


def _steps(dsn: str, status: str) -> int:
    return query(dsn, "SELECT count(*) FROM orchwf_step_instances WHERE status = %s", (status,))[0][0]


def test_scrape_during_a_run_matches_what_happened(daemon, ops_db: str, tmp_path: Path) -> None:
    d: Daemon = daemon("--workers", "2", "--concurrency", str(CONCURRENCY))
    d.wait_ready()
    marker = tmp_path / "failing"
    marker.touch()
    with Client(ops_db) as client:
        slow = client.enqueue_many("ops_slow", [{"sleep": 0.4}] * 6)
        # scraped while steps run: busy slots show up
        busy = wait_for(lambda: total(d.scrape(), "orchwf_worker_slots_busy") > 0, what="busy slots")
        assert busy
        chains = client.enqueue_many("ops_chain", [{}] * 20)
        failing = client.enqueue_many("ops_fail", [{"fail_while": str(marker)}] * 3)
        ids = slow + chains + failing
        wait_for(lambda: _finished(ops_db, ids), timeout=60, what="all instances to finish")

    # database gauges are cached for a few seconds: wait for a scrape after the run
    samples = wait_for(lambda: (s := d.scrape()) and total(s, "orchwf_ready_steps", queue="default") == 0 and s,
                       what="a fresh database scrape")
    completed = _steps(ops_db, "completed")
    assert completed == 6 * 2 + 20 * 3 + 3  # ops_slow: 2 steps, ops_chain: 3, ops_fail: 'first'
    assert total(samples, "orchwf_steps_completed_total") == completed
    assert total(samples, "orchwf_steps_completed_total", workflow="ops_chain", step="b") == 20
    assert total(samples, "orchwf_steps_failed_total", outcome="failed") == 3
    assert total(samples, "orchwf_steps_claimed_total") == completed + 3
    assert total(samples, "orchwf_step_duration_seconds_count") == completed + 3
    assert total(samples, "orchwf_claim_duration_seconds_count") > 0
    # slots and processes of the live workers
    assert total(samples, "orchwf_worker_slots_busy") == 0
    assert total(samples, "orchwf_worker_slots_idle") == 2 * CONCURRENCY
    assert total(samples, "orchwf_worker_processes") == 2
    assert total(samples, "orchwf_worker_processes_desired") == 2
    assert total(samples, "orchwf_worker_db_connected") == 2
    assert total(samples, "orchwf_listen_connection_up") == 1
    assert total(samples, "orchwf_worker_restarts_total") == 0
    # database gauges
    assert total(samples, "orchwf_db_stats_up") == 1
    assert total(samples, "orchwf_ready_steps", queue="default") == 0
    assert total(samples, "orchwf_oldest_ready_step_age_seconds", queue="default") == 0
    assert total(samples, "orchwf_live_workers", role="worker") == 2
    assert total(samples, "orchwf_live_workers", role="supervisor") == 1
    assert {lab["table"] for lab, _ in samples["orchwf_table_dead_tuples"]} == {
        "orchwf_ready_steps", "orchwf_running_steps", "orchwf_live_steps", "orchwf_live_instances"}
    # bounded labels: no process or instance identities
    for name, series in samples.items():
        for labels, _ in series:
            assert not {"pid", "instance", "worker", "worker_id", "id"} & set(labels), (name, labels)


def test_exposition_passes_promtool_and_openmetrics_negotiation(daemon, ops_db: str) -> None:
    d: Daemon = daemon("--workers", "2")
    d.wait_ready()
    with Client(ops_db) as client:
        ids = client.enqueue_many("ops_chain", [{}] * 3)
        wait_for(lambda: _finished(ops_db, ids), timeout=30, what="instances to finish")
    status, headers, body = d.get("/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    status, headers, om = d.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert status == 200 and headers["Content-Type"].startswith("application/openmetrics-text")
    assert om.rstrip().endswith(b"# EOF")
    assert parse(body.decode())["orchwf_steps_completed_total"]
    status, headers, head = d.get("/metrics", method="HEAD")
    assert status == 200 and head == b"" and int(headers["Content-Length"]) > 0
    tool = promtool()
    if tool is None:
        pytest.skip("promtool not installed (apt-get install prometheus); the exposition parsed fine")
    check = subprocess.run([tool, "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr


def test_kill_9_of_a_worker_leaves_no_double_counting(daemon, ops_db: str) -> None:
    d: Daemon = daemon("--workers", "2", "--concurrency", str(CONCURRENCY))
    d.wait_ready()
    with Client(ops_db) as client:
        ids = client.enqueue_many("ops_slow", [{"sleep": 0.3}] * 16)

        def victim() -> int | None:
            rows = query(ops_db, "SELECT pid FROM orchwf_workers w WHERE role = 'worker' AND EXISTS ("
                                 " SELECT 1 FROM orchwf_step_instances s WHERE s.lease_owner = w.worker_id"
                                 " AND s.status = 'running')")
            return rows[0][0] if rows else None

        pid = wait_for(victim, what="a worker running steps")
        wait_for(lambda: total(d.scrape(), "orchwf_steps_completed_total") > 0, what="some completions")
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: pid not in d.worker_pids(2), what="a replacement worker")
        wait_for(lambda: _finished(ops_db, ids), timeout=60, what="all instances to finish")
    assert query(ops_db, "SELECT count(*) FROM orchwf_workflow_instances WHERE status = 'completed'")[0][0] == 16

    samples = d.scrape()
    completed = _steps(ops_db, "completed")
    events = query(ops_db, "SELECT count(*) FROM orchwf_workflow_events WHERE event_type = 'step.completed'")[0][0]
    assert completed == events == 32
    # The dead worker's counts stay in the total, and nothing is counted twice. A kill
    # that lands between a batch's commit and its counter update loses that batch from
    # the counter (at most one batch: the killed worker's slots), never adds to it.
    counted = total(samples, "orchwf_steps_completed_total")
    assert completed - CONCURRENCY <= counted <= completed
    rescued = query(ops_db, "SELECT count(*) FROM orchwf_workflow_events WHERE event_type = 'step.rescued'")[0][0]
    assert total(samples, "orchwf_steps_rescued_total", cause="worker_death") == rescued
    assert total(samples, "orchwf_worker_restarts_total") == 1
    # its live gauges went with it (mark_process_dead): two workers' slots, not three.
    # The rescued steps are suspects, run by a quarantine worker (one slot) that exits once
    # idle for QUARANTINE_IDLE seconds: its gauges go with it too, so wait for that.
    def slots(s: dict) -> float:
        return total(s, "orchwf_worker_slots_idle") + total(s, "orchwf_worker_slots_busy")

    wait_for(lambda: slots(d.scrape()) == 2 * CONCURRENCY, timeout=QUARANTINE_IDLE + 15,
             what="the quarantine worker's slots to go with it")
    samples = d.scrape()
    assert slots(samples) == 2 * CONCURRENCY
    assert total(samples, "orchwf_worker_processes") == 2
    assert total(samples, "orchwf_worker_db_connected") == 2


def test_ready_queue_depth_and_oldest_age_per_queue(daemon, ops_db: str) -> None:
    # the daemon serves "default" only: steps in "bulk" wait, and their age grows
    with Client(ops_db) as client:
        client.enqueue_many("ops_chain", [{}] * 3, queue="bulk")
        client.enqueue_many("ops_chain", [{}] * 2, queue="bulk", priority=5)
    query(ops_db, "UPDATE orchwf_ready_steps SET ready_at = now() - interval '90 seconds' WHERE priority = 0")
    d: Daemon = daemon("--workers", "1")
    d.wait_ready()
    samples = d.scrape()
    assert total(samples, "orchwf_ready_steps", queue="bulk") == 5
    assert 90 <= total(samples, "orchwf_oldest_ready_step_age_seconds", queue="bulk") < 300
    assert total(samples, "orchwf_ready_steps", queue="default") == 0  # served, empty: still reported
    assert total(samples, "orchwf_workflows_enqueued_total") >= 5


def test_metrics_port_taken_fails_the_start(daemon, ops_db: str) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        d: Daemon = daemon("--workers", "1", metrics_port=port)
        assert d.proc.wait(30) == 1
        assert f"cannot serve metrics on 127.0.0.1:{port}" in d.output()


def test_metrics_port_0_disables_the_endpoint(daemon, ops_db: str) -> None:
    d: Daemon = daemon("--workers", "1", metrics_port=0)
    with Client(ops_db) as client:
        iid = client.enqueue("ops_chain", {})
        assert client.wait(iid, timeout=30).status.value == "completed"
    assert "metrics and health checks on" not in d.output()
    assert d.stop() == 0
