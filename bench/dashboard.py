"""``python -m bench.dashboard [--dsn ADMIN_DSN] [--history 2000000]``: the dashboard's
overview with millions of finished instances (docs/benchmarks.md, "Dashboard").

On the benchmark's own cluster (or ``--dsn``): ``--history`` finished single-step
workflows (their steps and 4 events each) are written into history over the two hours
ending ten minutes ago (the bench's seed: half of them in the last hour), then the stats
rollup (the daemon's maintenance call) catches up on the last hour, timed per call, and
once more in steady state. A real ``orchwf dashboard`` then serves the overview page
``--requests`` times, timed from request to last byte; for comparison, the overview's
previous statement (release 3's, which counted the last hour in history) is timed too.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from typing import Any

import psycopg

from orchwf.daemon.maintenance.stats import KEEP_SECONDS, LAG_SECONDS
from orchwf.db.queries import Queries

from . import cluster as cl
from .common import log
from .systems.orchwf_sys import OrchwfSystem

# Release 3's overview counts of finished instances: the last hour and the last five
# minutes of history by completed_at (BRIN), which the rollup replaced.
PREVIOUS_OVERVIEW_SQL = """
SELECT
  (SELECT coalesce(jsonb_object_agg(f.status, f.n), '{}') FROM (
      SELECT status, count(*) AS n FROM orchwf_instance_history
      WHERE completed_at >= now() - 3600 * interval '1 second' GROUP BY status) f) AS last_hour,
  (SELECT coalesce(jsonb_object_agg(f.status, f.n), '{}') FROM (
      SELECT status, count(*) AS n FROM orchwf_instance_history
      WHERE completed_at >= now() - 300 * interval '1 second' GROUP BY status) f) AS last_window
"""


def _ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"p50": statistics.median(ordered) * 1000, "p95": ordered[int(0.95 * (len(ordered) - 1))] * 1000,
            "max": ordered[-1] * 1000}


def _roll_up(dsn: str) -> dict[str, Any]:
    q = Queries.of("public")
    calls: list[tuple[int, float]] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:  # ten minutes a call, until the open minutes
            t0 = time.perf_counter()
            minutes = q.roll_up_stats(conn, LAG_SECONDS, KEEP_SECONDS)
            calls.append((minutes, time.perf_counter() - t0))
            if minutes <= 2 or len(calls) > 10:
                break
        steady = []
        for _ in range(5):
            t0 = time.perf_counter()
            q.roll_up_stats(conn, LAG_SECONDS, KEEP_SECONDS)
            steady.append(time.perf_counter() - t0)
        hour = conn.execute("SELECT sum(completed) FROM orchwf_stats_minutes"
                            " WHERE minute >= now() - interval '1 hour'").fetchone()[0]
    return {"catch_up": calls, "steady": _ms(steady), "last_hour_completed": int(hour or 0)}


def _previous(dsn: str, n: int = 5) -> dict[str, float]:
    times = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(n):
            t0 = time.perf_counter()
            conn.execute(PREVIOUS_OVERVIEW_SQL).fetchall()
            times.append(time.perf_counter() - t0)
    return _ms(times)


def _serve(dsn: str, requests: int) -> dict[str, Any]:
    proc = subprocess.Popen([sys.executable, "-m", "orchwf", "dashboard", "--dsn", dsn, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        match = re.search(r"on (http://\S+/)", proc.stdout.readline())
        assert match, "the dashboard did not start"
        url = match.group(1)
        times, page = [], ""
        for i in range(requests + 3):
            t0 = time.perf_counter()
            with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 (our own local server)
                page = resp.read().decode()
            if i >= 3:  # the pool's connections are open and their plans cached
                times.append(time.perf_counter() - t0)
        card = re.search(r'<span class="n">([\d,]+)</span><span class="what">completed', page)
        return {"load": _ms(times), "requests": requests, "completed_card": card.group(1) if card else None,
                "charts": page.count('<figure class="chart"')}
    finally:
        proc.terminate()
        proc.wait(10)


def run(server_dsn: str, history: int, requests: int) -> dict[str, Any]:
    system = OrchwfSystem()
    system.setup(server_dsn, "orchwf_bench_dashboard")
    try:
        log(f"dashboard: seeding {history:,} finished workflows")
        seed_seconds = system.seed_history(history)
        log("dashboard: the stats rollup catches up on the last hour")
        rollup = _roll_up(system.dsn)
        log("dashboard: the overview page")
        served = _serve(system.dsn, requests)
        previous = _previous(system.dsn)
    finally:
        system.close()
    return {"history": history, "seed_seconds": seed_seconds, "rollup": rollup, "served": served,
            "previous": previous}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dsn", default=None, help="an admin database of an existing server [the own cluster]")
    p.add_argument("--history", type=int, default=2_000_000)
    p.add_argument("--requests", type=int, default=50)
    a = p.parse_args()
    if a.dsn:
        out = run(a.dsn, a.history, a.requests)
    else:
        with cl.running() as cluster:
            out = run(cluster.dsn, a.history, a.requests)
    r, s, prev = out["rollup"], out["served"], out["previous"]
    print()
    print(f"history: {out['history']:,} finished workflows over two hours, seeded in {out['seed_seconds']:.0f}s")
    print("stats rollup, catching up on the last hour (minutes, ms per call): "
          + ", ".join(f"{m} in {t * 1000:,.0f}" for m, t in r["catch_up"]))
    print(f"stats rollup, steady state: p50 {r['steady']['p50']:,.1f} ms, max {r['steady']['max']:,.1f} ms; "
          f"the last hour holds {r['last_hour_completed']:,} completed")
    print(f"overview page ({s['requests']} requests, request to last byte): p50 {s['load']['p50']:,.1f} ms, "
          f"p95 {s['load']['p95']:,.1f} ms, max {s['load']['max']:,.1f} ms; "
          f"completed card {s['completed_card']}, {s['charts']} charts")
    print(f"previous overview's finished counts (history by completed_at): p50 {prev['p50']:,.0f} ms, "
          f"max {prev['max']:,.0f} ms")


if __name__ == "__main__":
    main()
