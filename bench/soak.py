"""The soak: a steady rate of single-step jobs for a long time, with real autovacuum,
reported per minute, and judged against targets computed from the measurements.

Per minute: completions/s; queue wait (ready -> started) p50/p99; the backlog (ready
jobs, sampled every few seconds) and its longest stretch of continuous growth; size of
each runtime table and its indexes; dead tuples; WAL written (also per workflow); and
autovacuum runs with their elapsed time per table, parsed from the server log of the
benchmark's own cluster (on a ``--dsn`` server: ``pg_stat_user_tables.autovacuum_count``).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from .autovacuum import AutovacuumEmulation, LogWatcher, autovacuum_setting
from .common import log, steady_ticks, table_stats, wal_lsn
from .scenarios import Sizes
from .systems.base import System

TICK = 0.1  # the producer enqueues one batch every TICK seconds

# Targets (computed from the measurements, never assumed).
P99_LIMIT_MS = 250.0  # queue wait p99 in every minute
P99_GROWTH_LIMIT = 1.5  # last-5-minutes p99 <= this x first-5-minutes p99
WINDOW_MINUTES = 5
GROWTH_LIMIT_S = 30.0  # the backlog never grows for longer than this
SIZE_GROWTH_LIMIT = 2.0  # runtime tables + indexes at the end <= this x their size at minute 5
SIZE_REFERENCE_MINUTE = 5


@dataclass
class Server:
    """Where a scenario runs: the admin DSN, and the server log if we can read it."""

    name: str
    dsn: str
    log_file: Path | None = None


def longest_growth(samples: list[tuple[float, int]]) -> tuple[float, float]:
    """(seconds, start offset) of the longest stretch in which every sample of the
    backlog was larger than the one before."""
    best, best_start, start = 0.0, 0.0, 0
    for i in range(1, len(samples) + 1):
        if i < len(samples) and samples[i][1] > samples[i - 1][1]:
            continue
        length = samples[i - 1][0] - samples[start][0]
        if length > best:
            best, best_start = length, samples[start][0]
        start = i
    return best, best_start


def soak(system: System, rate: float, sizes: Sizes, logdir: Path, server: Server,
         vacuum_naptime: float | None = None) -> dict[str, Any]:
    """Run the soak on a freshly set-up ``system``; see the module docstring. The
    backlog is sampled just before a batch is enqueued, so it counts the jobs of earlier
    batches that no worker has taken yet."""
    autovacuum_on, naptime = autovacuum_setting(system.dsn)
    emulation: AutovacuumEmulation | None = None
    if autovacuum_on:
        vacuum_source = "server log" if server.log_file else "pg_stat_user_tables.autovacuum_count"
        autovacuum = f"on (the server's, naptime {naptime:g}s); runs from the {vacuum_source}"
    elif vacuum_naptime:
        emulation = AutovacuumEmulation(system.dsn, system.tables(), vacuum_naptime)
        autovacuum = f"off on the server; emulated by the harness (--vacuum-naptime {vacuum_naptime:g})"
    else:
        autovacuum = "off on the server and not emulated: NO vacuum during the soak (pass --vacuum-naptime)"
    log(f"soak: autovacuum {autovacuum}")
    database = str(conninfo_to_dict(system.dsn)["dbname"])
    watcher = LogWatcher(server.log_file, database) if autovacuum_on and server.log_file else None
    if watcher:
        watcher.start()
    with emulation or contextlib.nullcontext():
        out = _run(system, rate, sizes, logdir)
    out["autovacuum"] = autovacuum
    if watcher:  # the system's own tables (not the catalogs autovacuum also visits)
        out["vacuum_runs"] = [r.as_dict() for r in watcher.runs() if r.table in system.tables()]
    elif emulation:
        out["vacuum_runs"] = [r.as_dict() for r in emulation.runs]
    else:
        out["vacuum_runs"] = None  # counts only: see the per-minute autovacuum counts
    _per_minute_vacuums(out)
    out["targets"] = targets(out)
    return out


def _run(system: System, rate: float, sizes: Sizes, logdir: Path) -> dict[str, Any]:
    per_tick = max(1, round(rate * TICK))
    ticks = int(sizes.soak_seconds / TICK)
    offered = per_tick / TICK
    tables = system.tables()
    samples: list[tuple[list[Any], float]] = []  # every 5th batch: (ids, commit time) for systems without ready times
    backlog: list[tuple[float, int]] = []
    minutes: list[dict[str, Any]] = []
    proc = system.start_workers(logdir)
    observer = psycopg.connect(system.dsn, autocommit=True)
    enqueued = 0
    try:
        t0 = time.time()
        lsn = wal_lsn(observer)
        start: dict[str, Any] = {"t": 0.0, "enqueued": 0, "wal": lsn, "tables": table_stats(system.dsn, tables)}
        next_sample, next_minute = t0 + sizes.soak_sample, t0 + 60.0
        log(f"{system.name}: soak of {sizes.soak_seconds:,.0f}s at {offered:,.0f}/s ({per_tick} every {TICK:g}s)")
        for i in steady_ticks(1.0 / TICK, ticks):
            now = time.time()
            if now >= next_sample:  # before this tick's batch: what the workers have not taken yet
                next_sample += sizes.soak_sample
                backlog.append((now - t0, system.backlog()))
            ids, t_commit = system.enqueue_timed_batch(per_tick)
            enqueued += len(ids)
            if i % 5 == 0:
                samples.append((ids, t_commit))
            if t_commit >= next_minute:
                next_minute += 60.0
                minutes.append({"t": now - t0, "enqueued": enqueued, "wal": wal_lsn(observer),
                                "tables": table_stats(system.dsn, tables)})
                m = minutes[-1]
                log(f"{system.name}: soak minute {len(minutes)}: backlog {backlog[-1][1] if backlog else 0:,}, "
                    f"runtime tables {_runtime_bytes(system, m['tables']) / 2**20:,.0f} MiB")
        t_end = time.time()
        minutes.append({"t": t_end - t0, "enqueued": enqueued, "wal": wal_lsn(observer),
                        "tables": table_stats(system.dsn, tables), "partial": True})
        deadline = time.monotonic() + max(60.0, sizes.soak_seconds)
        while system.remaining() > 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{system.name}: the soak's backlog did not drain")
            time.sleep(0.5)
        drained_after = time.time() - t_end
        final_tables = table_stats(system.dsn, tables)
    finally:
        proc.stop()
        observer.close()

    seconds = int(t_end - t0) + 1
    per_second = system.completions_per_second(t0, seconds)
    waits = {w["bucket"]: w for w in system.queue_waits(t0, 60.0, samples, proc)}
    window = min(WINDOW_MINUTES * 60.0, (t_end - t0) / 2)
    first_window = system.queue_waits(t0, window, samples, proc)
    last_window = system.queue_waits(t_end - window, window, samples, proc)

    rows: list[dict[str, Any]] = []
    previous = start
    for k, m in enumerate(minutes):
        lo, hi = int(previous["t"]), int(m["t"])
        done = sum(per_second[lo:hi])
        span = max(1e-9, m["t"] - previous["t"])
        in_minute = [b for t, b in backlog if previous["t"] <= t < m["t"]]
        growth, _ = longest_growth([(t, b) for t, b in backlog if previous["t"] <= t < m["t"]])
        wal = m["wal"] - previous["wal"]
        w = waits.get(k, {})
        rows.append({
            "minute": k + 1, "seconds": span, "partial": bool(m.get("partial")),
            "t_from": previous["t"], "t_to": m["t"],
            "completed": done, "completed_per_s": done / span,
            "wait_p50_ms": w.get("p50"), "wait_p99_ms": w.get("p99"), "wait_n": w.get("n", 0),
            "backlog_max": max(in_minute) if in_minute else None,
            "backlog_end": in_minute[-1] if in_minute else None,
            "longest_growth_s": growth,
            "tables": m["tables"],
            "runtime_bytes": _runtime_bytes(system, m["tables"]),
            "runtime_dead": sum(m["tables"].get(t, {}).get("dead", 0) for t in system.runtime_tables),
            "wal_bytes": wal, "wal_bytes_per_workflow": wal / done if done else None,
            "autovacuums": {t: m["tables"].get(t, {}).get("autovacuums", 0)
                            - previous["tables"].get(t, {}).get("autovacuums", 0) for t in tables},
        })
        previous = m
    growth_s, growth_at = longest_growth(backlog)
    total_wal = minutes[-1]["wal"] - start["wal"]
    log(f"{system.name}: soak done: {enqueued:,} enqueued at {offered:,.0f}/s; backlog drained "
        f"{drained_after:.1f}s after the producer stopped")
    return {
        "system": system.name, "knob": system.knob_label(), "rate": offered, "seconds": t_end - t0, "t0": t0,
        "enqueued": enqueued, "minutes": rows, "backlog_samples": backlog, "sample_interval": sizes.soak_sample,
        "longest_growth_s": growth_s, "longest_growth_at_s": growth_at, "drained_after_s": drained_after,
        "window_minutes": window / 60.0,
        "first_window": first_window[0] if first_window else None,
        "last_window": last_window[0] if last_window else None,
        "start_tables": start["tables"], "final_tables": final_tables,
        "runtime_tables": list(system.runtime_tables), "history_tables": list(system.history_tables),
        "wal_bytes": total_wal, "wal_bytes_per_workflow": total_wal / enqueued if enqueued else None,
    }


def _runtime_bytes(system: System, tables: dict[str, dict[str, int]]) -> int:
    return sum(tables.get(t, {}).get("total_bytes", 0) for t in system.runtime_tables)


def _per_minute_vacuums(out: dict[str, Any]) -> None:
    """Autovacuum runs per table: per minute (count, elapsed) and per hour of soak."""
    runs = out.get("vacuum_runs")
    hours = out["seconds"] / 3600.0
    per_table: dict[str, dict[str, float]] = {}
    if runs is None:  # counted from pg_stat_user_tables
        for row in out["minutes"]:
            for table, count in row["autovacuums"].items():
                per_table.setdefault(table, {"runs": 0, "elapsed_s": float("nan")})["runs"] += count
    else:  # from the server log (or the emulation): also per minute
        for row in out["minutes"]:
            lo, hi = out["t0"] + row["t_from"], out["t0"] + row["t_to"]
            in_minute = [r for r in runs if lo <= r["at"] < hi]
            row["autovacuums"] = {}
            row["vacuum_elapsed_s"] = {}
            for r in in_minute:
                row["autovacuums"][r["table"]] = row["autovacuums"].get(r["table"], 0) + 1
                row["vacuum_elapsed_s"][r["table"]] = row["vacuum_elapsed_s"].get(r["table"], 0.0) + r["elapsed"]
        for r in runs:
            entry = per_table.setdefault(r["table"], {"runs": 0, "elapsed_s": 0.0})
            entry["runs"] += 1
            entry["elapsed_s"] += r["elapsed"]
    for entry in per_table.values():
        entry["runs_per_hour"] = entry["runs"] / hours if hours else float("nan")
        entry["elapsed_s_per_hour"] = entry["elapsed_s"] / hours if hours else float("nan")
    out["vacuum_per_table"] = per_table


def targets(out: dict[str, Any]) -> list[dict[str, Any]]:
    """The soak's pass/fail lines, each with what was measured."""
    measured = [m for m in out["minutes"] if m["wait_p99_ms"] is not None]  # the last, partial minute too
    worst = max(measured, key=lambda m: m["wait_p99_ms"], default=None)
    result: list[dict[str, Any]] = [{
        "target": f"queue wait p99 < {P99_LIMIT_MS:g} ms in every minute",
        "measured": (f"worst: minute {worst['minute']}, {worst['wait_p99_ms']:,.1f} ms" if worst else "no samples"),
        "ok": None if worst is None else worst["wait_p99_ms"] < P99_LIMIT_MS,
    }]
    first, last = out.get("first_window"), out.get("last_window")
    window = out["window_minutes"]
    note = "" if window >= WINDOW_MINUTES else f" (soak under {2 * WINDOW_MINUTES} min: windows of {window * 60:.0f} s)"
    result.append({
        "target": f"last-{WINDOW_MINUTES}-minutes p99 <= {P99_GROWTH_LIMIT:g}x first-{WINDOW_MINUTES}-minutes p99",
        "measured": (f"{last['p99']:,.1f} ms vs {first['p99']:,.1f} ms = {last['p99'] / first['p99']:.2f}x{note}"
                     if first and last and first["p99"] > 0 else "–"),
        "ok": None if not (first and last and first["p99"] > 0) else last["p99"] <= P99_GROWTH_LIMIT * first["p99"],
    })
    result.append({
        "target": f"backlog never grows for more than {GROWTH_LIMIT_S:g} s",
        "measured": f"longest continuous growth {out['longest_growth_s']:.0f} s (from {out['longest_growth_at_s']:.0f} s; "
                    f"sampled every {out['sample_interval']:g} s)",
        "ok": out["longest_growth_s"] <= GROWTH_LIMIT_S,
    })
    ref_minutes = [m for m in out["minutes"] if not m["partial"] and m["minute"] <= SIZE_REFERENCE_MINUTE]
    ref = ref_minutes[-1] if ref_minutes else None
    final = sum(out["final_tables"].get(t, {}).get("total_bytes", 0) for t in out["runtime_tables"])
    if ref is None or not ref["runtime_bytes"]:
        result.append({"target": f"runtime tables + indexes at the end <= {SIZE_GROWTH_LIMIT:g}x minute {SIZE_REFERENCE_MINUTE}",
                       "measured": "soak shorter than a minute", "ok": None})
    else:
        note = "" if ref["minute"] == SIZE_REFERENCE_MINUTE else f" (soak shorter than {SIZE_REFERENCE_MINUTE} min: minute {ref['minute']})"
        result.append({
            "target": f"runtime tables + indexes at the end <= {SIZE_GROWTH_LIMIT:g}x minute {SIZE_REFERENCE_MINUTE}",
            "measured": f"{final / 2**20:,.1f} MiB vs {ref['runtime_bytes'] / 2**20:,.1f} MiB = "
                        f"{final / ref['runtime_bytes']:.2f}x{note}",
            "ok": final <= SIZE_GROWTH_LIMIT * ref["runtime_bytes"],
        })
    return result
