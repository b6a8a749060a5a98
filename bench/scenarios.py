"""The scenarios. Each takes a freshly set-up system and returns a JSON-able dict."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import log, memory_of, percentile, steady_ticks
from .systems.base import System


@dataclass
class Sizes:
    drain: tuple[int, ...] = (20_000, 100_000)
    drain_concurrency: int = 50  # the "all at 50" case beside each system's defaults
    enqueue_single: int = 2_000
    enqueue_batched: int = 50_000
    web_enqueue: int = 2_000
    batch: int = 1_000
    latency_samples: int = 1_000
    latency_rate: float = 100.0
    dag_instances: int = 5_000
    dag_light_instances: int = 200
    dag_light_rate: float = 20.0
    soak_seconds: float = 1_800.0
    soak_sample: float = 5.0  # backlog sampled this often (s)
    history_drain: int = 20_000
    history_seed: int = 2_000_000
    drain_timeout: float = 900.0


SMOKE = Sizes(drain=(1_000,), enqueue_single=100, enqueue_batched=2_000, web_enqueue=100, latency_samples=100,
              latency_rate=100.0, dag_instances=100, dag_light_instances=20, dag_light_rate=20.0,
              soak_seconds=6.0, soak_sample=1.0, history_drain=1_000, history_seed=20_000, drain_timeout=120.0)

# --small: every scenario quick, the drain still at two sizes (its four cases).
SMALL = Sizes(drain=(2_000, 10_000), enqueue_single=200, enqueue_batched=5_000, web_enqueue=300,
              latency_samples=200, dag_instances=500, dag_light_instances=40, soak_seconds=120.0,
              soak_sample=2.0, history_drain=2_000, history_seed=100_000, drain_timeout=300.0)


def _summary(values_ms: list[float]) -> dict[str, float]:
    return {"n": len(values_ms), "p50": percentile(values_ms, 50), "p95": percentile(values_ms, 95),
            "p99": percentile(values_ms, 99), "max": max(values_ms) if values_ms else float("nan"),
            "mean": sum(values_ms) / len(values_ms) if values_ms else float("nan")}


def _procs_memory(system: System, proc: Any) -> dict[str, list[dict[str, float]]]:
    return {role: [dict(memory_of(pid), pid=pid) for pid in pids]
            for role, pids in system.process_roles(proc).items()}


def _wait_drained(system: System, total: int, timeout: float, series: list[tuple[float, int]] | None = None,
                  on_tick: Any = None, interval: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while True:
        left = system.remaining()
        if series is not None:
            series.append((time.time(), left))
        if on_tick is not None:
            on_tick()
        if left == 0:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{system.name}: {left} of {total} jobs still left after {timeout:.0f}s")
        time.sleep(interval)


# --------------------------------------------------------------------------- enqueue


def enqueue(system: System, sizes: Sizes) -> dict[str, Any]:
    for _ in range(20):  # warm up connections and plans
        system.enqueue_one()
    t0 = time.perf_counter()
    for _ in range(sizes.enqueue_single):
        system.enqueue_one()
    single = sizes.enqueue_single / (time.perf_counter() - t0)
    seconds = system.enqueue_batch(sizes.enqueue_batched, sizes.batch)
    batched = sizes.enqueue_batched / seconds
    log(f"{system.name}: enqueue single {single:,.0f}/s, batched ({sizes.batch}/call) {batched:,.0f}/s")
    return {"single_per_s": single, "batched_per_s": batched, "single_n": sizes.enqueue_single,
            "batched_n": sizes.enqueue_batched, "batch": sizes.batch}


# --------------------------------------------------------------------------- web enqueue


def web_enqueue(system: System, sizes: Sizes) -> dict[str, Any]:
    """One job per transaction on a pooled connection, one request after the other, as a
    web handler does (see each system's ``web_enqueue``)."""
    seconds = system.web_enqueue(sizes.web_enqueue)
    rate = sizes.web_enqueue / seconds
    log(f"{system.name}: web enqueue (pooled connection, 1 transaction per job) {rate:,.0f}/s")
    return {"per_s": rate, "n": sizes.web_enqueue}


# --------------------------------------------------------------------------- latency


def latency(system: System, sizes: Sizes, logdir: Path) -> dict[str, Any]:
    proc = system.start_workers(logdir)
    try:
        time.sleep(2.0)  # settle: idle workers, connections open
        memory_idle = _procs_memory(system, proc)
        for _ in range(5):  # warm up plans on both sides
            system.enqueue_one()
        _wait_drained(system, 5, 30, interval=0.05)
        commits: dict[str, float] = {}
        for _ in steady_ticks(sizes.latency_rate, sizes.latency_samples):
            job_id, t_commit = system.enqueue_one()
            commits[str(job_id)] = t_commit
        _wait_drained(system, sizes.latency_samples, 60, interval=0.05)
    finally:
        proc.stop()
    starts = system.start_times(list(commits), proc)
    values = [(starts[k] - commits[k]) * 1000.0 for k in commits if k in starts]
    if len(values) < len(commits):
        log(f"{system.name}: WARNING only {len(values)} of {len(commits)} start times found")
    s = _summary(values)
    log(f"{system.name}: latency p50 {s['p50']:.1f} ms, p95 {s['p95']:.1f} ms, p99 {s['p99']:.1f} ms "
        f"({s['n']} samples at {sizes.latency_rate:g}/s)")
    return {**s, "rate": sizes.latency_rate, "samples_ms": values, "memory_idle": memory_idle}


# --------------------------------------------------------------------------- DAG (orchwf)


def dag(system: System, sizes: Sizes, logdir: Path) -> dict[str, Any]:
    n = sizes.dag_instances
    proc = system.start_workers(logdir)
    series: list[tuple[float, int]] = []
    try:
        time.sleep(1.0)
        log(f"orchwf DAG: loading {n:,} instances")
        system.load(n, sizes.batch, workflow="bench_dag")  # type: ignore[call-arg]
        log("orchwf DAG: draining")
        _wait_drained(system, n, sizes.drain_timeout, series)
        first, last = system.drain_window()  # type: ignore[attr-defined]
        steps = n * 10
        loaded = system.dag_delays()["delays_ms"]  # type: ignore[attr-defined]
        steps_series = system.steps_per_second(first)  # type: ignore[attr-defined]
        log("orchwf DAG: light load")
        # Light load: instances at a steady low rate, so a released step never queues
        # behind a backlog and the delay is the release itself.
        system.conn.execute("VACUUM ANALYZE")
        time.sleep(1.0)
        light_ids = []
        for _ in steady_ticks(sizes.dag_light_rate, sizes.dag_light_instances):
            light_ids.append(system.enqueue_one(workflow="bench_dag")[0])  # type: ignore[call-arg]
        _wait_drained(system, sizes.dag_light_instances, 60, interval=0.05)
        light = system.dag_delays(light_ids)["delays_ms"]  # type: ignore[attr-defined]
    finally:
        proc.stop()
    rate = steps / (last - first)
    sl, sh = _summary(light), _summary(loaded)
    log(f"orchwf DAG: {steps:,} steps in {last - first:.2f}s = {rate:,.0f} steps/s; parent-commit-to-child-start "
        f"p50 {sl['p50']:.1f} ms at light load, {sh['p50']:.1f} ms in the drain")
    return {"instances": n, "steps": steps, "seconds": last - first, "steps_per_s": rate,
            "series": [(t - first, left) for t, left in series], "steps_series": steps_series,
            "delay_light": sl, "delay_drain": sh, "delay_light_samples_ms": light,
            "light_rate_instances_per_s": sizes.dag_light_rate}


__all__ = ["Sizes", "SMOKE", "SMALL", "enqueue", "web_enqueue", "latency", "dag"]
