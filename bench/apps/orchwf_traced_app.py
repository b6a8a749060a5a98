"""The bench app with OpenTelemetry tracing on: the workflows of orchwf_app, one more
with steps that take visible time (for the trace picture), and a ``configure_tracing``
hook that each worker calls after fork.

* ``python -m bench tracing`` and ``python -m bench.span_cost``: spans go through the
  SDK's BatchSpanProcessor to the OTLP/HTTP exporter (protobuf), as in production, which
  posts them to $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: the bench's sink
  (bench/otlp_sink.py), a process of its own as a collector is. The exporter's module is
  imported here, once, by the supervisor (docs/operations.md, "Tracing"); the hook
  makes the provider, the processor and the exporter in each worker.
* ``python -m bench.trace_picture`` sets $ORCHWF_BENCH_SPANS: each finished span is
  appended to that file as a JSON line, by the worker that ended it.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

from orchwf import StepBuilder, StepContext, WorkflowBuilder

from .orchwf_app import dag, io, noop  # noqa: F401 - what the worker loads (module-level definitions)

SPANS = os.environ.get("ORCHWF_BENCH_SPANS", "")


def _work(seconds: float):  # type: ignore[no-untyped-def]
    def run(ctx: StepContext, data: dict[str, Any]) -> dict[str, Any]:
        time.sleep(seconds)
        return {ctx.step_id: "done"}
    return run


# An order: fetch, then price, stock and fraud check at once, then the order, then a notice.
order = (
    WorkflowBuilder("bench_traced_order", "bench: an order, for the trace picture")
    .add_step(StepBuilder("fetch", "fetch", _work(0.030)).build())
    .add_step(StepBuilder("price", "price", _work(0.050)).with_dependencies("fetch").build())
    .add_step(StepBuilder("stock", "stock", _work(0.080)).with_dependencies("fetch").build())
    .add_step(StepBuilder("fraud_check", "fraud_check", _work(0.120)).with_dependencies("fetch").build())
    .add_step(StepBuilder("place_order", "place_order", _work(0.040))
              .with_dependencies("price", "stock", "fraud_check").build())
    .add_step(StepBuilder("notify", "notify", _work(0.020)).with_dependencies("place_order").build())
    .build()
)


def configure_tracing() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class JsonLines(SpanExporter):
        def export(self, spans):  # type: ignore[no-untyped-def]
            fd = os.open(SPANS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                for span in spans:
                    line = {"name": span.name, "trace_id": f"{span.context.trace_id:032x}",
                            "span_id": f"{span.context.span_id:016x}",
                            "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
                            "start": span.start_time, "end": span.end_time, "attributes": dict(span.attributes),
                            "pid": os.getpid()}
                    os.write(fd, (json.dumps(line) + "\n").encode())  # one write a line (O_APPEND)
            finally:
                os.close(fd)
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    if SPANS:
        provider.add_span_processor(SimpleSpanProcessor(JsonLines()))
    else:
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
