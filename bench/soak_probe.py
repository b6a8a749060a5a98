"""``python -m bench.soak_probe [--rate 1880] [--seconds 90]``: a short orchwf soak on the
bench's own cluster, instrumented to find a stall: what the backends were doing (a
``pg_stat_activity`` sample every 100 ms, summed over 3-second windows), the p99 queue
wait of each second, the autovacuum runs, and the plans of every statement that took
over 150 ms (auto_explain, nested statements included). Beside them, each second: the
kernel's dirty and under-writeback page cache, the CPU's iowait and steal, the WAL
written (bytes, full-page images, write and sync time), and the checkpoints from the
server log, so that a slow second can be laid against what the host and the server
were doing. ``--set name=value`` changes a server setting for an experiment.
docs/benchmarks.md, "The soak's stalls", shows what it found.
"""

from __future__ import annotations

import argparse
import calendar
import collections
import re
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from . import cluster as cl
from .common import machine_info
from .run import cleanup, scratch
from .scenarios import Sizes
from .soak import Server, soak
from .systems import make

DATABASE = "orchwf_soak_probe"
ACTIVITY_SQL = """
    SELECT backend_type, state, wait_event_type, wait_event, left(query, 40) AS query
    FROM pg_stat_activity
    WHERE (datname = current_database() OR backend_type = 'autovacuum worker') AND pid <> pg_backend_pid()
"""
WAITS_SQL = """
    SELECT floor(extract(epoch FROM coalesce(run_after, created_at)) - %(t0)s)::int AS sec,
           percentile_cont(0.99) WITHIN GROUP (
               ORDER BY extract(epoch FROM started_at - coalesce(run_after, created_at)) * 1000) AS p99
    FROM orchwf_step_instances
    WHERE created_at >= to_timestamp(%(t0)s) AND started_at IS NOT NULL
    GROUP BY 1 ORDER BY 1
"""


def _sample(dsn: str, t0: float, stop: threading.Event, out: list[tuple[float, dict[str, Any]]]) -> None:
    with psycopg.connect(dsn, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        while not stop.is_set():
            now = time.time() - t0
            out.extend((now, row) for row in conn.execute(ACTIVITY_SQL).fetchall())
            time.sleep(0.1)


WAL_SQL = """
    SELECT wal_records, wal_fpi, wal_bytes, wal_write_time, wal_sync_time FROM pg_stat_wal
"""
CHECKPOINT_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) UTC \[\d+\] LOG:  checkpoint (starting|complete)(.*)$")
MINUTES_SQL = WAITS_SQL.replace("- %(t0)s)::int AS sec", "- %(t0)s)::int / 60 + 1 AS minute")


def _host() -> dict[str, float]:
    """Dirty and Writeback (kB) from /proc/meminfo; iowait and steal (jiffies) from /proc/stat."""
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    cpu = Path("/proc/stat").read_text().splitlines()[0].split()
    return {"dirty_kb": float(meminfo["Dirty"].split()[0]), "writeback_kb": float(meminfo["Writeback"].split()[0]),
            "iowait": float(cpu[5]), "steal": float(cpu[8])}


def _server_writes(written: dict[int, tuple[str, int]]) -> None:
    """Each server process's bytes written to files so far (/proc/PID/io write_bytes: counted
    as the page cache is dirtied, WAL included), by the kind its title names."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if proc.joinpath("comm").read_text().strip() != "postgres":
                continue
            title = proc.joinpath("cmdline").read_text().replace("\0", " ")
            io = dict(line.split(": ") for line in proc.joinpath("io").read_text().splitlines())
        except OSError:
            continue
        kind = next((k for k in ("checkpointer", "background writer", "walwriter", "autovacuum worker",
                                 "autovacuum launcher", "logger") if k in title), "backend")
        written[int(proc.name)] = (kind, int(io["write_bytes"]))


def _sample_seconds(dsn: str, stop: threading.Event, out: list[dict[str, float]],
                    written: dict[int, tuple[str, int]]) -> None:
    """Once a second: the host's counters and pg_stat_wal, as differences from the second before."""
    with psycopg.connect(dsn, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        before = {**_host(), **(conn.execute(WAL_SQL).fetchone() or {})}
        _server_writes(written)
        started = dict(written)
        while not stop.wait(1.0):
            if len(out) % 5 == 0:
                _server_writes(written)
            now = {**_host(), **(conn.execute(WAL_SQL).fetchone() or {})}
            out.append({"dirty_mb": now["dirty_kb"] / 1024, "writeback_mb": now["writeback_kb"] / 1024,
                        **{k: float(now[k] - before[k]) for k in ("iowait", "steal", "wal_records", "wal_fpi",
                                                                  "wal_bytes", "wal_write_time", "wal_sync_time")}})
            before = now
        _server_writes(written)
        for pid, (kind, start) in started.items():
            written[pid] = (kind, written[pid][1] - start)


def _log_time(stamp: str) -> float:
    """Epoch seconds of a server log line's time ('YYYY-MM-DD HH:MM:SS.mmm', UTC)."""
    return calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S")) + float("0." + stamp[20:])


def _checkpoints(log_text: str, t0: float) -> list[str]:
    """The server log's checkpoint lines, their times as seconds since t0."""
    found = []
    for line in log_text.splitlines():
        match = CHECKPOINT_LINE.match(line)
        if match:
            found.append(f"{_log_time(match.group(1)) - t0:7.1f}s {match.group(2)}{match.group(3)[:160]}")
    return found


AUTOVACUUM_ENTRY = re.compile(
    r'^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) \S+ \[\d+\] LOG:  automatic (?:aggressive )?'
    r'(vacuum|analyze) (?:to prevent wraparound )?of table "[^"]+\.([^".]+)"(.*?)elapsed: ([0-9.]+) s', re.S)


def _autovacuum_entries(log_text: str, t0: float) -> list[str]:
    """Every autovacuum and auto-analyze of any table, history partitions included (the
    soak's own count knows only the tables by name), as seconds since t0 (when it ended),
    its elapsed seconds, and the pages it read and dirtied."""
    found = []
    for block in re.split(r"\n(?=\S)", log_text):
        match = AUTOVACUUM_ENTRY.match(block)
        if match:
            at = _log_time(match.group(1))
            buffers = re.search(r"buffer usage: (\d+) hits, (\d+) misses, (\d+) dirtied", match.group(4))
            pages = f" hits {buffers[1]} misses {buffers[2]} dirtied {buffers[3]}" if buffers else ""
            found.append(f"{at - t0:7.1f}s {match.group(2)} {match.group(3)} {match.group(5)} s{pages}")
    return found


def _slow_plans(log_text: str) -> list[str]:
    """One plan per distinct statement that auto_explain logged."""
    seen: set[str] = set()
    plans = []
    for block in re.split(r"\n(?=\S)", log_text):
        if "duration:" not in block or "plan:" not in block:
            continue
        key = block.split("Query Text:")[1][:120] if "Query Text:" in block else block[:120]
        if key not in seen:
            seen.add(key)
            plans.append(block)
    return plans


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=1880.0, help="workflows enqueued per second")
    p.add_argument("--seconds", type=float, default=90.0)
    p.add_argument("--setup-sql", default="", help="SQL run on the database before the soak (experiments)")
    p.add_argument("--concurrency", type=int, default=None, help="the workers' --concurrency [orchwf's default]")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a server setting replacing or adding to bench/cluster.py's (repeatable)")
    p.add_argument("--no-host-settings", action="store_true",
                   help="leave the host's page-cache writeback as it is (bench/cluster.py HOST_SETTINGS)")
    p.add_argument("--pg-bin", default=None, help="the PostgreSQL binaries [the host's 15]")
    a = p.parse_args()
    overrides = dict(item.split("=", 1) for item in a.set)
    work = scratch()
    samples: list[tuple[float, dict[str, Any]]] = []
    seconds: list[dict[str, float]] = []
    written: dict[int, tuple[str, int]] = {}
    stop = threading.Event()
    try:
        with cl.running(a.pg_bin, overrides={"track_wal_io_timing": "on", **overrides},
                        host_settings=not a.no_host_settings) as cluster:
            machine = machine_info()  # while the run's host settings are in force
            system = make("orchwf", concurrency=a.concurrency)
            system.setup(cluster.dsn, DATABASE)
            with psycopg.connect(system.dsn, autocommit=True) as conn:
                for setting, value in (("session_preload_libraries", "auto_explain"),
                                       ("auto_explain.log_min_duration", "150ms"),
                                       ("auto_explain.log_nested_statements", "on")):
                    conn.execute(f"ALTER DATABASE {DATABASE} SET {setting} = '{value}'")  # sql-ok: constants
                if a.setup_sql:
                    conn.execute(a.setup_sql)
            t0 = time.time()
            sampler = threading.Thread(target=_sample, args=(system.dsn, t0, stop, samples), daemon=True)
            sampler.start()
            second_sampler = threading.Thread(target=_sample_seconds, args=(system.dsn, stop, seconds, written), daemon=True)
            second_sampler.start()
            out = soak(system, a.rate, Sizes(soak_seconds=a.seconds, soak_sample=1.0), work,
                       Server("own cluster", cluster.dsn, cluster.log_file))
            stop.set()
            second_sampler.join()
            waits = system._rows(WAITS_SQL, {"t0": t0})
            minutes = system._rows(MINUTES_SQL, {"t0": t0})
            system.close()
            log_text = Path(cluster.log_file).read_text()
            plans = _slow_plans(log_text)
            checkpoints = _checkpoints(log_text, t0)
            autovacuums = _autovacuum_entries(log_text, t0)
    finally:
        stop.set()
        cleanup(work)
    windows: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for t, row in samples:
        if row["state"] != "idle" or row["backend_type"] != "client backend":
            windows[int(t) // 3 * 3][f"{row['backend_type'][:10]} {row['wait_event_type']}:{row['wait_event']} "
                                     f"{(row['query'] or '').strip()[:40]}"] += 1
    print(f"machine: {machine}")
    print(f"t0 (epoch; the server log's times minus this give the seconds below): {t0:.3f}")
    print("busy backends (samples per 3 s window, top 4):")
    for sec in sorted(windows):
        print(f"  {sec:4d}s", dict(windows[sec].most_common(4)))
    print("queue wait p99 ms by second of readiness:", " ".join(f"{w['sec']}:{w['p99']:.0f}" for w in waits))
    print("queue wait p99 ms by minute:", " ".join(f"{m['minute']}:{m['p99']:.0f}" for m in minutes))
    print("each second: p99 ms | dirty MB, writeback MB | iowait, steal jiffies | WAL kB, FPIs, "
          "write ms, sync ms")
    p99 = {w["sec"]: w["p99"] for w in waits}
    for sec, row in enumerate(seconds, start=1):
        mark = " <<" if p99.get(sec, 0) > 250 else ""
        print(f"  {sec:4d}s {p99.get(sec, float('nan')):6.0f} | {row['dirty_mb']:6.1f} {row['writeback_mb']:5.1f} | "
              f"{row['iowait']:3.0f} {row['steal']:3.0f} | {row['wal_bytes'] / 1024:7.0f} {row['wal_fpi']:6.0f} "
              f"{row['wal_write_time']:6.0f} {row['wal_sync_time']:6.0f}{mark}")
    if seconds:
        total_bytes = sum(r["wal_bytes"] for r in seconds)
        total_records = sum(r["wal_records"] for r in seconds)
        total_fpi = sum(r["wal_fpi"] for r in seconds)
        print(f"WAL: {total_bytes / len(seconds) / 1e6:.1f} MB/s, {total_records:.0f} records, "
              f"{total_fpi:.0f} full-page images ({total_fpi / max(total_records, 1):.1%} of records)")
    by_kind: collections.Counter[str] = collections.Counter()
    for kind, nbytes in written.values():
        by_kind[kind] += nbytes
    print("bytes written to files by server processes (MB/s):",
          {k: round(v / max(len(seconds), 1) / 1e6, 2) for k, v in by_kind.most_common()})
    print("checkpoints (s since start):")
    for line in checkpoints:
        print("  " + line)
    print("autovacuum runs (s since start: table, elapsed s):",
          " ".join(f"{v['at'] - t0:.0f}:{v['table'].split('.')[-1]}:{v['elapsed']}" for v in out.get("vacuum_runs") or []))
    print("every autovacuum and auto-analyze (s since start, when it ended; elapsed; pages):")
    for line in autovacuums:
        print("  " + line)
    print(f"{len(plans)} distinct statements over 150 ms")
    for plan in plans:
        print("=====", plan[-3000:])


if __name__ == "__main__":
    main()
