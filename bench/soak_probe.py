"""``python -m bench.soak_probe [--rate 1880] [--seconds 90]``: a short orchwf soak on the
bench's own cluster, instrumented to find a stall: what the backends were doing (a
``pg_stat_activity`` sample every 100 ms, summed over 3-second windows), the p99 queue
wait of each second, the autovacuum runs, and the plans of every statement that took
over 150 ms (auto_explain, nested statements included). docs/benchmarks.md, "The soak's
stalls", shows what it found.
"""

from __future__ import annotations

import argparse
import collections
import re
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from . import cluster as cl
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
    a = p.parse_args()
    work = scratch()
    samples: list[tuple[float, dict[str, Any]]] = []
    stop = threading.Event()
    try:
        with cl.running() as cluster:
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
            out = soak(system, a.rate, Sizes(soak_seconds=a.seconds, soak_sample=1.0), work,
                       Server("own cluster", cluster.dsn, cluster.log_file))
            stop.set()
            waits = system._rows(WAITS_SQL, {"t0": t0})
            system.close()
            plans = _slow_plans(Path(cluster.log_file).read_text())
    finally:
        stop.set()
        cleanup(work)
    windows: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for t, row in samples:
        if row["state"] != "idle" or row["backend_type"] != "client backend":
            windows[int(t) // 3 * 3][f"{row['backend_type'][:10]} {row['wait_event_type']}:{row['wait_event']} "
                                     f"{(row['query'] or '').strip()[:40]}"] += 1
    print(f"t0 (epoch; the server log's times minus this give the seconds below): {t0:.3f}")
    print("busy backends (samples per 3 s window, top 4):")
    for sec in sorted(windows):
        print(f"  {sec:4d}s", dict(windows[sec].most_common(4)))
    print("queue wait p99 ms by second of readiness:", " ".join(f"{w['sec']}:{w['p99']:.0f}" for w in waits))
    print("autovacuum runs (s since start: table, elapsed s):",
          " ".join(f"{v['at'] - t0:.0f}:{v['table'].split('.')[-1]}:{v['elapsed']}" for v in out.get("vacuum_runs") or []))
    print(f"{len(plans)} distinct statements over 150 ms")
    for plan in plans:
        print("=====", plan[-3000:])


if __name__ == "__main__":
    main()
