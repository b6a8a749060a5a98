"""deploy/grafana-dashboard.json cannot drift from the metrics: every query of every panel
(rows and nested panels included, Grafana's variables filled in) must parse, run on a real
Prometheus without an error, and use only metric names a real daemon exposes.

The daemon runs obsapp through the rare events too (a retry, a timeout, a kill -9, a
shutdown that releases claims, a cancel that makes a result stale): in multiprocess mode a
labelled counter is not in /metrics at all until it first counts something.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opskit import Daemon, parse, promtool, query, total, wait_for
from promkit import DEPLOY, Prometheus, job_name, now

from orchwf import Client

DASHBOARD = DEPLOY / "grafana-dashboard.json"

#: Grafana's built-in variables, as Grafana would fill them for a 1 s scrape interval.
BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__interval_ms": "15000", "__range": "1h",
            "__range_s": "3600", "__range_ms": "3600000"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]|\$(\w+)")
_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
                 "bottomk", "topk", "quantile", "limitk", "limit_ratio"}
_KEYWORDS = _AGGREGATIONS | {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                             "offset", "and", "or", "unless", "atan2", "inf", "nan", "start", "end"}


# -- reading the dashboard --------------------------------------------------------------


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, also those inside rows (a collapsed row keeps its panels in ``panels``)."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels") or [])


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, expr) of every Prometheus query: panel targets and query variables."""
    found = []
    for panel in all_panels(dashboard.get("panels") or []):
        for target in panel.get("targets") or []:
            if target.get("expr"):
                found.append((f"panel {panel.get('id')} {panel.get('title')!r} {target.get('refId')}",
                              target["expr"]))
    return found


def variable_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(variable, query) of the template variables that query Prometheus."""
    found = []
    for variable in (dashboard.get("templating") or {}).get("list") or []:
        if variable.get("type") == "query":
            q = variable.get("query")
            found.append((variable["name"], q.get("query", "") if isinstance(q, dict) else str(q)))
    return found


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's $var, ${var}, ${var:format} and [[var]] replaced by concrete values."""
    def one(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name not in values:
            raise AssertionError(f"no test value for the Grafana variable ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(one, expr)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (a small lexer: no Prometheus parser in Python)."""
    names = set(re.findall(r"__name__\s*=\s*\"([^\"]+)\"", expr))
    text = re.sub(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|`[^`]*`", "\"\"", expr)  # strings
    text = re.sub(r"\{[^}]*\}", " ", text)   # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r" \1 ", text)  # label lists
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word, before, after = match.group(0), text[:match.start()], text[match.end():]
        if before[-1:].isdigit() or before[-1:] == ".":
            continue  # the exponent or unit of a number or duration (1e3, 5m)
        if after.lstrip().startswith("(") or word.lower() in _KEYWORDS:
            continue  # a function, an aggregation or a keyword
        names.add(word)
    return names


def test_metric_names_lexer() -> None:
    # the checks below rely on it: it must find selectors and nothing else
    assert metric_names('histogram_quantile(0.95, sum by (le, workflow) (rate(x_bucket{job=~"$job|a"}[5m])))') \
        == {"x_bucket"}
    assert metric_names("sum without (instance) (increase(a_total[15m])) > 3 and on (job) group_left (q) b") \
        == {"a_total", "b"}
    assert metric_names('(sum(c) or vector(0)) == 0 unless {__name__="d", le="1e3"} offset 5m * 1e-3') \
        == {"c", "d"}
    assert metric_names("max by (queue) (e) > 0.2 * max by (queue) (f:recorded)") == {"e", "f:recorded"}
    assert metric_names("rate(g[$__rate_interval]) / ignoring(le) h") == {"g", "h"}


def test_every_panel_has_a_query_and_every_variable_a_value() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    found = queries(dashboard)
    assert len(found) > 20
    values = dict(BUILTINS, job=job_name(), instance="127.0.0.1:9464")
    for panel in all_panels(dashboard["panels"]):
        if panel.get("type") != "row":
            assert any(t.get("expr") for t in panel.get("targets") or []), f"panel {panel.get('title')!r} has no query"
    for where, expr in found:
        concrete = substitute(expr, values)
        assert "$" not in concrete and "[[" not in concrete, (where, concrete)
        assert metric_names(concrete), f"{where}: no metric in {concrete!r}"
    # a panel moved into a collapsed row is still found
    nested = {"panels": [{"type": "row", "panels": [{"id": 9, "targets": [{"refId": "A", "expr": "x"}]}]}]}
    assert queries(nested) == [("panel 9 None A", "x")]


# -- against a real daemon and a real Prometheus --------------------------------------------


def _count(dsn: str, sql: str, params: object = None) -> int:
    return int(query(dsn, sql, params)[0][0])


def _all_finished(dsn: str) -> bool:
    return _count(dsn, "SELECT count(*) FROM orchwf_workflow_instances"
                       " WHERE status NOT IN ('completed', 'failed', 'cancelled')") == 0


def _running(dsn: str, workflow: str) -> list[tuple[Any, ...]]:
    """(pid of the worker, instance id) of each running step of ``workflow``."""
    return query(dsn, "SELECT w.pid, s.workflow_inst_id FROM orchwf_step_instances s"
                      " JOIN orchwf_workflow_instances i ON i.id = s.workflow_inst_id"
                      " JOIN orchwf_workers w ON w.worker_id = s.lease_owner"
                      " WHERE s.status = 'running' AND i.workflow_id = %s", (workflow,))


def make_every_metric_happen(d: Daemon, dsn: str, tmp_path: Path) -> None:
    """Drive the daemon through every event a metric counts (see the module docstring)."""
    marker = tmp_path / "failing"
    marker.touch()
    with Client(dsn) as client:
        # completions, failures (required and optional), a retry, a timeout, step logs
        client.enqueue_many("ops_chain", [{}] * 2)
        client.enqueue("ops_fail", {"fail_while": str(marker)})
        client.enqueue("ops_optional", {"fail_while": str(marker)})
        client.enqueue("ops_flaky", {})
        client.enqueue("ops_timeout", {})
        wait_for(lambda: _all_finished(dsn), 30, "the first instances to finish")
        # a worker killed while it runs a step: a rescue and a restart
        held = [client.enqueue("ops_hold", {"hold": 60})]
        pid = wait_for(lambda: _running(dsn, "ops_hold"), what="a held step")[0][0]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: total(d.scrape(), "orchwf_worker_restarts_total") == 1, what="the restart")
        # a worker retired while it holds steps: they are released at its shutdown timeout
        held += client.enqueue_many("ops_hold", [{"hold": 60}] * 4)
        wait_for(lambda: len({p for p, _ in _running(dsn, "ops_hold")}) >= 2 and
                 total(d.scrape(), "orchwf_worker_slots_idle") == 0, what="both workers busy")
        d.proc.send_signal(signal.SIGTTOU)
        wait_for(lambda: total(d.scrape(), "orchwf_steps_released_total") > 0, 20, "a release")
        d.proc.send_signal(signal.SIGTTIN)
        # cancelled while running: the workers' results come back stale
        wait_for(lambda: len(_running(dsn, "ops_hold")) >= 3, what="held steps running again")
        for iid in held:
            client.cancel_workflow(iid)
        wait_for(lambda: total(d.scrape(), "orchwf_stale_results_total") > 0, 20, "a stale result")
    wait_for(lambda: _all_finished(dsn), 30, "every instance to finish")
    # The database counts finished instances once they are 60 s old (FINISH_LAG_SECONDS):
    # age them instead of waiting a minute (the supervisor's first scrape set its horizon
    # before this: they are counted once, at the next query).
    query(dsn, "UPDATE orchwf_instance_history SET completed_at = now() - interval '59 seconds'"
               " WHERE status IN ('completed', 'failed', 'cancelled')")

    def every_outcome() -> bool:
        names = set(d.scrape())
        return {"orchwf_workflows_completed_total", "orchwf_workflows_failed_total",
                "orchwf_workflows_cancelled_total"} <= names

    wait_for(every_outcome, 20, "the database's workflow counters")


def _promtool_query(server: str, expr: str) -> subprocess.CompletedProcess[str]:
    tool = promtool()
    if tool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus, as .ci/run does)")
    return subprocess.run([tool, "query", "instant", server, expr], capture_output=True, text=True, timeout=30)


@pytest.mark.slow
def test_dashboard_queries_run_on_prometheus_and_use_only_exposed_metrics(daemon, prometheus, tmp_path: Path) -> None:
    d: Daemon = daemon("--workers", "2", "--concurrency", "2", "--shutdown-timeout", "1", app="obsapp")
    prom: Prometheus = prometheus([f"127.0.0.1:{d.port}"])
    d.wait_ready()
    make_every_metric_happen(d, d.dsn, tmp_path)
    status, _, body = d.get("/metrics")
    assert status == 200
    scraped = set(parse(body.decode()))
    # two scrapes of the final state: rates over it have two samples
    prom.wait_scraped_after(now() + 1.0)

    dashboard = json.loads(DASHBOARD.read_text())
    values = dict(BUILTINS, job=job_name(), instance=f"127.0.0.1:{d.port}")
    problems = []
    used: set[str] = set()
    for where, expr in queries(dashboard):
        concrete = substitute(expr, values)
        run = _promtool_query(prom.url, concrete)
        if run.returncode != 0 or "error" in (run.stdout + run.stderr).lower():
            problems.append(f"{where}: promtool query instant failed: {run.stdout}{run.stderr}")
            continue
        names = metric_names(concrete)
        used |= names
        missing = names - scraped
        if missing:
            problems.append(f"{where}: not in the daemon's /metrics: {sorted(missing)} ({concrete})")
        elif not prom.query(concrete):
            problems.append(f"{where}: no data on a Prometheus that scraped every metric: {concrete}")
    for name, q in variable_queries(dashboard):
        match = re.fullmatch(r"\s*label_values\(\s*(?:(.+?)\s*,\s*)?(\w+)\s*\)\s*", q)
        assert match, f"variable {name}: unexpected query {q!r}"
        series, label = match.groups()
        if series:
            used |= metric_names(series)
            if not metric_names(series) <= scraped:
                problems.append(f"variable {name}: {series} is not in the daemon's /metrics")
            found = prom.api("label/" + label + "/values", **{"match[]": series})
        else:
            found = prom.api("label/" + label + "/values")
        if job_name() not in found and label == "job":
            problems.append(f"variable {name}: {q} does not list the job {job_name()} ({found})")
    assert problems == [], "\n".join(problems)
    # Prometheus ingested the same names (the real scrape negotiates OpenMetrics)
    ingested = set(prom.api("label/__name__/values", **{"match[]": f'{{job="{job_name()}"}}'}))
    assert used <= ingested, sorted(used - ingested)
    # and a parse error is reported as one (the check above can fail)
    assert _promtool_query(prom.url, "sum(rate(orchwf_steps_completed_total[1m])").returncode != 0
