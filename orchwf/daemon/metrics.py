"""Prometheus metrics of the daemon.

Workers and the supervisor record into prometheus-client's multiprocess mode when
PROMETHEUS_MULTIPROC_DIR is set (run.py sets it before anything imports
prometheus_client, and before fork), so the numbers of all forked workers add up on
the supervisor's endpoint. Labels are bounded: workflow and step IDs (from code),
queue names, table names and outcomes; never instance, worker or process IDs.

Three kinds of metrics live here:
  * counters, histograms and gauges that processes record as things happen;
  * gauges the supervisor computes at scrape time from its own state
    (SupervisorCollector);
  * gauges and workflow counters read from the database at scrape time
    (DatabaseCollector): one query per scrape, cached for a few seconds, never a full
    table scan. They describe the whole database, so every supervisor on it reports the
    same values: aggregate them with max(), not sum().
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

log = logging.getLogger("orchwf.metrics")

STEPS_CLAIMED = Counter("orchwf_steps_claimed_total", "Steps claimed by workers", ["workflow", "step"])
STEPS_COMPLETED = Counter("orchwf_steps_completed_total", "Steps completed successfully", ["workflow", "step"])
STEPS_FAILED = Counter("orchwf_steps_failed_total", "Steps failed for good (skipped when optional)", ["workflow", "step", "outcome"])
STEPS_RETRIED = Counter("orchwf_steps_retried_total", "Failed attempts sent back to the queue", ["workflow", "step"])
STEPS_TIMED_OUT = Counter("orchwf_steps_timed_out_total", "Attempts that overran their timeout", ["workflow", "step"])
STEPS_RELEASED = Counter("orchwf_steps_released_total", "Claims given back at shutdown", ["workflow", "step"])
STEPS_RESCUED = Counter("orchwf_steps_rescued_total", "Claims taken back from dead or silent workers", ["cause"])
# Both causes exist at 0 from the start: a labelled series appears with its first
# increment, and rate()/increase() never count the value a series appears with, so the
# first rescue of a run (often the only one) was invisible to every query.
for _cause in ("worker_death", "lease_expired"):
    STEPS_RESCUED.labels(_cause)
STALE_RESULTS = Counter("orchwf_stale_results_total", "Results discarded because the lease was lost", ["workflow", "step"])
STEP_DURATION = Histogram(
    "orchwf_step_duration_seconds", "Duration of step attempts", ["workflow", "step"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
CLAIM_LATENCY = Histogram(
    "orchwf_claim_duration_seconds", "Round trip of one claim query",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
CLAIM_ROWS = Histogram("orchwf_claim_rows", "Steps returned per claim query", buckets=(0, 1, 2, 5, 10, 20, 50, 100, 200))
SLOTS_BUSY = Gauge("orchwf_worker_slots_busy", "Busy execution slots", multiprocess_mode="livesum")
SLOTS_IDLE = Gauge("orchwf_worker_slots_idle", "Idle execution slots", multiprocess_mode="livesum")
DB_CONNECTED = Gauge("orchwf_worker_db_connected", "Worker processes whose database connection is up", multiprocess_mode="livesum")

# Supervisor-side metrics.
WORKER_RESTARTS = Counter("orchwf_worker_restarts_total", "Workers that died unexpectedly and were replaced")
# livemax, not liveall: liveall would add a pid label (an instance ID).
LISTEN_UP = Gauge("orchwf_listen_connection_up", "1 when the supervisor's LISTEN connection is alive (0 also with --no-listen)",
                  multiprocess_mode="livemax")


def declare_steps(definitions: Iterable[Any]) -> None:
    """Create every per-step series at 0 before the first scrape (and before fork, so the
    supervisor's file holds them): Prometheus never counts the value a series first
    appears with, so a series born at 1 would lose its first step from increase()."""
    for definition in definitions:
        for step in definition.steps:
            key = (definition.id, step.id)
            for counter in (STEPS_CLAIMED, STEPS_COMPLETED, STEPS_RETRIED, STEPS_TIMED_OUT, STEPS_RELEASED,
                            STALE_RESULTS):
                counter.labels(*key)
            for outcome in ("failed", "skipped"):
                STEPS_FAILED.labels(*key, outcome)
            STEP_DURATION.labels(*key)


def steps_claimed(steps: Iterable[tuple[str, str]]) -> None:
    """A claim's steps, (workflow, step) each: one counter update per label pair, since
    the label lookup costs more than the update."""
    counts: dict[tuple[str, str], int] = {}
    for key in steps:
        counts[key] = counts.get(key, 0) + 1
    for (workflow, step), n in counts.items():
        STEPS_CLAIMED.labels(workflow, step).inc(n)


def steps_completed(steps: Iterable[tuple[str, str, int]]) -> None:
    """Accepted completions, (workflow, step, duration in ms) each, grouped as above."""
    groups: dict[tuple[str, str], list[int]] = {}
    for workflow, step, ms in steps:
        groups.setdefault((workflow, step), []).append(ms)
    for (workflow, step), durations in groups.items():
        STEPS_COMPLETED.labels(workflow, step).inc(len(durations))
        histogram = STEP_DURATION.labels(workflow, step)
        for ms in durations:
            histogram.observe(ms / 1000.0)


def step_finished(workflow: str, step: str, outcome: str, accepted: bool, duration_ms: int) -> None:
    if not accepted:
        STALE_RESULTS.labels(workflow, step).inc()
        return
    if outcome == "completed":
        STEPS_COMPLETED.labels(workflow, step).inc()
    elif outcome in ("failed", "skipped"):
        STEPS_FAILED.labels(workflow, step, outcome).inc()
    elif outcome == "retry":
        STEPS_RETRIED.labels(workflow, step).inc()
    elif outcome == "release":
        STEPS_RELEASED.labels(workflow, step).inc()
        return
    elif outcome == "wait":
        return  # a child workflow started: the step finishes when it reports
    STEP_DURATION.labels(workflow, step).observe(duration_ms / 1000.0)


def step_timed_out(workflow: str, step: str) -> None:
    STEPS_TIMED_OUT.labels(workflow, step).inc()


def steps_rescued(cause: str, n: int) -> None:
    if n:
        STEPS_RESCUED.labels(cause).inc(n)


def observe_claim(seconds: float, rows: int) -> None:
    CLAIM_LATENCY.observe(seconds)
    CLAIM_ROWS.observe(rows)


def slots(busy: int, total: int) -> None:
    SLOTS_BUSY.set(busy)
    SLOTS_IDLE.set(total - busy)


def db_connected(up: bool) -> None:
    DB_CONNECTED.set(1 if up else 0)


def process_exited(pid: int) -> None:
    """Drop a dead worker's live gauges (its slots), keeping its counters in the totals."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


# -- scrape-time collectors -----------------------------------------------------------------


class SupervisorCollector:
    """Gauges from the supervisor's own state, read at scrape time."""

    def __init__(self, processes: Callable[[], int], desired: Callable[[], int]) -> None:
        self.processes = processes
        self.desired = desired

    def describe(self) -> list[Metric]:
        return []  # nothing to check at registration; collect() runs at scrape time only

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("orchwf_worker_processes", "Live worker processes of this supervisor (not the quarantine worker, nor ones retiring)",
                                value=self.processes())
        yield GaugeMetricFamily("orchwf_worker_processes_desired", "Worker processes this supervisor wants",
                                value=self.desired())


#: The tables whose dead tuples are exported (the ones updated or deleted on every step).
HOT_TABLES = ("orchwf_ready_steps", "orchwf_running_steps", "orchwf_live_steps", "orchwf_live_instances")
#: Ready steps are counted exactly up to this many per queue, then the gauge saturates.
DEPTH_CAP = 50_000
#: A worker row whose heartbeat is older than this is not counted as live.
LIVE_WORKER_SECONDS = 60
#: Finished instances are counted once their completed_at is this old: completed_at is
#: the start of the transaction that ended them, which commits a little later.
FINISH_LAG_SECONDS = 60
#: After a gap in scraping, finished instances older than this are not counted (bounds
#: the work of one scrape).
FINISH_MAX_GAP_SECONDS = 900
FINAL_STATUSES = ("completed", "failed", "cancelled")

Row = tuple[str, str, "float | None", "float | None", Any]


class DatabaseCollector:
    """Gauges (and the workflow counters) read from the database: one query per scrape,
    cached for ``ttl`` seconds.

    It runs on a connection the caller owns (the supervisor's), and only when that
    connection is up; a failed query is logged and the database metrics are left out,
    with ``orchwf_db_stats_up`` 0.

    Workflow outcomes are counted here rather than by the workers because instances
    also end outside them (an operator's cancel, an in-process run). Each scrape adds
    the instances whose completed_at lies between the previous horizon and a new one
    FINISH_LAG_SECONDS back, so the counters run a minute behind, start at 0 with the
    supervisor, and miss an instance only if the transaction that ended it took longer
    than the lag to commit.
    """

    def __init__(self, schema: str, connection: Callable[[], Any], queues: Iterable[str] = (),
                 ttl: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        from ..db.queries import Queries

        self.q = Queries.of(schema)  # one statement per scrape: database_metrics
        self.schema = schema
        self.connection = connection
        self.queues = tuple(queues)  # reported as 0 when empty, so their series do not vanish
        self.ttl = ttl
        self.clock = clock
        self.rows: list[Row] | None = None
        self.fetched_at = float("-inf")
        self.next_warning = 0.0
        self.horizon: Any = None  # a datetime from the database's clock, once known
        self.finished: dict[tuple[str, str], float] = {}  # (status, workflow) -> count

    def describe(self) -> list[Metric]:
        return []

    def _fetch(self) -> list[Row] | None:
        now = self.clock()
        if now - self.fetched_at < self.ttl:
            return self.rows
        self.fetched_at = now
        conn = self.connection()
        if conn is None or conn.closed:
            self.rows = None
            return None
        import psycopg

        try:
            params = {"cap": DEPTH_CAP, "tables": list(HOT_TABLES), "live": LIVE_WORKER_SECONDS,
                      "since": self.horizon, "lag": FINISH_LAG_SECONDS, "gap": FINISH_MAX_GAP_SECONDS}
            rows: list[Row] = [tuple(r) for r in self.q.database_metrics(conn, params)]  # type: ignore[misc]
        except psycopg.Error as exc:
            if now >= self.next_warning:
                from ..db.dsn import redact

                log.warning("metrics: database statistics unavailable (%s)", redact(str(exc)).strip())
                self.next_warning = now + 300
            self.rows = None
            return None
        for kind, name, a, _b, t in rows:
            if kind.startswith("finished:"):
                key = (kind.removeprefix("finished:"), name)
                self.finished[key] = self.finished.get(key, 0.0) + (a or 0.0)
            elif kind == "horizon":
                self.horizon = t
        self.rows = rows
        return rows

    def collect(self) -> Iterator[Metric]:
        rows = self._fetch()
        yield GaugeMetricFamily("orchwf_db_stats_up", "1 when the last database statistics query succeeded",
                                value=0 if rows is None else 1)
        if rows is None:
            return
        depth = GaugeMetricFamily(
            "orchwf_ready_steps", f"Steps ready to be claimed, per queue (exact up to {DEPTH_CAP}, then it saturates)",
            labels=["queue"])
        oldest = GaugeMetricFamily(
            "orchwf_oldest_ready_step_age_seconds", "Age of the oldest ready step, per queue (0: queue empty)",
            labels=["queue"])
        dead = GaugeMetricFamily("orchwf_table_dead_tuples", "Dead tuples of orchwf's hot tables (pg_stat_user_tables)",
                                 labels=["table"])
        live = GaugeMetricFamily("orchwf_table_live_tuples", "Live tuples of orchwf's hot tables (pg_stat_user_tables)",
                                 labels=["table"])
        enqueued = CounterMetricFamily(
            "orchwf_workflows_enqueued",
            "Workflow instances inserted, database-wide, since the statistics were reset "
            "(pg_stat_user_tables.n_tup_ins; includes inserts that rolled back)")
        paused = GaugeMetricFamily(
            "orchwf_queue_paused", "1 while the queue is paused (orchwf queue pause): its steps wait, none starts",
            labels=["queue"])
        rate_limit = GaugeMetricFamily(
            "orchwf_queue_rate_limit_per_second",
            "The queue's rate limit (orchwf queue rate-limit), steps started per second on all hosts; "
            "absent without one", labels=["queue"])
        workers = GaugeMetricFamily(
            "orchwf_live_workers", "Registered orchwf processes with a fresh heartbeat, database-wide",
            labels=["role"])
        finished = {status: CounterMetricFamily(
            f"orchwf_workflows_{status}",
            f"Workflow instances {status}, database-wide, counted since this supervisor started "
            f"({FINISH_LAG_SECONDS}s behind)", labels=["workflow"]) for status in FINAL_STATUSES}
        unserved = GaugeMetricFamily(
            "orchwf_instances_waiting_for_version",
            "Live instances whose definition version no live worker has: they wait for a worker with that code",
            labels=["workflow"])
        unserved_age = GaugeMetricFamily(
            "orchwf_instances_waiting_for_version_oldest_age_seconds",
            "Age of the oldest instance waiting for a worker with its definition version", labels=["workflow"])
        seen_roles = set()
        seen_queues = set()
        seen_paused = set()
        for kind, name, a, b, _t in rows:
            if kind == "queue":
                depth.add_metric([name], a or 0.0)
                oldest.add_metric([name], max(0.0, b or 0.0))
                seen_queues.add(name)
            elif kind == "paused":
                paused.add_metric([name], a or 0.0)
                seen_paused.add(name)
                if b is not None:
                    rate_limit.add_metric([name], b)
            elif kind == "table":
                dead.add_metric([name], a or 0.0)
                live.add_metric([name], b or 0.0)
            elif kind == "inserted":
                enqueued.add_metric([], a or 0.0)
            elif kind == "workers":
                workers.add_metric([name], a or 0.0)
                seen_roles.add(name)
            elif kind == "unserved":
                unserved.add_metric([name], a or 0.0)
                unserved_age.add_metric([name], max(0.0, b or 0.0))
        for queue in self.queues:
            if queue not in seen_queues:
                depth.add_metric([queue], 0.0)
                oldest.add_metric([queue], 0.0)
            if queue not in seen_paused:
                paused.add_metric([queue], 0.0)
        for role in ("supervisor", "worker"):
            if role not in seen_roles:
                workers.add_metric([role], 0.0)
        for (status, workflow), count in sorted(self.finished.items()):
            if status in finished:
                finished[status].add_metric([workflow], count)
        yield from (depth, oldest, paused, rate_limit, dead, live, enqueued, workers, unserved, unserved_age,
                    *finished.values())


# -- exposition -----------------------------------------------------------------------------


def daemon_registry(collectors: Iterable[Any]) -> CollectorRegistry:
    """A registry with every process's metrics (multiprocess mode) plus ``collectors``."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)
    else:  # a single process (tests): this process's metrics
        from prometheus_client import REGISTRY

        registry.register(_Forward(REGISTRY))
    for collector in collectors:
        registry.register(collector)
    return registry


class _Forward:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        return iter(self.registry.collect())


def render(registry: CollectorRegistry, accept: str = "") -> tuple[bytes, str]:
    """The exposition for an HTTP Accept header: (body, content type)."""
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type
