"""The drain, as a user sees it: N jobs are waiting, the worker process(es) are launched,
and the clock runs from the launch to the last completion.

Two figures per run:

* **launch -> last completion**: from the moment the harness starts the system's worker
  process(es) (orchwf: ``orchwf worker --workers 2``; the peers: 2 processes) to the
  last completion the system recorded in the database. Start-up (imports, forks,
  connections, the first claim) counts, as it does for a user.
* **window**: first job start -> last completion, the steady rate once running.

Completion times are the ones each system writes itself: orchwf's step ``completed_at``,
pgqueuer's ``pgqueuer_log`` row of status ``successful``, procrastinate's ``succeeded``
event; each is its transaction's ``now()``, a little before that transaction commits.
A job's start is orchwf's step ``started_at`` (its claim transaction), and for the
peers the wall time the job function recorded when it ran.

Cases: each system at its own defaults (no flag) and all at concurrency/batch 50, for
every N; systems interleaved in rounds, so that a change of load on the shared machine
hits every system alike; median and min-max per case. procrastinate, ~15x slower, runs at
the first (smallest) N only, to keep a full run bounded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from .common import backend_pids, cpu_seconds, log, memory_of
from .systems.base import System

FIRST_SECONDS = 10  # completions per second are recorded over this many seconds after launch
SLOW_SYSTEMS_FIRST_N_ONLY = ("procrastinate",)


@dataclass(frozen=True)
class Case:
    """A drain configuration: ``concurrency`` None runs every system at its defaults."""

    name: str
    concurrency: int | None

    @property
    def label(self) -> str:
        return "defaults" if self.concurrency is None else f"concurrency/batch {self.concurrency}"


def cases(concurrency: int) -> list[Case]:
    return [Case("defaults", None), Case(f"c{concurrency}", concurrency)]


def drain_once(system: System, n: int, logdir: Path, *, batch: int = 1000, timeout: float = 900.0,
               housekeeping: bool = False) -> dict[str, Any]:
    """Enqueue ``n`` jobs (no worker running), then launch the workers and wait until all
    are done. ``housekeeping``: VACUUM ANALYZE every table of the system between the
    enqueue and the launch (the history scenario does so before each of its drains)."""
    load_seconds = system.load(n, batch)
    if housekeeping:
        system.housekeeping()
    harness = set(backend_pids(system.dsn))
    cpu: dict[int, float] = {}
    backends: set[int] = set()
    peak_mem: dict[int, dict[str, float]] = {}

    t_launch = time.time()
    proc = system.launch(logdir)
    roles: dict[str, list[int]] = {}
    try:
        deadline = time.monotonic() + timeout
        while True:
            left = system.remaining()
            roles = system.process_roles(proc)
            workers = [pid for pids in roles.values() for pid in pids]
            backends.update(p for p in backend_pids(system.dsn) if p not in harness)
            for pid in [*workers, *backends]:
                cpu[pid] = max(cpu.get(pid, 0.0), cpu_seconds(pid))
            for pid in workers:
                m = memory_of(pid)
                if pid not in peak_mem or m["rss_mib"] > peak_mem[pid]["rss_mib"]:
                    peak_mem[pid] = m
            if left == 0:
                break
            if not proc.alive():
                raise RuntimeError(f"{system.name} workers exited: {proc.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{system.name}: {left} of {n} jobs left after {timeout:.0f}s")
            time.sleep(0.25)
        worker_pids = {pid for pids in roles.values() for pid in pids}
        memory_load = {role: [dict(peak_mem.get(pid, memory_of(pid)), pid=pid) for pid in pids]
                       for role, pids in roles.items()}
    finally:
        proc.stop()
    t_last = system.last_completion(t_launch)
    t_first = system.first_start(t_launch, proc)
    cpu_workers = sum(v for pid, v in cpu.items() if pid in worker_pids)
    cpu_backends = sum(v for pid, v in cpu.items() if pid in backends)
    failed = system.failed()
    out = {
        "n": n, "knob": system.knob_label(),
        "launch_to_last_s": t_last - t_launch, "per_s": n / (t_last - t_launch),
        "window_s": t_last - t_first, "window_per_s": n / (t_last - t_first),
        "first_start_after_launch_s": t_first - t_launch,
        "first_seconds": system.completions_per_second(t_launch, FIRST_SECONDS),
        "load_seconds": load_seconds, "failed": failed,
        # Whole lifetime of the processes (start-up included), divided by n.
        "cpu_us_per_job": {"workers": cpu_workers / n * 1e6, "postgres": cpu_backends / n * 1e6},
        "memory_load": memory_load,
    }
    log(f"{system.name} [{out['knob']}]: {n:,} jobs, launch -> last completion {out['launch_to_last_s']:.2f}s "
        f"= {out['per_s']:,.0f}/s; window {out['window_s']:.2f}s = {out['window_per_s']:,.0f}/s; first start "
        f"{out['first_start_after_launch_s']:.2f}s after launch" + (f"; {failed} FAILED" if failed else ""))
    return out


def _spread(values: list[float]) -> dict[str, float]:
    s = sorted(values)
    return {"median": s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2,
            "min": s[0], "max": s[-1]}


def run_cases(*, systems: list[str], sizes: tuple[int, ...], case_list: list[Case], rounds: int, logdir: Path,
              with_system: Callable[[str, str, Case, Callable[[System], Any]], Any],
              batch: int, timeout: float) -> dict[str, Any]:
    """Every (N, case), ``rounds`` rounds of the systems in turn. ``with_system(name,
    label, case, body)`` sets up a fresh database for the system at the case's
    concurrency and runs ``body`` on it."""
    out: dict[str, Any] = {"rounds": rounds, "cases": [], "notes": []}
    for name in systems:
        if name in SLOW_SYSTEMS_FIRST_N_ONLY and len(sizes) > 1:
            note = (f"{name} drains only {sizes[0]:,} jobs (~15x slower than orchwf; skipped at "
                    f"{', '.join(f'{n:,}' for n in sizes[1:])} to keep a full run bounded)")
            out["notes"].append(note)
            log(note)
    for i, n in enumerate(sizes):
        for case in case_list:
            names = [s for s in systems if i == 0 or s not in SLOW_SYSTEMS_FIRST_N_ONLY]
            runs: dict[str, list[dict[str, Any]]] = {s: [] for s in names}
            for rnd in range(rounds):
                for name in names:
                    log(f"--- drain {n:,}, {case.label}: {name} (round {rnd + 1} of {rounds})")
                    r = with_system(name, f"drain{n}{case.name}", case,
                                    partial(drain_once, n=n, logdir=logdir, batch=batch, timeout=timeout))
                    if r is not None:
                        runs[name].append(r)
            entry: dict[str, Any] = {"n": n, "case": case.name, "label": case.label, "systems": {}}
            for name, rs in runs.items():
                if not rs:
                    entry["systems"][name] = None
                    continue
                entry["systems"][name] = {
                    "knob": rs[0]["knob"], "runs": rs,
                    "per_s": _spread([r["per_s"] for r in rs]),
                    "window_per_s": _spread([r["window_per_s"] for r in rs]),
                    "first_start_after_launch_s": _spread([r["first_start_after_launch_s"] for r in rs]),
                }
            entry["ratios"] = ratios(entry)
            out["cases"].append(entry)
    return out


def ratios(entry: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """orchwf / peer of the medians, per peer: launch-to-last and window."""
    mine = entry["systems"].get("orchwf")
    out: dict[str, dict[str, float | None]] = {}
    for peer, theirs in entry["systems"].items():
        if peer == "orchwf":
            continue
        out[peer] = {key: (mine[key]["median"] / theirs[key]["median"] if mine and theirs else None)
                     for key in ("per_s", "window_per_s")}
    return out


def median_rate(drain: dict[str, Any] | None, system: str, case: str) -> float | None:
    """The median launch-to-last rate of ``system`` at the first N of ``case``."""
    for entry in (drain or {}).get("cases", []):
        if entry["case"] == case and entry["systems"].get(system):
            return float(entry["systems"][system]["per_s"]["median"])
    return None
