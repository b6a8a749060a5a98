"""``python -m bench.span_cost [--spans 20000] [--rounds 5]``: the CPU one step attempt's
span costs a worker, without Postgres or the daemon around it.

The tracer is set up by ``bench.apps.orchwf_traced_app.configure_tracing`` (the SDK's
BatchSpanProcessor and the OTLP/HTTP protobuf exporter), exporting to a sink in another
process (bench/otlp_sink.py). Each case times ``spans`` spans and the flush of the
exporter; printed per span (the median of ``rounds``):

* ``caller``: CPU of the thread that runs the step (time.thread_time): building the
  span, making it current, ending it and queueing it for the exporter;
* ``process``: CPU of the whole process (time.process_time), so the exporter thread's
  protobuf serialisation and HTTP requests too: what a worker pays per span.

Cases: orchwf's ``step_span``/``end_step`` with no traceparent in the metadata (the
instance's own trace, as in ``python -m bench tracing``) and with one (a producer that
traced the enqueue), and with a traceparent whose trace the producer did not sample
(the SDK's default sampler follows it: no span is recorded); the bare SDK (``start_as_current_span`` with the same name, kind
and attributes, parent given), the floor orchwf's wrapping adds to; tracing off.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

from orchwf import tracing
from orchwf.db.rows import ClaimedStep

from .otlp_sink import Sink

CHUNK = 512  # the BatchSpanProcessor's default export batch
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _rows(n: int, metadata: dict[str, Any] | None) -> list[ClaimedStep]:
    return [ClaimedStep(step_inst_id=uuid.uuid4(), workflow_inst_id=uuid.uuid4(), workflow_id="bench_noop",
                        step_id="s", lease_token=1, attempt=1, retry_count=0, workflow_input={},
                        metadata=metadata, trace_id=None, completed=None, step_input={}) for _ in range(n)]


def _orchwf(rows: list[ClaimedStep]) -> None:
    for row in rows:
        with tracing.step_span(row, "bench-w1") as span:
            if span is not None:
                tracing.end_step(span, "completed", None, None)


def _bare_sdk(rows: list[ClaimedStep]) -> None:
    """The SDK alone: what any span of this shape costs, whoever makes it."""
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind

    tracer = trace.get_tracer("bench")
    parent = tracing.parent_context(rows[0].workflow_inst_id, None)
    for row in rows:
        with tracer.start_as_current_span(
                "bench_noop.s", context=parent, kind=SpanKind.CONSUMER,
                attributes={"orchwf.workflow_id": row.workflow_id, "orchwf.instance_id": "x" * 36,
                            "orchwf.step_id": row.step_id, "orchwf.step_instance_id": "y" * 36,
                            "orchwf.attempt": row.attempt, "orchwf.worker": "bench-w1"}) as span:
            span.set_attribute("orchwf.outcome", "completed")


def _time(body: Callable[[list[ClaimedStep]], None], rows: list[ClaimedStep]) -> tuple[float, float]:
    """(caller, process) CPU µs per span, the exporter's work included in the latter. The
    spans are made in chunks of one export batch, each flushed before the next: a tight
    loop makes spans faster than the exporter ships them, and the BatchSpanProcessor
    would drop the rest (a worker makes them at a few thousand a second; the drain
    checks that none is dropped there)."""
    from opentelemetry import trace

    flush = getattr(trace.get_tracer_provider(), "force_flush", lambda: True)
    flush()
    caller = 0.0
    p0 = time.process_time()
    for i in range(0, len(rows), CHUNK):
        t0 = time.thread_time()
        body(rows[i:i + CHUNK])
        caller += time.thread_time() - t0
        flush()
    p1 = time.process_time()
    return caller / len(rows) * 1e6, (p1 - p0) / len(rows) * 1e6


def measure(spans: int = 20_000, rounds: int = 5) -> dict[str, dict[str, float]]:
    from .apps.orchwf_traced_app import configure_tracing

    with Sink() as sink:
        os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = sink.endpoint
        tracing.start_in_worker(configure_tracing)
        cases: dict[str, tuple[Callable[[list[ClaimedStep]], None], dict[str, Any] | None]] = {
            "orchwf, no traceparent": (_orchwf, None),
            "orchwf, traceparent": (_orchwf, {"traceparent": TRACEPARENT}),
            "bare SDK": (_bare_sdk, None),
            "orchwf, traceparent not sampled": (_orchwf, {"traceparent": TRACEPARENT[:-2] + "00"}),
        }
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
        _time(_orchwf, _rows(2048, None))  # warm up: imports, the exporter's connection
        for _ in range(rounds):
            for name, (body, metadata) in cases.items():
                samples[name].append(_time(body, _rows(spans, metadata)))
        tracing.shutdown()
        received = sink.count()
        tracer, tracing._tracer = tracing._tracer, None
        off = [_time(_orchwf, _rows(spans, None)) for _ in range(rounds)]
        tracing._tracer = tracer
    expected = 2048 + rounds * spans * (len(cases) - 1)  # the unsampled ones are not exported
    if received != expected:
        raise RuntimeError(f"the sink received {received:,} spans, {expected:,} were made: spans were dropped")
    out = {name: {"caller_us": statistics.median(c for c, _ in s), "process_us": statistics.median(p for _, p in s)}
           for name, s in samples.items()}
    out["tracing off"] = {"caller_us": statistics.median(c for c, _ in off),
                          "process_us": statistics.median(p for _, p in off)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.span_cost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spans", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    result = measure(a.spans, a.rounds)
    print(f"| case ({a.spans:,} spans, median of {a.rounds}) | caller CPU µs/span | process CPU µs/span |")
    print("|---|---:|---:|")
    for name, r in result.items():
        print(f"| {name} | {r['caller_us']:.1f} | {r['process_us']:.1f} |")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
