"""``python -m bench.claim_plan [--dsn ADMIN_DSN]``: the plan of the claim's queue scan on a
fresh backlog whose statistics lag (20,000 steps enqueued since the last ANALYZE, as
after a deploy or a burst), with bitmap scans allowed and not (docs/benchmarks.md, "The
ramp"). Generic plans (``force_generic_plan``), as the claim function runs.
"""

from __future__ import annotations

import argparse

import psycopg

from orchwf.client import enqueue_many, register_workflow
from orchwf.db.migrations import migrate

from .apps import orchwf_app
from .common import drop_database, fresh_database

PICK = """PREPARE pick_{name}(text, text[], int) AS
    SELECT r.step_inst_id FROM orchwf_ready_steps r
    WHERE r.queue = $1 AND r.workflow_id = ANY ($2) AND r.ready_at <= now() AND NOT r.suspect
    ORDER BY r.priority DESC, r.ready_at, r.workflow_inst_id, r.step_inst_id
    LIMIT $3 FOR UPDATE SKIP LOCKED"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres", help="an admin database")
    p.add_argument("--backlog", type=int, default=20_000)
    a = p.parse_args()
    dsn = fresh_database(a.dsn, "orchwf_claim_plan")
    migrate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for d in orchwf_app.DEFINITIONS:
            register_workflow(conn, d)
        conn.execute("ANALYZE")  # the statistics of empty tables
        with conn.transaction():
            for i in range(0, a.backlog, 1000):
                enqueue_many(conn, "bench_noop", [{} for _ in range(min(1000, a.backlog - i))])
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute("SET jit = off")
        for name, bitmap in (("before", "on"), ("after", "off")):
            conn.execute(f"SET enable_bitmapscan = {bitmap}")
            with conn.transaction(force_rollback=True):
                conn.execute(PICK.format(name=name))
                plan = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) EXECUTE pick_{name}"
                                    "('default', ARRAY['bench_noop'], 12)").fetchall()
            print(f"--- {name}: enable_bitmapscan = {bitmap}, {a.backlog:,} ready steps, claim of 12")
            print("\n".join(row[0] for row in plan))
    drop_database(a.dsn, "orchwf_claim_plan")


if __name__ == "__main__":
    main()
