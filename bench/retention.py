"""``python -m bench.retention [--dsn ADMIN_DSN] [--history 1000000]``: retention drops a
day of history in the same time at any size, and a running drain does not stall
meanwhile (docs/benchmarks.md, "Retention").

On the benchmark's own cluster (or ``--dsn``): 1,000,000 finished single-step workflows
(their steps and 4 events each) are written into the history partition of a day ten days
ago; then 100,000 workflows are enqueued and ``orchwf worker --workers 2`` drains them
(with ``--retention 0``: its own pruner stays out of the way). With a fifth of the drain
done, the pruner (the code the supervisor runs: ``DETACH PARTITION ... CONCURRENTLY``,
then ``DROP``) drops the expired day, timed. Printed: the drop's duration and the
drain's completions per second before, during and after it.
"""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from orchwf.daemon.maintenance.pruner import Pruner

from . import cluster as cl
from .common import log
from .drain import drain_once
from .run import cleanup, scratch
from .systems.orchwf_sys import OrchwfSystem

RETENTION_SECONDS = 7 * 86400.0
DAY_AGO = 10  # the seeded day: beyond the 7-day retention

# One finished single-step workflow per row, all created on the seeded day, with IDs that
# carry their created_at (UUIDv7 layout), as orchwf writes them.
SEED_SQL = """
WITH src AS MATERIALIZED (
    SELECT t0, orchwf_retention_bench_id(t0) AS wid, orchwf_retention_bench_id(t0) AS sid
    FROM (SELECT %(day)s::timestamptz + interval '1 day' * ((i - 1)::float8 / %(n)s) AS t0
          FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS i) x
), wi AS (
    INSERT INTO orchwf_instance_history
        (id, workflow_id, status, input, output, context, started_at, completed_at, run_mode, steps_remaining,
         created_at, updated_at)
    SELECT wid, 'bench_noop', 'completed', '{}', '{"t_s": 1}', '{"s": {"t_s": 1}}', t0, t0 + interval '15 ms',
           'daemon', 0, t0, t0 + interval '15 ms'
    FROM src
), si AS (
    INSERT INTO orchwf_step_history
        (id, step_id, workflow_inst_id, status, input, output, started_at, completed_at, attempts, max_attempts,
         created_at, updated_at, instance_created_at)
    SELECT sid, 's', wid, 'completed', '{}', '{"t_s": 1}', t0 + interval '10 ms', t0 + interval '15 ms', 1, 1,
           t0, t0 + interval '15 ms', t0
    FROM src
)
INSERT INTO orchwf_event_history (id, workflow_inst_id, step_inst_id, event_type, event_data, "timestamp",
                                  created_at, instance_created_at)
SELECT orchwf_retention_bench_id(src.t0), src.wid, e.step_inst_id, e.event_type, '{}', src.t0 + e.after,
       src.t0 + e.after, src.t0
FROM src CROSS JOIN LATERAL (VALUES
    (NULL::uuid, 'workflow.started', interval '0 ms'), (src.sid, 'step.started', interval '10 ms'),
    (src.sid, 'step.completed', interval '15 ms'), (NULL::uuid, 'workflow.completed', interval '15 ms')
) AS e(step_inst_id, event_type, after)
"""
ID_FUNCTION_SQL = """
CREATE OR REPLACE FUNCTION orchwf_retention_bench_id(p_at timestamptz) RETURNS uuid LANGUAGE sql VOLATILE AS $$
    SELECT (lpad(to_hex((extract(epoch FROM p_at) * 1000)::bigint), 12, '0') || '7'
            || substr(md5(random()::text), 1, 3) || '8' || substr(md5(random()::text), 1, 15))::uuid
$$
"""
CHUNK = 250_000


class _NoRetention(OrchwfSystem):
    """The daemon with its own pruner off: the bench drops the day itself, timed."""

    def _worker_flags(self) -> list[str]:
        return [*super()._worker_flags(), "--retention", "0"]


def seed(conn: psycopg.Connection[Any], n: int) -> tuple[str, float]:
    day = conn.execute("SELECT orchwf_partition_floor(now() - %s * interval '1 day', interval '1 day')",
                       (DAY_AGO,)).fetchone()[0]
    conn.execute("SELECT orchwf_ensure_partitions(%s, %s + interval '1 day')", (day, day))
    conn.execute(ID_FUNCTION_SQL)
    t0 = time.perf_counter()
    for lo in range(1, n + 1, CHUNK):
        conn.execute(SEED_SQL, {"day": day, "n": n, "lo": lo, "hi": min(n, lo + CHUNK - 1)})
        log(f"retention: seeded {min(n, lo + CHUNK - 1):,} of {n:,} finished workflows")
    conn.execute("VACUUM ANALYZE")
    return day.isoformat(), time.perf_counter() - t0


def run(server_dsn: str, history: int, drain: int, workdir: Path) -> dict[str, Any]:
    system = _NoRetention()
    system.setup(server_dsn, "orchwf_bench_retention")
    try:
        with psycopg.connect(system.dsn, autocommit=True) as conn:
            day, seed_seconds = seed(conn, history)
            sizes = conn.execute(
                "SELECT sum(pg_total_relation_size(c.oid))::bigint AS bytes FROM pg_class c "
                "WHERE c.relname LIKE 'orchwf\\_%%\\_history\\_p%%' AND c.relkind = 'r'").fetchone()[0]
        dropped: dict[str, Any] = {}

        def drop_during_the_drain() -> None:
            with psycopg.connect(system.dsn, autocommit=True) as conn:
                loaded = False
                while True:  # the load committed, then the drain is well under way
                    left = conn.execute("SELECT count(*) FROM orchwf_live_instances").fetchone()[0]
                    loaded = loaded or left >= drain
                    if loaded and left <= drain * 0.8:
                        break
                    time.sleep(0.05)
                t_start = time.time()
                result = Pruner("public", RETENTION_SECONDS).drop_expired(conn, RETENTION_SECONDS)
                t_end = time.time()
            dropped.update(start=t_start, end=t_end, seconds=t_end - t_start,
                           partitions=result.partitions, instances=result.pruned)
            log(f"retention: dropped {result.partitions} day(s), about {result.pruned:,} instances, "
                f"in {t_end - t_start:.3f}s")

        logdir = workdir / "logs"
        logdir.mkdir(parents=True, exist_ok=True)
        dropper = threading.Thread(target=drop_during_the_drain)
        t_launch_guess = time.time()
        dropper.start()
        result = drain_once(system, drain, logdir)
        dropper.join()
        per_second = system.completions_per_second(t_launch_guess, 60)
    finally:
        system.close()
    return {"history": history, "day": day, "seed_seconds": seed_seconds, "history_bytes": sizes,
            "drop": dropped, "drain": {k: result[k] for k in ("n", "per_s", "window_per_s")},
            "per_second": per_second, "t0": t_launch_guess}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dsn", default=None, help="an admin database of an existing server [the own cluster]")
    p.add_argument("--history", type=int, default=1_000_000)
    p.add_argument("--drain", type=int, default=100_000)
    a = p.parse_args()
    work = scratch()
    try:
        if a.dsn:
            out = run(a.dsn, a.history, a.drain, work)
        else:
            with cl.running() as cluster:
                out = run(cluster.dsn, a.history, a.drain, work)
    finally:
        cleanup(work)
    drop = out["drop"]
    busy = [i for i, n in enumerate(out["per_second"]) if n]
    sec = [(i, out["per_second"][i]) for i in range(busy[0], busy[-1] + 1)]  # a stalled second counts as 0
    during = [n for i, n in sec if out["t0"] + i + 1 > drop["start"] and out["t0"] + i < drop["end"]]
    before = [n for i, n in sec if out["t0"] + i + 1 <= drop["start"]]
    print()
    print(f"history: {out['history']:,} finished workflows ({out['history'] * 4:,} events) on {out['day'][:10]}, "
          f"{out['history_bytes'] / 2**20:,.0f} MiB of partitions, seeded in {out['seed_seconds']:.0f}s")
    print(f"drop of the expired day: {drop['seconds'] * 1000:,.0f} ms ({drop['partitions']} range, "
          f"about {drop['instances']:,} instances), DETACH ... CONCURRENTLY + DROP")
    print(f"drain of {out['drain']['n']:,}: {out['drain']['per_s']:,.0f}/s launch to last, "
          f"{out['drain']['window_per_s']:,.0f}/s window")
    print("completions per second from the load's start: " + ", ".join(f"{n:,}" for _, n in sec))
    if before and during:
        print(f"during the drop: min {min(during):,}/s; before it: median {sorted(before)[len(before) // 2]:,}/s")


if __name__ == "__main__":
    main()
