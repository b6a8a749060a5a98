"""Prometheus metrics of the daemon.

Workers and the supervisor record into prometheus-client's multiprocess mode when
PROMETHEUS_MULTIPROC_DIR is set (the supervisor sets it before forking), so the
numbers of all forked workers add up on the supervisor's endpoint. Labels are bounded:
workflow and step IDs (from code), queue names and outcomes; never instance IDs.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

STEPS_CLAIMED = Counter("orchwf_steps_claimed_total", "Steps claimed by workers", ["workflow", "step"])
STEPS_COMPLETED = Counter("orchwf_steps_completed_total", "Steps completed successfully", ["workflow", "step"])
STEPS_FAILED = Counter("orchwf_steps_failed_total", "Steps failed for good (skipped when optional)", ["workflow", "step", "outcome"])
STEPS_RETRIED = Counter("orchwf_steps_retried_total", "Failed attempts sent back to the queue", ["workflow", "step"])
STEPS_TIMED_OUT = Counter("orchwf_steps_timed_out_total", "Attempts that overran their timeout", ["workflow", "step"])
STEPS_RELEASED = Counter("orchwf_steps_released_total", "Claims given back at shutdown", ["workflow", "step"])
STEPS_RESCUED = Counter("orchwf_steps_rescued_total", "Claims taken back from dead or silent workers", ["cause"])
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
DB_CONNECTED = Gauge("orchwf_worker_db_connected", "1 when the worker's connection is up", multiprocess_mode="livesum")


def step_claimed(workflow: str, step: str) -> None:
    STEPS_CLAIMED.labels(workflow, step).inc()


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

# Supervisor-side metrics.
WORKER_RESTARTS = Counter("orchwf_worker_restarts_total", "Workers that died unexpectedly and were replaced")
LISTEN_UP = Gauge("orchwf_listen_connection_up", "1 when the supervisor's LISTEN connection is alive", multiprocess_mode="liveall")
