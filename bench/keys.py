"""``python -m bench keys``: what concurrency keys cost, and how close a keyed load runs to
its limits (docs/benchmarks.md, "Concurrency keys").

* **drain**: 20,000 single-step no-op workflows (``--jobs``) drained by ``orchwf worker``
  (2 workers, defaults), without keys (bench_noop) and with a key on every step
  (bench_keyed_noop: 1,000 distinct keys, limit 5, so 15 of each key's 20 steps wait
  for a slot at first), in interleaved rounds; median launch → last and the ratio.
* **limits**: two supervisors (``--workers 1 --concurrency 50`` each), 2,000 steps of
  5–50 ms on 20 keys with a limit of 2. What the limits allow: the slowest key's work
  over its 2 slots. The run's window (first start → last end, the steps' own clocks) is
  compared with it, and with the same steps without keys on 2 × 20 slots (the same 40 at
  once: the engine's own ceiling on this host).
"""

from __future__ import annotations

import random
import statistics
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from .common import log
from .drain import _spread, drain_once
from .systems.orchwf_sys import OrchwfSystem

JOBS = 20_000


class _KeysSystem(OrchwfSystem):
    app = "bench.apps.orchwf_keys_app"

    def __init__(self, workflow: str, concurrency: int | None = None, workers: int = 2) -> None:
        super().__init__(concurrency, workers)
        self.workflow = workflow

    def setup(self, server_dsn: str, dbname: str) -> None:
        from orchwf.client import register_workflow

        from .apps import orchwf_keys_app

        super().setup(server_dsn, dbname)
        assert self.conn is not None
        for d in orchwf_keys_app.DEFINITIONS:
            register_workflow(self.conn, d)

    def load(self, n: int, batch: int = 1000, workflow: str = "") -> float:
        """As OrchwfSystem.load, with each instance's key field (1,000 distinct keys)."""
        from orchwf.client import enqueue_many

        from .apps.orchwf_keys_app import KEYS

        assert self.conn is not None
        t0 = time.perf_counter()
        with self.conn.transaction():
            for i in range(0, n, batch):
                enqueue_many(self.conn, self.workflow, [{"k": j % KEYS} for j in range(i, min(n, i + batch))])
            self.conn.execute("ANALYZE")
        return time.perf_counter() - t0


def drains(server_dsn: str, logdir: Path, rounds: int, jobs: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"without keys": [], "with keys": []}
    for rnd in range(rounds):
        for label, workflow in (("without keys", "bench_noop"), ("with keys", "bench_keyed_noop")):
            log(f"--- keys drain {label}: {jobs:,} (round {rnd + 1} of {rounds})")
            system = _KeysSystem(workflow)
            system.setup(server_dsn, "orchwf_bench_keys")
            try:
                runs[label].append(drain_once(system, jobs, logdir))
            finally:
                system.close()
    out: dict[str, Any] = {label: {"per_s": _spread([r["per_s"] for r in rs]),
                                   "window_per_s": _spread([r["window_per_s"] for r in rs]),
                                   "all": [round(r["per_s"]) for r in rs],
                                   "cpu_us_per_job": {side: statistics.median(r["cpu_us_per_job"][side] for r in rs)
                                                      for side in ("workers", "postgres")}}
                            for label, rs in runs.items()}
    out["ratio"] = out["with keys"]["per_s"]["median"] / out["without keys"]["per_s"]["median"]
    out["window_ratio"] = out["with keys"]["window_per_s"]["median"] / out["without keys"]["window_per_s"]["median"]
    return out


def limits_once(server_dsn: str, logdir: Path, keyed: bool, n: int = 2000) -> dict[str, float]:
    rng = random.Random(15)
    inputs = [{"k": f"key{i % 20}", "ms": rng.randint(5, 50)} for i in range(n)]
    per_key: dict[str, float] = {}
    for x in inputs:
        per_key[x["k"]] = per_key.get(x["k"], 0.0) + x["ms"] / 1000 / 2
    system = _KeysSystem("bench_timed_keyed" if keyed else "bench_timed_plain",
                         concurrency=50 if keyed else 20, workers=1)
    system.setup(server_dsn, "orchwf_bench_key_limits")
    procs = []
    try:
        for i in range(2):
            procs.append(system.launch(logdir / f"supervisor-{i}"))
        for p in procs:
            system.wait_ready(p)
        time.sleep(1.0)
        assert system.conn is not None
        system.conn.execute("SELECT orchwf_enqueue_many(%s, %s::jsonb[])", (system.workflow, [Jsonb(x) for x in inputs]))
        deadline = time.monotonic() + 300
        while system.remaining() > 0:
            if time.monotonic() > deadline:
                raise TimeoutError("limits: not drained in 300 s")
            time.sleep(0.1)
        with psycopg.connect(system.dsn) as conn:
            rows = conn.execute("SELECT (s.output->>'t0')::float8, (s.output->>'t1')::float8, i.input->>'k',"
                                " extract(epoch FROM s.started_at)::float8, extract(epoch FROM s.completed_at)::float8"
                                " FROM orchwf_step_instances s JOIN orchwf_workflow_instances i"
                                " ON i.id = s.workflow_inst_id WHERE s.status = 'completed'").fetchall()
    finally:
        for p in procs:
            p.stop()
        system.close()
    window = max(r[1] for r in rows) - min(r[0] for r in rows)
    busy = sum(r[1] - r[0] for r in rows)
    bound = max(per_key.values())
    # (without keys a key's steps are not limited to 2 at a time: no handoff to measure)
    out = {"window_s": window, "bound_s": bound, "of_bound": bound / window, "avg_running": busy / window,
           "handoff_ms_p50": float("nan"), "handoff_ms_p90": float("nan")}
    if keyed:
        parts = _handoffs(rows)
        gaps = sorted(p["total"] for p in parts)
        out |= {"handoff_ms_p50": 1000 * gaps[len(gaps) // 2], "handoff_ms_p90": 1000 * gaps[len(gaps) * 9 // 10]}
        for name in ("to_finish", "to_claim", "to_start"):
            out[f"{name}_ms_p50"] = 1000 * statistics.median(p[name] for p in parts)
    return out


def _handoffs(rows: list[Any], slots: int = 2) -> list[dict[str, float]]:
    """How long a slot of a key stood free between two of its steps (each key runs at most
    ``slots`` at once, so its i-th start waited for its (i - slots)-th end), and where that
    time went: from the step's end to its finish's transaction (``to_finish``: the result
    on its way to the worker's loop, and group commit's linger), from there to the next
    step's claim (``to_claim``: 0 when the finish claimed it), and from the claim to the
    step's start (``to_start``: the commit, and the hand-over to a thread). Rows: (t0, t1,
    key, claimed at, finished at), seconds."""
    by_key: dict[str, list[Any]] = {}
    for row in rows:
        by_key.setdefault(row[2], []).append(row)
    parts: list[dict[str, float]] = []
    for steps in by_key.values():
        starts = sorted(steps, key=lambda r: r[0])
        ends = sorted(steps, key=lambda r: r[1])
        for i in range(slots, len(starts)):
            nxt, prev = starts[i], ends[i - slots]
            parts.append({"total": nxt[0] - prev[1], "to_finish": prev[4] - prev[1],
                          "to_claim": nxt[3] - prev[4], "to_start": nxt[0] - nxt[3]})
    return parts


def limits(server_dsn: str, logdir: Path, rounds: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {"keys (2 x 50 slots)": [], "no keys (2 x 20 slots)": []}
    for rnd in range(rounds):
        for label in runs:
            log(f"--- keys limits {label} (round {rnd + 1} of {rounds})")
            runs[label].append(limits_once(server_dsn, logdir, label.startswith("keys")))
    return {label: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for label, rs in runs.items()}


def run(server_dsn: str, workdir: Path, rounds: int = 3, jobs: int = JOBS) -> dict[str, Any]:
    logdir = workdir / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    return {"drain": drains(server_dsn, logdir, rounds, jobs), "limits": limits(server_dsn, logdir, rounds),
            "rounds": rounds, "jobs": jobs}


def table(r: dict[str, Any]) -> str:
    d = r["drain"]
    lines = ["| single-step drain | launch -> last (median, min-max) | window | rounds | worker CPU µs/job "
             "| Postgres CPU µs/job |", "|---|---:|---:|---|---:|---:|"]
    for label in ("without keys", "with keys"):
        rate, window, cpu = d[label]["per_s"], d[label]["window_per_s"], d[label]["cpu_us_per_job"]
        lines.append(f"| {label} | {rate['median']:,.0f}/s ({rate['min']:,.0f}-{rate['max']:,.0f}) | "
                     f"{window['median']:,.0f}/s | {', '.join(f'{x:,}' for x in d[label]['all'])} | "
                     f"{cpu['workers']:,.0f} | {cpu['postgres']:,.0f} |")
    lines.append(f"\nwith / without keys: {d['ratio']:.2f}x launch to last, {d['window_ratio']:.2f}x window "
                 f"({r['rounds']} interleaved rounds of {r['jobs']:,}; 1,000 keys, limit 5)\n")
    lines += ["| 2,000 steps of 5-50 ms, 20 keys | window (median) | the limits allow | of it "
              "| steps running on average | a key's slot free between two steps: p50, p90 |",
              "|---|---:|---:|---:|---:|---:|"]
    for label, x in r["limits"].items():
        lines.append(f"| {label} | {x['window_s']:.2f} s | {x['bound_s']:.2f} s | {x['of_bound']:.0%} | "
                     f"{x['avg_running']:.1f} of 40 | {x['handoff_ms_p50']:.1f}, {x['handoff_ms_p90']:.1f} ms |")
    keyed = r["limits"].get("keys (2 x 50 slots)", {})
    if "to_finish_ms_p50" in keyed:
        lines.append(f"\nThe keyed slot's handoff, medians: step end -> its finish's transaction "
                     f"{keyed['to_finish_ms_p50']:.1f} ms, -> the next step's claim {keyed['to_claim_ms_p50']:.1f} ms, "
                     f"-> its start {keyed['to_start_ms_p50']:.1f} ms")
    return "\n".join(lines)
