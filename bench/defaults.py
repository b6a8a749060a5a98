"""``python -m bench defaults``: the drain of orchwf alone at several ``--concurrency``
values, for no-op steps and for steps that wait 10 ms on I/O, to choose the default a
user gets (docs/benchmarks.md, "Choosing the defaults").

Each point is the user's stopwatch: N workflows waiting, ``orchwf worker --workers 2``
launched, the clock stopped at the last completion; concurrencies are interleaved in
rounds so that a change of load on the machine hits all of them alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import log
from .drain import _spread, drain_once
from .systems.orchwf_sys import OrchwfSystem

CONCURRENCIES = (10, 25, 50, 100)
# (workflow of bench/apps/orchwf_app.py, jobs per drain)
KINDS = (("bench_noop", 20_000), ("bench_io", 20_000))


class _Workflow(OrchwfSystem):
    """orchwf draining one chosen workflow of the bench app."""

    def __init__(self, workflow: str, concurrency: int) -> None:
        super().__init__(concurrency)
        self.workflow = workflow

    def load(self, n: int, batch: int = 1000, workflow: str = "") -> float:
        return super().load(n, batch, workflow or self.workflow)


def run(server_dsn: str, workdir: Path, rounds: int = 2, scale: float = 1.0) -> dict[str, Any]:
    """Every (kind, concurrency), ``rounds`` rounds; the median per point."""
    logdir = workdir / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    points: dict[str, dict[int, list[dict[str, Any]]]] = {}
    for rnd in range(rounds):
        for workflow, n in KINDS:
            n = max(100, int(n * scale))
            for c in CONCURRENCIES:
                log(f"--- defaults: {workflow} x {n:,} at --concurrency {c} (round {rnd + 1} of {rounds})")
                system = _Workflow(workflow, c)
                system.setup(server_dsn, f"orchwf_defaults_{workflow}_{c}")
                try:
                    r = drain_once(system, n, logdir)
                finally:
                    system.close()
                points.setdefault(workflow, {}).setdefault(c, []).append(r)
    return {"rounds": rounds, "points": {
        wf: {c: {"n": rs[0]["n"],
                 "per_s": _spread([r["per_s"] for r in rs]),
                 "window_per_s": _spread([r["window_per_s"] for r in rs]),
                 "first_seconds": rs[len(rs) // 2]["first_seconds"]}
             for c, rs in by_c.items()}
        for wf, by_c in points.items()}}


def table(result: dict[str, Any]) -> str:
    """A markdown table: rate per (kind, concurrency), median and spread of the rounds."""
    lines = ["| steps | --concurrency | launch -> last (median, min-max) | window | first 3 s (completions/s) |",
             "|---|---:|---:|---:|---|"]
    for wf, by_c in result["points"].items():
        for c, p in sorted(by_c.items(), key=lambda kv: int(kv[0])):
            rate, window = p["per_s"], p["window_per_s"]
            first = ", ".join(f"{x:,}" for x in list(p["first_seconds"])[:3])
            lines.append(f"| {wf} ({p['n']:,}) | {c} | {rate['median']:,.0f}/s ({rate['min']:,.0f}-{rate['max']:,.0f})"
                         f" | {window['median']:,.0f}/s | {first} |")
    return "\n".join(lines)
