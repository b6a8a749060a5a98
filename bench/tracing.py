"""``python -m bench tracing``: what OpenTelemetry tracing costs the drain. orchwf drains
20,000 single-step workflows at its defaults with the plain bench app and with
``bench.apps.orchwf_traced_app`` (a span per step attempt through the SDK's
BatchSpanProcessor, serialised by an exporter writing to /dev/null), in interleaved
rounds; printed: each side's median rate and the ratio (docs/benchmarks.md, "Tracing").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import log
from .drain import _spread, drain_once
from .systems.orchwf_sys import OrchwfSystem

JOBS = 20_000


class _Traced(OrchwfSystem):
    app = "bench.apps.orchwf_traced_app"


def run(server_dsn: str, workdir: Path, rounds: int = 3, jobs: int = JOBS) -> dict[str, Any]:
    logdir = workdir / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for rnd in range(rounds):
        for label, kind in (("off", OrchwfSystem), ("on", _Traced)):
            log(f"--- tracing {label}: drain {jobs:,} (round {rnd + 1} of {rounds})")
            system = kind()
            system.setup(server_dsn, f"orchwf_tracing_{label}")
            try:
                runs[label].append(drain_once(system, jobs, logdir))
            finally:
                system.close()
    out = {label: {"per_s": _spread([r["per_s"] for r in rs]),
                   "window_per_s": _spread([r["window_per_s"] for r in rs]),
                   "cpu_us_per_job": rs[len(rs) // 2]["cpu_us_per_job"]} for label, rs in runs.items()}
    out["ratio"] = out["on"]["per_s"]["median"] / out["off"]["per_s"]["median"]
    out["window_ratio"] = out["on"]["window_per_s"]["median"] / out["off"]["window_per_s"]["median"]
    out["rounds"], out["jobs"] = rounds, jobs
    return out


def table(r: dict[str, Any]) -> str:
    lines = ["| tracing | launch -> last (median, min-max) | window | worker CPU µs/job |", "|---|---:|---:|---:|"]
    for label in ("off", "on"):
        rate, window = r[label]["per_s"], r[label]["window_per_s"]
        lines.append(f"| {label} | {rate['median']:,.0f}/s ({rate['min']:,.0f}-{rate['max']:,.0f}) | "
                     f"{window['median']:,.0f}/s | {r[label]['cpu_us_per_job']['workers']:,.0f} |")
    lines.append(f"\non / off: {r['ratio']:.2f}x launch to last, {r['window_ratio']:.2f}x window "
                 f"({r['rounds']} rounds of {r['jobs']:,})")
    return "\n".join(lines)
