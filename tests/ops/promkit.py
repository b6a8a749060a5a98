"""A real Prometheus server for the operations tests.

Debian's ``prometheus`` binary (the package .ci/run installs for promtool) runs on a free
loopback port with its own data directory, a configuration derived from
deploy/prometheus.yml (same job, path and target labels; only the targets and the
intervals change) and, optionally, deploy/alerts.yml as its rule file. The tests then
ask it questions through its HTTP API, as Grafana or an operator would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from opskit import REPO, free_port, wait_for

DEPLOY = REPO / "deploy"
#: Set to the path of a prometheus binary to use that one instead of the one on PATH.
BINARY_ENV = "ORCHWF_TEST_PROMETHEUS"
#: The alert rules run this many times faster in the tests: their minutes become seconds.
TIME_SCALE = 60
#: Rules whose threshold is itself a duration (a gauge in seconds compared with a number).
_AGE_THRESHOLD = re.compile(r"(_age_seconds\s*\)?\s*>\s*)(\d+(?:\.\d+)?)")
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def prometheus_binary() -> str | None:
    """The real server binary: $ORCHWF_TEST_PROMETHEUS, else ``prometheus`` on PATH."""
    given = os.environ.get(BINARY_ENV)
    if given:
        return given if os.access(given, os.X_OK) else None
    return shutil.which("prometheus")


def require_prometheus() -> str:
    """The binary, or skip the test saying how to get one."""
    binary = prometheus_binary()
    if binary is None and os.environ.get(BINARY_ENV):
        pytest.skip(f"{BINARY_ENV}={os.environ[BINARY_ENV]} is not an executable")
    if binary is None:
        pytest.skip("the Prometheus server is not installed (apt-get install prometheus, as .ci/run does; "
                    f"or set {BINARY_ENV}=/path/to/prometheus)")
    return binary


def yaml_module() -> Any:
    return pytest.importorskip("yaml", reason="PyYAML is needed to read deploy/*.yml (pip install -e '.[dev]')")


def seconds(duration: str) -> float:
    """A Prometheus duration ("1h30m", "5m", "0s") in seconds."""
    parts = _DURATION.findall(duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a Prometheus duration: {duration!r}")
    return sum(int(n) * _UNIT_SECONDS[u] for n, u in parts)


def _duration(value: float) -> str:
    ms = round(value * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def scrape_config(targets: list[str], rule_files: list[str], interval: str = "1s") -> dict[str, Any]:
    """deploy/prometheus.yml pointed at ``targets``, scraping and evaluating every ``interval``.

    The job name, metrics path, target labels and any relabelling stay as deployed: the
    queries of the tests (and of the dashboard) see the labels production would.
    """
    config = yaml_module().safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"] = dict(config.get("global") or {}, scrape_interval=interval, evaluation_interval=interval)
    config["rule_files"] = rule_files
    jobs = [job for job in config["scrape_configs"] if job["job_name"] == job_name()]
    assert len(jobs) == 1, "deploy/prometheus.yml should have one orchwf job"
    job = jobs[0]
    job["scrape_interval"] = interval
    job["scrape_timeout"] = interval  # may not exceed the interval
    assert len(job["static_configs"]) == 1, "one static target group in deploy/prometheus.yml"
    job["static_configs"][0]["targets"] = targets
    return config


def job_name() -> str:
    """The scrape job of deploy/prometheus.yml (the value of ``job`` in every series)."""
    config = yaml_module().safe_load((DEPLOY / "prometheus.yml").read_text())
    names = [job["job_name"] for job in config["scrape_configs"]]
    assert len(names) == 1, names
    return str(names[0])


def scaled_alert_rules() -> tuple[str, list[str]]:
    """deploy/alerts.yml with its time scaled down TIME_SCALE times, and what changed.

    Only two kinds of numbers change: the ``for:`` durations, and the thresholds that are
    themselves durations (``..._age_seconds > 300``: five minutes). Every expression keeps
    its meaning; range selectors such as ``[10m]`` are left alone (they only widen the
    window a rate looks at). Five minutes of a stuck queue thus become five seconds.
    """
    yaml = yaml_module()
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    changes = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            if "for" in rule:
                scaled = _duration(seconds(rule["for"]) / TIME_SCALE)
                changes.append(f"{name}: for {rule['for']} -> {scaled}")
                rule["for"] = scaled

            def scale(match: re.Match[str], name: str = name) -> str:
                value = float(match.group(2)) / TIME_SCALE
                text = f"{value:g}"
                changes.append(f"{name}: threshold {match.group(2)}s -> {text}s")
                return match.group(1) + text

            rule["expr"] = _AGE_THRESHOLD.sub(scale, rule["expr"])
    return yaml.safe_dump(rules, sort_keys=False), changes


class PrometheusError(AssertionError):
    """The API answered with an error (e.g. a PromQL parse error)."""


class Prometheus:
    """A running ``prometheus`` process on 127.0.0.1 and its HTTP API."""

    def __init__(self, directory: Path, targets: list[str], rules: str | None = None,
                 interval: str = "1s") -> None:
        self.binary = require_prometheus()
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        rule_files = []
        if rules is not None:
            (directory / "alerts.yml").write_text(rules)
            rule_files = ["alerts.yml"]  # relative to the config file, as in deploy/
        config = scrape_config(targets, rule_files, interval)
        # JSON is YAML: no emitter quirks in the file Prometheus reads.
        (directory / "prometheus.yml").write_text(json.dumps(config, indent=2))
        self.log_path = directory / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        for _ in range(3):  # another process may take the free port before we bind it
            self.port = free_port()
            self._start()
            try:
                self.wait_ready()
                return
            except AssertionError:
                if self.proc is not None and self.proc.poll() is None:
                    raise
        raise AssertionError(f"prometheus did not start:\n{self.log()}")

    def _start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, f"--config.file={self.directory / 'prometheus.yml'}",
                 f"--storage.tsdb.path={self.directory / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}",
                 "--web.enable-lifecycle", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as resp:
                    return resp.status == 200
            except OSError:
                return False

        wait_for(ready, timeout, "prometheus to be ready")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    # -- the HTTP API ---------------------------------------------------------------------

    def api(self, path: str, **params: Any) -> Any:
        """GET /api/v1/<path>: its ``data``, or PrometheusError with the server's message."""
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None}, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query: the result list (vector or matrix)."""
        data = self.api("query", query=expr, time=None if at is None else f"{at:.3f}")
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def value(self, expr: str, at: float | None = None) -> float | None:
        """The one value of an instant query, or None when it returns nothing."""
        result = self.query(expr, at)
        assert len(result) <= 1, f"{expr}: more than one series: {result}"
        return float(result[0]["value"][1]) if result else None

    def samples(self, expr: str, at: float | None = None) -> dict[str, list[tuple[float, float]]]:
        """Raw samples of a range selector, by series (its labels as a JSON key)."""
        return {json.dumps(r["metric"], sort_keys=True): [(float(t), float(v)) for t, v in r["values"]]
                for r in self.query(expr, at)}

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending and firing) right now."""
        return self.api("alerts")["alerts"]

    def firing(self, name: str) -> list[dict[str, Any]]:
        return [a for a in self.alerts() if a["labels"].get("alertname") == name and a["state"] == "firing"]

    def rules(self) -> list[dict[str, Any]]:
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]

    def targets(self) -> list[dict[str, Any]]:
        return self.api("targets")["activeTargets"]

    def last_evaluation(self) -> float | None:
        """When every rule group was last evaluated (the oldest group's time), or None
        before the first evaluation."""
        stamps = [g.get("lastEvaluation") or "" for g in self.api("rules")["groups"]]
        if not stamps or any(s.startswith("0001-") or not s for s in stamps):
            return None
        return min(_epoch(s) for s in stamps)

    def wait_quiet_after_first_scrape(self, timeout: float = 30) -> None:
        """Wait for the alerts of Prometheus's start to be over. Rules are evaluated from
        its start, before its first scrape of the daemon, so an alert on an absent series
        (OrchwfNoLiveWorkers: no worker connected) goes pending and, with ``for`` scaled
        down, may fire. Over means: a scrape with a connected worker, then an evaluation
        after it, and no alert pending or firing. (Waiting for no alert alone returns at
        once before the first evaluation, and the alert fires afterwards.)"""
        def connected() -> float | None:
            found = [t for series in self.samples("orchwf_worker_db_connected[10s]").values()
                     for t, v in series if v > 0]
            return min(found) if found else None

        scraped = wait_for(connected, timeout, "a scrape of a connected worker")

        def quiet() -> bool:
            evaluated = self.last_evaluation()
            return evaluated is not None and evaluated > scraped and not self.alerts()

        wait_for(quiet, timeout, "an evaluation after the first scrape, with no alert active")

    def last_scrape(self) -> tuple[float, float] | None:
        """(time, up) of the newest scrape of the orchwf job, or None before the first."""
        found = [s for series in self.samples(f'up{{job="{job_name()}"}}[10s]').values() for s in series]
        return max(found) if found else None

    def wait_scraped_after(self, moment: float, timeout: float = 20) -> float:
        """Wait for a successful scrape that started after ``moment`` (wall clock); its time."""
        def scraped() -> float | None:
            last = self.last_scrape()
            return last[0] if last is not None and last[0] > moment and last[1] == 1 else None

        return wait_for(scraped, timeout, f"a scrape after {moment:.3f}")


def _epoch(stamp: str) -> float:
    """Seconds since the epoch of Prometheus's RFC 3339 time (nanoseconds cut to micro)."""
    stamp = re.sub(r"(\.\d{6})\d+", r"\1", stamp).replace("Z", "+00:00")
    return datetime.fromisoformat(stamp).timestamp()


def now() -> float:
    """Wall-clock time as Prometheus stamps samples (seconds since the epoch)."""
    return time.time()
