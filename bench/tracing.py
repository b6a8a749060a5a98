"""``python -m bench tracing``: what OpenTelemetry tracing costs the drain. orchwf drains
100,000 single-step workflows at its defaults with the plain bench app and with
``bench.apps.orchwf_traced_app`` (a span per step attempt through the SDK's
BatchSpanProcessor and the OTLP/HTTP protobuf exporter, posting to a sink in a process of
its own: bench/otlp_sink.py), in interleaved rounds; printed: each side's median rate,
worker CPU per job and the ratio (docs/benchmarks.md, "Tracing"). Every traced drain
checks that the sink received a span per job: a span dropped by a full queue would make
tracing look cheaper than it is.

100,000 a drain (12-20 s), not 20,000 (3 s): a traced worker starts ~0.1-0.15 s later
(the app's exporter imports, the hook's provider), which is 4-5% of a 3-second drain
and nothing of a worker that runs for days; and single 3-second drains differ by 10%
in either direction on this machine (docs/benchmarks.md, "Tracing", 2026-12-04).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from .common import cpu_seconds, log
from .drain import _spread, drain_once
from .otlp_sink import Sink
from .systems.orchwf_sys import OrchwfSystem

JOBS = 100_000


class _Traced(OrchwfSystem):
    app = "bench.apps.orchwf_traced_app"

    def __init__(self, endpoint: str, sample_ratio: float | None = None) -> None:
        super().__init__()
        self.env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint}  # the sink's
        if sample_ratio is not None:  # the workers' sampler (tracing.instance_sampled)
            self.env |= {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                         "OTEL_TRACES_SAMPLER_ARG": str(sample_ratio)}


def run(server_dsn: str, workdir: Path, rounds: int = 3, jobs: int = JOBS,
        sample_ratio: float | None = None) -> dict[str, Any]:
    """Drains with tracing off and on (every span kept), and with ``sample_ratio`` also
    "sampled": the workers' sampler keeping that ratio of the instances."""
    logdir = workdir / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    labels = ["off", "on"] + (["sampled"] if sample_ratio is not None else [])
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in labels}
    sink_cpu = 0.0
    sampled_spans = 0
    with Sink() as sink:
        for rnd in range(rounds):
            for label in labels:
                log(f"--- tracing {label}: drain {jobs:,} (round {rnd + 1} of {rounds})")
                system = (OrchwfSystem() if label == "off"
                          else _Traced(sink.endpoint, sample_ratio if label == "sampled" else None))
                system.setup(server_dsn, f"orchwf_tracing_{label}")
                before, cpu_before = sink.count(), cpu_seconds(sink.proc.pid)
                try:
                    runs[label].append(drain_once(system, jobs, logdir))
                finally:
                    system.close()
                spans = sink.count() - before  # the workers flushed at exit (drain_once stopped them)
                sink_cpu += cpu_seconds(sink.proc.pid) - cpu_before
                if label == "on" and spans != jobs:
                    raise RuntimeError(f"the sink received {spans:,} spans for {jobs:,} jobs: spans were dropped")
                if label == "sampled":
                    sampled_spans += spans
    out = {label: {"per_s": _spread([r["per_s"] for r in rs]),
                   "window_per_s": _spread([r["window_per_s"] for r in rs]),
                   "cpu_us_per_job": {side: statistics.median(r["cpu_us_per_job"][side] for r in rs)
                                      for side in ("workers", "postgres")}} for label, rs in runs.items()}
    out["ratio"] = out["on"]["per_s"]["median"] / out["off"]["per_s"]["median"]
    if sample_ratio is not None:
        out["sampled_ratio"] = out["sampled"]["per_s"]["median"] / out["off"]["per_s"]["median"]
        out["sample_ratio"], out["kept"] = sample_ratio, sampled_spans / (rounds * jobs)
    out["window_ratio"] = out["on"]["window_per_s"]["median"] / out["off"]["window_per_s"]["median"]
    out["rounds"], out["jobs"] = rounds, jobs
    out["sink_cpu_us_per_span"] = sink_cpu / (rounds * jobs) * 1e6  # the stand-in collector's, not a worker's
    return out


def table(r: dict[str, Any]) -> str:
    lines = ["| tracing | launch -> last (median, min-max) | window | worker CPU µs/job | Postgres CPU µs/job |",
             "|---|---:|---:|---:|---:|"]
    for label in [x for x in ("off", "on", "sampled") if x in r]:
        rate, window, cpu = r[label]["per_s"], r[label]["window_per_s"], r[label]["cpu_us_per_job"]
        lines.append(f"| {label} | {rate['median']:,.0f}/s ({rate['min']:,.0f}-{rate['max']:,.0f}) | "
                     f"{window['median']:,.0f}/s | {cpu['workers']:,.0f} | {cpu['postgres']:,.0f} |")
    lines.append(f"\non / off: {r['ratio']:.2f}x launch to last, {r['window_ratio']:.2f}x window "
                 f"({r['rounds']} rounds of {r['jobs']:,}); every span received by the sink, "
                 f"which spent {r['sink_cpu_us_per_span']:.0f} µs of CPU a span")
    if "sampled" in r:
        lines.append(f"sampled ({r['sample_ratio']:g} of the instances by the workers' sampler; "
                     f"{r['kept']:.1%} of the spans kept) / off: {r['sampled_ratio']:.2f}x launch to last")
    return "\n".join(lines)
