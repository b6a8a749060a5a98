"""deploy/: alert rules (promtool), the scrape config, the Grafana dashboard; and the
database statistics behind the gauges (orchwf_queue_stats, DatabaseCollector)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import psycopg
import pytest
from dbtools import finish as end_instances
from opskit import HERE, REPO, promtool, query, run_one

from orchwf import Client
from orchwf.daemon import metrics

DEPLOY = REPO / "deploy"


def _promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    tool = promtool()
    if tool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus; .ci/run does it)")
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_alert_rules_pass_promtool_check() -> None:
    run = _promtool("check", "rules", str(DEPLOY / "alerts.yml"))
    assert run.returncode == 0, run.stdout + run.stderr


def test_alert_rules_fire_when_they_should() -> None:
    run = _promtool("test", "rules", str(HERE / "alerts_test.yml"))
    assert run.returncode == 0, run.stdout + run.stderr


def test_scrape_config_passes_promtool_check() -> None:
    run = _promtool("check", "config", "prometheus.yml", cwd=DEPLOY)
    assert run.returncode == 0, run.stdout + run.stderr


def exposed_names() -> set[str]:
    """Every sample name the daemon can expose (multiprocess metrics and collectors)."""

    class FakeConn:
        closed = False

        def execute(self, *args: object) -> FakeConn:
            return self

        def fetchall(self) -> list[tuple[str, str, float | None, float | None, object]]:
            return [("queue", "q", 1.0, 2.0, None), ("paused", "q", 1.0, 5.0, None), ("table", "t", 1.0, 2.0, None),
                    ("inserted", "x", 1.0, None, None), ("workers", "worker", 1.0, None, None),
                    ("finished:completed", "w", 1.0, None, None), ("horizon", "", None, None, None)]

    families = [m for c in (metrics.SupervisorCollector(lambda: 1, lambda: 1),
                            metrics.DatabaseCollector("public", FakeConn)) for m in c.collect()]
    from prometheus_client import REGISTRY

    families += [m for m in REGISTRY.collect() if m.name.startswith("orchwf_")]
    names = set()
    for family in families:
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names |= {family.name + s for s in suffixes}
    return names


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(orchwf_[a-z_]+)", expr))


def test_dashboard_and_alerts_use_only_exposed_metrics() -> None:
    known = exposed_names()
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) > 20
    used = set().union(*(_metric_names(e) for e in exprs))
    assert used - known == set()
    rules = [line for line in (DEPLOY / "alerts.yml").read_text().splitlines() if not line.lstrip().startswith("#")]
    assert _metric_names("\n".join(rules)) - known == set()
    # every panel has a unique id and a data source
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert all(p.get("datasource") for p in dashboard["panels"] if p["type"] != "row")


def test_documented_metrics_are_exposed() -> None:
    docs = (REPO / "docs" / "operations.md").read_text()
    section = docs.split("## Metrics", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(orchwf_[a-z_]+)`", section, re.M))
    known = exposed_names()
    families = {n.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count") for n in known}
    assert documented and documented - known - families == set()
    undocumented = {n for n in known if not n.endswith(("_bucket", "_sum", "_count"))} - documented
    assert undocumented == set()


def test_worker_env_is_plain_key_value() -> None:
    for raw in (DEPLOY / "worker.env").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S.*", line), line  # no export, no spaces around =


# -- the database side of the gauges -------------------------------------------------------


def test_queue_stats_per_queue_with_priorities(ops_db: str) -> None:
    with Client(ops_db) as client:
        client.enqueue_many("ops_chain", [{}] * 3)
        client.enqueue_many("ops_chain", [{}] * 2, queue="bulk", priority=7)
        client.enqueue_many("ops_chain", [{}] * 4, queue="bulk", priority=-2)
    query(ops_db, "UPDATE orchwf_ready_steps SET ready_at = now() - interval '1 hour' WHERE priority = -2")
    rows = query(ops_db, "SELECT queue, ready, extract(epoch FROM now() - oldest_ready_at)"
                         " FROM orchwf_queue_stats()")
    stats = {q: (n, age) for q, n, age in rows}
    assert stats.keys() == {"bulk", "default"}
    assert stats["bulk"][0] == 6 and stats["default"][0] == 3
    assert 3590 < stats["bulk"][1] < 3700  # the oldest is in the lowest priority group
    assert stats["default"][1] < 60
    # the depth saturates at the cap; the groups walked are capped too
    capped = dict(query(ops_db, "SELECT queue, ready FROM orchwf_queue_stats(2)"))
    assert capped == {"bulk": 2, "default": 2}
    assert len(query(ops_db, "SELECT * FROM orchwf_queue_stats(100, 1)")) == 1
    assert query(ops_db, "DELETE FROM orchwf_ready_steps RETURNING 1")
    assert query(ops_db, "SELECT * FROM orchwf_queue_stats()") == []


def test_queue_stats_and_the_scrape_query_never_scan_a_whole_table(ops_db: str) -> None:
    with Client(ops_db) as client:
        for queue, priority in (("default", 0), ("default", 3), ("bulk", 0)):
            client.enqueue_many("ops_chain", [{}] * 3000, queue=queue, priority=priority)
        finished = client.enqueue_many("ops_chain", [{}] * 6000, queue="done")
    # history: finished instances, all older than the window the scrape counts
    end_instances(ops_db, finished, "completed", offset="-1 hour")
    query(ops_db, "DELETE FROM orchwf_ready_steps WHERE queue = 'done'")
    query(ops_db, "VACUUM ANALYZE")
    with psycopg.connect(ops_db, autocommit=True) as conn:
        if conn.info.server_version < 150000:
            pytest.skip("pg_stat_force_next_flush needs PostgreSQL 15")

        def seq_scans() -> dict[str, int]:
            conn.execute("SELECT pg_stat_force_next_flush()")
            conn.execute("SELECT pg_stat_clear_snapshot()")
            # an empty table (a partition of a day with no history yet) costs nothing to scan
            return dict(conn.execute("SELECT s.relname::text, s.seq_scan FROM pg_stat_user_tables s"
                                     " JOIN pg_class c ON c.oid = s.relid"
                                     " WHERE s.relname LIKE 'orchwf_%' AND c.relpages > 0").fetchall())

        collector = metrics.DatabaseCollector("public", lambda: conn, ttl=0)
        list(collector.collect())  # the first scrape sets the horizon of the finished count
        before = seq_scans()
        families = {m.name: m for m in collector.collect()}
        after = seq_scans()
    assert families["orchwf_db_stats_up"].samples[0].value == 1
    assert {s.labels["queue"]: s.value for s in families["orchwf_ready_steps"].samples} == {
        "bulk": 3000, "default": 6000}
    scanned = {k for k in after if after[k] != before.get(k, 0)}
    # the registries of live processes and of definition versions: a few rows each
    assert scanned <= {"orchwf_workers", "orchwf_workflow_versions"}


def test_database_collector_caches_and_survives_errors() -> None:
    calls = []
    now = [100.0]

    class Conn:
        closed = False
        fail = False

        def execute(self, *args: object) -> Conn:
            calls.append(args)
            if self.fail:
                raise psycopg.OperationalError("server closed the connection unexpectedly")
            return self

        def fetchall(self) -> list[tuple[str, str, float | None, float | None, object]]:
            return [("queue", "default", 5.0, 12.5, None)]

    conn = Conn()
    collector = metrics.DatabaseCollector("public", lambda: conn, queues=["default", "idle"], ttl=5,
                                          clock=lambda: now[0])
    first = {m.name: m for m in collector.collect()}
    assert {s.labels["queue"]: s.value for s in first["orchwf_ready_steps"].samples} == {"default": 5, "idle": 0}
    assert first["orchwf_oldest_ready_step_age_seconds"].samples[0].value == 12.5
    now[0] += 4
    list(collector.collect())
    assert len(calls) == 1  # one query per ttl, whatever the scrape rate
    now[0] += 2
    conn.fail = True
    failed = {m.name: m for m in collector.collect()}
    assert len(calls) == 2
    assert failed["orchwf_db_stats_up"].samples[0].value == 0 and "orchwf_ready_steps" not in failed
    conn.closed = True
    now[0] += 10
    assert [m.name for m in collector.collect()] == ["orchwf_db_stats_up"]
    assert len(calls) == 2  # no query on a closed connection


def test_workflow_outcome_counters_count_each_instance_once(ops_db: str) -> None:
    with Client(ops_db) as client:
        ids = client.enqueue_many("ops_chain", [{}] * 6)
        other = client.enqueue("ops_fail", {})
    with psycopg.connect(ops_db, autocommit=True) as conn:
        collector = metrics.DatabaseCollector("public", lambda: conn, ttl=0)

        def counts() -> dict[tuple[str, str], float]:
            found = {}
            for family in collector.collect():
                status = family.name.removeprefix("orchwf_workflows_")
                if status in metrics.FINAL_STATUSES:
                    for sample in family.samples:
                        found[(status, sample.labels["workflow"])] = sample.value
            return found

        def finish(iid: str, status: str, offset: str) -> None:
            """End an instance at the first horizon + offset (completed_at is what counts)."""
            end_instances(conn, [iid], status, completed_at=collector.horizon, offset=offset)

        assert counts() == {}  # the first scrape only sets the horizon: counting starts there
        assert collector.horizon is not None
        finish(ids[0], "completed", "0 s")  # exactly at the horizon: counted
        finish(ids[1], "completed", "0.5 s")
        finish(ids[2], "completed", "0.5 s")
        finish(ids[3], "cancelled", "0.2 s")
        finish(other, "failed", "0.7 s")
        finish(ids[5], "failed", "-1 s")  # before the horizon: belongs to an earlier scrape
        # just finished: not counted yet (the transaction that ended it might commit later)
        end_instances(conn, [ids[4]], "completed")
        time.sleep(1.0)  # the next horizon moves past the first one + 0.7s
        expected = {("completed", "ops_chain"): 3, ("cancelled", "ops_chain"): 1, ("failed", "ops_fail"): 1}
        assert counts() == expected
        assert counts() == expected  # nothing is counted twice


def test_run_one_helper_plays_a_worker(ops_db: str) -> None:
    # (a guard for the CLI tests that rely on it)
    with Client(ops_db) as client:
        iid = client.enqueue("ops_fail", {})
    assert run_one(ops_db, "completed") == (iid, "first")
    assert run_one(ops_db, "failed") == (iid, "boom")
    assert query(ops_db, "SELECT status FROM orchwf_workflow_instances WHERE id = %s", (iid,)) == [("failed",)]
