"""``python -m bench.waits [--dsn ADMIN_DSN] [--signals 10000]``: durable waits measured
(docs/benchmarks.md, "Durable waits").

On the benchmark's own cluster (or ``--dsn``), with ``orchwf worker`` (2 workers) running:

* **signal latency**, idle host: 50 instances whose first step waits for a signal, one
  signal at a time; from calling ``Client.signal`` to the waiting step's completion,
  seen committed by another session (wall clock);
* **signal throughput**: ``--signals`` instances waiting, then one signal each, sent by
  ``Client.signal_many`` 1,000 to a call: signals delivered (each waiting step
  completed with its payload) per second;
* **sleep lateness**: 50 instances with a step that sleeps 2 s after the first: how
  late each sleeping step starts after its due time.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from typing import Any

import psycopg

from orchwf import Client

from . import cluster as cl
from .common import log
from .run import cleanup, scratch
from .systems.orchwf_sys import OrchwfSystem


class _Waits(OrchwfSystem):
    app = "bench.apps.orchwf_waits_app"


def _wait(dsn: str, query: str, params: Any, until: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while int(conn.execute(query, params).fetchone()[0]) < until:
            if time.monotonic() > deadline:
                raise TimeoutError(query)
            time.sleep(0.05)


PARKED = ("SELECT count(*) FROM orchwf_live_steps WHERE workflow_inst_id = ANY(%s::uuid[]) AND step_id = 'wait'"
          " AND status = 'pending' AND pending_deps = 0")
WAIT_DONE = "SELECT 1 FROM orchwf_step_instances WHERE workflow_inst_id = %s AND step_id = 'wait' AND status = 'completed'"
DONE = "SELECT count(*) FROM orchwf_workflow_instances WHERE id = ANY(%s::uuid[]) AND status = 'completed'"


def latency(dsn: str, client: Client, n: int = 50) -> dict[str, float]:
    """Wall clock from the call of Client.signal (which connects, as it does for every
    call) to the waiting step's completion being committed and seen by another session."""
    ids = client.enqueue_many("bench_waits_signal", [{} for _ in range(n)])
    _wait(dsn, PARKED, (ids,), n)
    time.sleep(1.0)  # idle
    samples = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for instance in ids:
            t0 = time.perf_counter()
            client.signal(instance, "go", {"n": 1})
            while conn.execute(WAIT_DONE, (instance,)).fetchone() is None:
                time.sleep(0.0005)
            samples.append((time.perf_counter() - t0) * 1000)
            time.sleep(0.05)
    ordered = sorted(samples)
    return {"n": n, "p50_ms": statistics.median(ordered), "p95_ms": ordered[int(0.95 * (n - 1))],
            "max_ms": ordered[-1]}


def throughput(dsn: str, client: Client, n: int, senders: int = 2) -> dict[str, float]:
    """Client.signal_many, 1,000 signals a call, from ``senders`` threads at once (each
    its own share of the instances; the pool gives each its own connection): each signal
    completes its waiting step (and, as the step is the workflow's only one, ends its
    instance) in the call's transaction."""
    ids: list[str] = []
    for start in range(0, n, 1000):
        ids += client.enqueue_many("bench_waits_signal", [{} for _ in range(min(1000, n - start))])
    _wait(dsn, PARKED, (ids,), n)
    batches = [[(i, "go", {"n": k}) for k, i in enumerate(ids[start:start + 1000], start)]
               for start in range(0, n, 1000)]

    def send(share: list[list[tuple[str, str, dict[str, int]]]]) -> None:
        for batch in share:
            client.signal_many(batch)

    threads = [threading.Thread(target=send, args=(batches[k::senders],)) for k in range(senders)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sent = time.perf_counter() - t0
    _wait(dsn, DONE, (ids,), n, timeout=600)
    done = time.perf_counter() - t0
    return {"n": n, "senders": senders, "signals_per_s": n / sent, "completed_per_s": n / done, "send_s": sent,
            "complete_s": done}


def sleep_lateness(dsn: str, client: Client, n: int = 50) -> dict[str, float]:
    ids = client.enqueue_many("bench_waits_sleep", [{} for _ in range(n)])
    _wait(dsn, DONE, (ids,), n, timeout=120)
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT extract(epoch FROM n.started_at - (a.completed_at + interval '2 seconds'))::float8"
            " FROM orchwf_step_instances a JOIN orchwf_step_instances n ON n.workflow_inst_id = a.workflow_inst_id"
            " WHERE a.workflow_inst_id = ANY(%s::uuid[]) AND a.step_id = 'first' AND n.step_id = 'nap'",
            (ids,)).fetchall()
    late = sorted(max(0.0, r[0]) * 1000 for r in rows)
    return {"n": len(late), "p50_ms": statistics.median(late), "max_ms": late[-1]}


def run(server_dsn: str, signals: int, senders: int) -> dict[str, Any]:
    system = _Waits()
    system.setup(server_dsn, "orchwf_bench_waits")
    work = scratch()
    try:
        logdir = work / "logs"
        logdir.mkdir(parents=True, exist_ok=True)
        proc = system.launch(logdir)
        system.wait_ready(proc)
        client = Client(system.dsn)
        try:
            log("waits: signal latency on an idle host")
            lat = latency(system.dsn, client)
            log("waits: sleep lateness")
            nap = sleep_lateness(system.dsn, client)
            log(f"waits: {signals:,} signals")
            thr = throughput(system.dsn, client, signals, senders)
        finally:
            client.close()
            proc.stop()
    finally:
        system.close()
        cleanup(work)
    return {"latency": lat, "sleep": nap, "throughput": thr}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dsn", default=None, help="an admin database of an existing server [the own cluster]")
    p.add_argument("--signals", type=int, default=10_000)
    p.add_argument("--senders", type=int, default=2, help="threads sending at once [2: one per core here]")
    a = p.parse_args()
    if a.dsn:
        out = run(a.dsn, a.signals, a.senders)
    else:
        with cl.running() as cluster:
            out = run(cluster.dsn, a.signals, a.senders)
    lat, nap, thr = out["latency"], out["sleep"], out["throughput"]
    print()
    print(f"signal latency, idle host ({lat['n']} signals, one at a time, from calling Client.signal to the "
          "step's completion seen by another session): "
          f"p50 {lat['p50_ms']:.1f} ms, p95 {lat['p95_ms']:.1f} ms, max {lat['max_ms']:.1f} ms")
    print(f"sleep lateness ({nap['n']} steps sleeping 2 s): p50 {nap['p50_ms']:.0f} ms, max {nap['max_ms']:.0f} ms")
    print(f"{thr['n']:,} signals, Client.signal_many 1,000 a call, {thr['senders']} senders at once: {thr['signals_per_s']:,.0f} signals/s delivered "
          f"(each waiting step completed, its instance ended) ({thr['send_s']:.2f} s); all {thr['n']:,} instances "
          f"seen completed after {thr['complete_s']:.1f} s ({thr['completed_per_s']:,.0f}/s)")


if __name__ == "__main__":
    main()
