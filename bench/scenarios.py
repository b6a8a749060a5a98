"""The scenarios. Each takes a freshly set-up system and returns a JSON-able dict."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import (
    AutovacuumEmulation,
    autovacuum_setting,
    backend_pids,
    cpu_seconds,
    log,
    memory_of,
    percentile,
    steady_ticks,
    table_stats,
)
from .systems.base import System


@dataclass
class Sizes:
    drain: tuple[int, ...] = (20_000, 100_000)
    enqueue_single: int = 2_000
    enqueue_batched: int = 50_000
    batch: int = 1_000
    latency_samples: int = 1_000
    latency_rate: float = 100.0
    dag_instances: int = 5_000
    dag_light_instances: int = 200
    dag_light_rate: float = 20.0
    soak_seconds: float = 600.0
    soak_interval: float = 10.0
    drain_timeout: float = 900.0


SMOKE = Sizes(drain=(1_000,), enqueue_single=100, enqueue_batched=2_000, latency_samples=100,
              latency_rate=100.0, dag_instances=100, dag_light_instances=20, dag_light_rate=20.0,
              soak_seconds=6.0, soak_interval=2.0, drain_timeout=120.0)


def _summary(values_ms: list[float]) -> dict[str, float]:
    return {"n": len(values_ms), "p50": percentile(values_ms, 50), "p95": percentile(values_ms, 95),
            "p99": percentile(values_ms, 99), "max": max(values_ms) if values_ms else float("nan"),
            "mean": sum(values_ms) / len(values_ms) if values_ms else float("nan")}


def _procs_memory(system: System, proc: Any) -> dict[str, list[dict[str, float]]]:
    return {role: [dict(memory_of(pid), pid=pid) for pid in pids]
            for role, pids in system.process_roles(proc).items()}


def _worker_pids(system: System, proc: Any) -> list[int]:
    roles = system.process_roles(proc)
    return [pid for pids in roles.values() for pid in pids]


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


# --------------------------------------------------------------------------- drain


def drain(system: System, n: int, sizes: Sizes, logdir: Path) -> dict[str, Any]:
    """Workers start idle; then ``n`` jobs appear at once (one transaction) and the
    workers drain them. Rate: first job start to last completion commit."""
    harness = set(backend_pids(system.dsn))
    proc = system.start_workers(logdir)
    series: list[tuple[float, int]] = []
    peak_mem: dict[int, dict[str, float]] = {}
    try:
        time.sleep(1.0)
        pids = _worker_pids(system, proc)
        backends = [p for p in backend_pids(system.dsn) if p not in harness]
        load_seconds = system.load(n, sizes.batch)
        cpu0 = {p: cpu_seconds(p) for p in pids + backends}

        def sample_memory() -> None:
            for pid in pids:
                m = memory_of(pid)
                old = peak_mem.get(pid)
                if old is None or m["rss_mib"] > old["rss_mib"]:
                    peak_mem[pid] = m

        t_start = time.time()
        _wait_drained(system, n, sizes.drain_timeout, series, sample_memory)
        elapsed_wall = time.time() - t_start
        cpu_workers = sum(cpu_seconds(p) - cpu0[p] for p in pids)
        cpu_backends = sum(cpu_seconds(p) - cpu0[p] for p in backends)
        memory_load = {role: [dict(peak_mem.get(pid, memory_of(pid)), pid=pid) for pid in ps]
                       for role, ps in system.process_roles(proc).items()}
    finally:
        proc.stop()
    first, last = system.drain_window(proc)
    rate = n / (last - first)
    failed = system.failed()
    log(f"{system.name}: drained {n:,} in {last - first:.2f}s = {rate:,.0f}/s"
        f" (cpu per job: workers {cpu_workers / n * 1e6:.0f} us, postgres {cpu_backends / n * 1e6:.0f} us)"
        + (f"; {failed} FAILED" if failed else ""))
    return {"n": n, "seconds": last - first, "per_s": rate, "failed": failed, "load_seconds": load_seconds,
            "series": [(t - first, left) for t, left in series], "wall_seconds": elapsed_wall,
            "cpu_us_per_job": {"workers": cpu_workers / n * 1e6, "postgres": cpu_backends / n * 1e6},
            "memory_load": memory_load, "tables": system.table_stats()}


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
        first, last = system.drain_window(proc)
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


# --------------------------------------------------------------------------- soak


def soak(system: System, rate: float, sizes: Sizes, logdir: Path, vacuum_naptime: float | None = None) -> dict[str, Any]:
    """A steady ``rate`` of single-step instances for ``sizes.soak_seconds``; every
    interval: throughput, backlog, dead tuples and table sizes; p99 latency per minute.
    If the server runs without autovacuum, an emulation of it runs alongside (see
    AutovacuumEmulation); ``vacuum_naptime`` overrides the server's naptime for it."""
    autovacuum_on, naptime = autovacuum_setting(system.dsn)
    emulation = None
    if not autovacuum_on:
        naptime = vacuum_naptime or naptime
        log(f"soak: the server runs with autovacuum = off; emulating autovacuum (naptime {naptime:g}s)")
        emulation = AutovacuumEmulation(system.dsn, system.hot_tables, naptime)
    with emulation or contextlib.nullcontext():
        out = _soak(system, rate, sizes, logdir)
    out["autovacuum"] = "on (server)" if autovacuum_on else f"off on the server; emulated by the harness, naptime {naptime:g}s"
    out["vacuum_runs"] = emulation.runs if emulation else []
    return out


def _soak(system: System, rate: float, sizes: Sizes, logdir: Path) -> dict[str, Any]:
    tick = 0.1
    per_tick = max(1, round(rate * tick))
    proc = system.start_workers(logdir)
    intervals: list[dict[str, Any]] = []
    sampled: list[tuple[list[Any], float]] = []  # every 5th batch: (ids, commit time)
    enqueued = 0
    ticks = int(sizes.soak_seconds / tick)
    try:
        t0 = time.time()
        next_report = time.monotonic() + sizes.soak_interval
        last_done, last_t = 0, time.time()
        behind = 0
        for i in steady_ticks(1.0 / tick, ticks):
            ids, t_commit = system.enqueue_timed_batch(per_tick)
            enqueued += len(ids)
            if i % 5 == 0:
                sampled.append((ids, t_commit))
            if time.monotonic() >= next_report:
                next_report += sizes.soak_interval
                now = time.time()
                left = system.remaining()
                done = enqueued - left
                stats = table_stats(system.dsn, system.hot_tables)
                intervals.append({"t": now - t0, "completed_per_s": (done - last_done) / (now - last_t),
                                  "backlog": left, "tables": stats})
                last_done, last_t = done, now
                if left > rate * 30:
                    behind += 1
        expected = per_tick * ticks / sizes.soak_seconds
        _wait_drained(system, enqueued, max(60.0, sizes.soak_seconds), interval=0.5)
        final_tables = table_stats(system.dsn, system.hot_tables)
    finally:
        proc.stop()
    # Latency per minute of the run (by commit time of the sampled batches).
    per_minute: dict[int, list[float]] = {}
    if hasattr(system, "latencies"):
        pairs = system.latencies(sampled)
    else:
        pairs = []
        for ids, t_commit in sampled:
            starts = system.start_times(ids, proc)
            pairs.extend((t_commit, starts[str(k)]) for k in ids if str(k) in starts)
    for t_commit, t_start in pairs:
        per_minute.setdefault(int((t_commit - t0) // 60), []).append((t_start - t_commit) * 1000.0)
    minutes = [{"minute": m, **_summary(v)} for m, v in sorted(per_minute.items())]
    thr = [iv["completed_per_s"] for iv in intervals]
    half = max(1, len(thr) // 2)
    first_half = sum(thr[:half]) / half if thr else float("nan")
    second_half = sum(thr[half:]) / max(1, len(thr) - half) if thr else float("nan")
    log(f"{system.name}: soak {sizes.soak_seconds:.0f}s at {expected:,.0f}/s: throughput first half "
        f"{first_half:,.0f}/s, second half {second_half:,.0f}/s; p99 per minute "
        + ", ".join(f"{m['p99']:.0f}" for m in minutes) + " ms")
    return {"rate": expected, "seconds": sizes.soak_seconds, "enqueued": enqueued, "intervals": intervals,
            "minutes": minutes, "final_tables": final_tables, "first_half_per_s": first_half,
            "second_half_per_s": second_half, "intervals_behind": behind}


__all__ = ["Sizes", "SMOKE", "enqueue", "drain", "latency", "dag", "soak"]
