"""A real Prometheus scrapes a real ``orchwf worker``: the queries an operator runs, the
alert rules of deploy/alerts.yml and the counters' crash semantics, seen from the other
side of the scrape (promtool only lints one exposition; this watches a run).

One daemon (2 workers) and one Prometheus (scrape and rule evaluation every second,
the rules' minutes turned into seconds, see promkit.scaled_alert_rules) go through four
phases: a warm-up, a healthy run under load during which a worker is killed with
SIGKILL, a backlog while every worker process is paused (SIGSTOP), and the daemon's stop.

What it found that ``promtool check metrics`` could not (a lint sees one exposition,
not a series over time):
  * a labelled counter appears with its first increment, and rate()/increase() never
    count the value a series appears with: the first rescue of a run was invisible
    (fixed: metrics.py creates both causes at 0), and so were the first steps of each
    (workflow, step) after a start (fixed: metrics.declare_steps creates them at 0
    before the first fork; the test at the end holds it);
  * orchwf_worker_processes counted the quarantine worker: 3 with --workers 2 after a
    kill, above orchwf_worker_processes_desired (fixed: it counts active workers).
"""

from __future__ import annotations

import os
import signal

import pytest
from opskit import Daemon, parse, query, total, wait_for
from proctools import children
from promkit import Prometheus, job_name, now, scaled_alert_rules

from orchwf import Client

pytestmark = pytest.mark.slow

CONCURRENCY = 4
LOAD = 60  # ops_slow instances of two 0.2 s steps: 120 steps on 8 slots, a few seconds


def _count(dsn: str, sql: str, params: object = None) -> int:
    return int(query(dsn, sql, params)[0][0])


def _finished(dsn: str, ids: list[str]) -> bool:
    return _count(dsn, "SELECT count(*) FROM orchwf_workflow_instances WHERE id = ANY(%s::uuid[])"
                       " AND status IN ('completed', 'failed', 'cancelled')", (ids,)) == len(ids)


def _completed_steps(dsn: str) -> int:
    return _count(dsn, "SELECT count(*) FROM orchwf_step_instances WHERE status = 'completed'")


def test_real_prometheus_sees_counters_gauges_and_alerts(daemon, prometheus, ops_db: str) -> None:
    job = job_name()
    d: Daemon = daemon("--workers", "2", "--concurrency", str(CONCURRENCY))
    rules, changes = scaled_alert_rules()
    assert any("OrchwfReadyStepWaiting: threshold 300s -> 5s" in c for c in changes), changes
    prom: Prometheus = prometheus([f"127.0.0.1:{d.port}"], rules)
    d.wait_ready()
    # Prometheus evaluates its rules from its start, and its first scrape of the daemon may
    # come a second or two later: until then sum(orchwf_worker_db_connected) is nothing, so
    # OrchwfNoLiveWorkers goes pending and, with `for` scaled down, fires for a moment (CI
    # runs saw its firing samples inside the window below). That start-up alert must be
    # over before the measured window begins.
    prom.wait_quiet_after_first_scrape()

    # -- warm-up: every series the load will touch exists before the measured window ------
    # (a labelled counter appears with its first increment; see the report on
    # increase() below for why the window starts after that)
    with Client(ops_db) as client:
        warm = client.enqueue_many("ops_slow", [{"sleep": 0.05}] * 2)
        wait_for(lambda: _finished(ops_db, warm), 30, "the warm-up instances")
        warm_completed = _completed_steps(ops_db)
        assert warm_completed == 4
        wait_for(lambda: total(d.scrape(), "orchwf_steps_completed_total") == warm_completed,
                 what="the warm-up in the daemon's counters")

        def settled() -> float | None:
            series = prom.samples("orchwf_steps_completed_total[5s]")
            last = [points[-1] for points in series.values()]
            if not last or sum(v for _, v in last) != warm_completed or len({t for t, _ in last}) != 1:
                return None
            return last[0][0]

        # t0: a scrape of the settled counters, the first sample of the measured window
        t0 = wait_for(settled, 30, "prometheus to scrape the warm-up's counters")
        assert prom.value(f'up{{job="{job}"}}', t0) == 1

        # -- healthy phase: load, and one worker killed with SIGKILL while it runs steps ----
        ids = client.enqueue_many("ops_slow", [{"sleep": 0.2}] * LOAD)

        def victim() -> int | None:
            rows = query(ops_db, "SELECT pid FROM orchwf_workers w WHERE role = 'worker' AND EXISTS ("
                                 " SELECT 1 FROM orchwf_step_instances s WHERE s.lease_owner = w.worker_id"
                                 " AND s.status = 'running')")
            return rows[0][0] if rows else None

        pid = wait_for(victim, what="a worker running steps")
        wait_for(lambda: _completed_steps(ops_db) > warm_completed + 8, what="some completions")
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: _finished(ops_db, ids), 90, "the load to finish")
    completed = _completed_steps(ops_db) - warm_completed
    assert completed == 2 * LOAD
    # the database gauges are cached for 5 s: the drained queue shows up a little later
    wait_for(lambda: prom.value(f'max(orchwf_ready_steps{{job="{job}", queue="default"}})') == 0,
             20, "the ready-steps gauge to drop to 0 after the load")
    t1 = prom.wait_scraped_after(now() + 0.2)

    # increase() extrapolates to the ends of its window unless the window starts and ends
    # on samples: [t0 - 1 ms, t1] starts on the warm-up sample and ends on a scrape taken
    # after the last completion (the 1 ms extrapolated is 0.01 of a step at most).
    window = f"{round((t1 - t0) * 1000) + 1}ms"
    counted = prom.value(f"sum(increase(orchwf_steps_completed_total[{window}]))", t1)
    assert counted is not None
    # A kill -9 may lose one group-commit batch (the victim's slots) from the counter,
    # never count a step twice (docs/operations.md, ## Metrics).
    assert completed - CONCURRENCY <= counted <= completed + 0.05, (counted, completed)
    assert prom.value(f"sum(resets(orchwf_steps_completed_total[{window}]))", t1) == 0, \
        "a counter went backwards across the kill: Prometheus saw a reset"
    # a first rescue is an increase too (its series must exist, at 0, before it)
    rescued = _count(ops_db, "SELECT count(*) FROM orchwf_workflow_events WHERE event_type = 'step.rescued'")
    seen = prom.value(f'sum(increase(orchwf_steps_rescued_total{{cause="worker_death"}}[{window}]))', t1)
    assert seen is not None and round(seen, 2) == rescued, (seen, rescued)
    restarts = prom.value(f"sum(increase(orchwf_worker_restarts_total[{window}]))", t1)
    assert restarts is not None and round(restarts, 2) == 1.0
    # p50 of 0.2 s steps: in the (0.1, 0.25] bucket unless the machine is very slow
    p50 = prom.value("histogram_quantile(0.5, sum(rate(orchwf_step_duration_seconds_bucket"
                     f"[{window}])) by (le))", t1)
    assert p50 is not None and 0.1 < p50 <= 1.0, p50
    mean = prom.value(f"sum(rate(orchwf_step_duration_seconds_sum[{window}]))"
                      f" / sum(rate(orchwf_step_duration_seconds_count[{window}]))", t1)
    assert mean is not None and 0.2 <= mean < 2.5, mean  # time.sleep(0.2) never returns early
    # the supervisor served every scrape, through the kill
    assert prom.value(f'min_over_time(up{{job="{job}"}}[{window}])', t1) == 1
    print(f"window {window}: completed {completed}, increase {counted}, p50 {p50}, mean {mean}")
    # no alert fired (nor was pending long enough to) while the daemon was healthy
    fired = prom.query(f'ALERTS{{alertstate="firing"}}[{window}]', t1)
    assert fired == [], fired
    # every series Prometheus ingested (OpenMetrics, negotiated) is in the text exposition
    # and the other way round: the two formats agree on the names
    status, _, body = d.get("/metrics")
    assert status == 200
    text_names = set(parse(body.decode()))
    ingested = set(prom.api("label/__name__/values", **{"match[]": f'{{job="{job}"}}'}))
    assert {n for n in ingested if n.startswith("orchwf_")} == {n for n in text_names if n.startswith("orchwf_")}
    targets = [t for t in prom.targets() if t["labels"].get("job") == job]
    assert len(targets) == 1 and targets[0]["health"] == "up" and targets[0]["lastError"] == "", targets
    assert targets[0]["labels"].get("env") == "production"  # the deployed target labels

    # -- backlog: every worker process paused, work enqueued -------------------------------
    wait_for(lambda: _count(ops_db, "SELECT count(*) FROM orchwf_step_instances WHERE status = 'running'") == 0,
             what="no step running")
    paused = children(d.pid)
    assert paused
    for child in paused:
        os.kill(child, signal.SIGSTOP)
    try:
        with Client(ops_db) as client:
            backlog = client.enqueue_many("ops_chain", [{}] * 5)
        wait_for(lambda: prom.value(f'max(orchwf_ready_steps{{job="{job}", queue="default"}})') == 5,
                 20, "the ready-steps gauge to show the backlog")
        waiting = wait_for(lambda: prom.firing("OrchwfReadyStepWaiting"), 40, "OrchwfReadyStepWaiting to fire")
        assert [a["labels"]["queue"] for a in waiting] == ["default"]
        # paused is not down: the workers keep their connections and the target is up
        assert not prom.firing("OrchwfNoLiveWorkers")
        assert prom.value(f'up{{job="{job}"}}') == 1
    finally:
        for child in paused:
            os.kill(child, signal.SIGCONT)
    wait_for(lambda: _finished(ops_db, backlog), 30, "the backlog to drain")
    wait_for(lambda: prom.value(f'max(orchwf_ready_steps{{job="{job}", queue="default"}})') == 0,
             20, "the ready-steps gauge to drop to 0 after the backlog")
    wait_for(lambda: not prom.firing("OrchwfReadyStepWaiting"), 20, "OrchwfReadyStepWaiting to resolve")

    # -- the daemon stops: its target goes down and no worker is left ----------------------
    assert d.stop() == 0
    wait_for(lambda: prom.value(f'up{{job="{job}"}}') == 0, 20, "up to drop to 0")
    down = wait_for(lambda: prom.firing("OrchwfNoLiveWorkers"), 30, "OrchwfNoLiveWorkers to fire")
    assert down[0]["labels"]["severity"] == "critical"

    # every rule evaluated against real data without an error
    for rule in prom.rules():
        assert rule["health"] == "ok" and not rule.get("lastError"), rule


def test_step_counters_start_at_zero_in_prometheus(daemon, prometheus, ops_db: str) -> None:
    job = job_name()
    d: Daemon = daemon("--workers", "1")
    prom: Prometheus = prometheus([f"127.0.0.1:{d.port}"])
    d.wait_ready()
    start = prom.wait_scraped_after(now())  # a scrape before any step ran: the window's first sample
    with Client(ops_db) as client:
        ids = client.enqueue_many("ops_chain", [{}] * 2)
        wait_for(lambda: _finished(ops_db, ids), 30, "the instances to finish")
    t1 = prom.wait_scraped_after(now() + 0.2)
    window = f"{round((t1 - start) * 1000) + 1}ms"
    assert _completed_steps(ops_db) == 6
    firsts = prom.query(f'min_over_time(orchwf_steps_completed_total{{job="{job}"}}[{window}])', t1)
    assert firsts, "no completed-steps series at all"
    assert all(float(r["value"][1]) == 0 for r in firsts), \
        f"series first seen above 0: {[(r['metric'].get('step'), r['value'][1]) for r in firsts]}"
    counted = prom.value(f"sum(increase(orchwf_steps_completed_total[{window}]))", t1)
    assert counted is not None and 6 <= counted <= 6.05, counted
