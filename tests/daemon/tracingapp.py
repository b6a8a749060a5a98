"""Workflows of the tracing tests. Finished spans go to $ORCHWF_TEST_SPANS, one JSON object
a line, written by the worker that ended them (an in-memory exporter would stay in it).

$ORCHWF_TEST_OTEL_MODE picks how tracing is set up:
  * ``child``: configure_tracing installs the provider in each worker, after fork (the
    documented way), with a SimpleSpanProcessor;
  * ``prefork``: the provider is installed at import, in the supervisor, with a
    BatchSpanProcessor whose thread the fork does not copy; configure_tracing only
    switches tracing on;
  * ``off``: no configure_tracing, and nothing here imports opentelemetry;
  * ``broken``: configure_tracing raises.
"""

from __future__ import annotations

import json
import os
import sys

from orchwf import NonRetryableError, RetryPolicyBuilder, StepBuilder, WorkflowBuilder

MODE = os.environ.get("ORCHWF_TEST_OTEL_MODE", "child")
SPANS = os.environ.get("ORCHWF_TEST_SPANS", "")


def _install(batch: bool) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    class FileExporter(SpanExporter):
        def export(self, spans):  # type: ignore[no-untyped-def]
            fd = os.open(SPANS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                for span in spans:
                    line = {
                        "name": span.name,
                        "trace_id": f"{span.context.trace_id:032x}",
                        "span_id": f"{span.context.span_id:016x}",
                        "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
                        "kind": span.kind.name,
                        "attributes": dict(span.attributes),
                        "status": span.status.status_code.name,
                        "description": span.status.description,
                        "events": [{"name": e.name, "attributes": dict(e.attributes)} for e in span.events],
                        "pid": os.getpid(),
                    }
                    os.write(fd, (json.dumps(line) + "\n").encode())  # one write a line: O_APPEND keeps lines whole
            finally:
                os.close(fd)
            return SpanExportResult.SUCCESS

    processor = BatchSpanProcessor(FileExporter()) if batch else SimpleSpanProcessor(FileExporter())
    provider = TracerProvider()
    provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)


if MODE == "prefork":
    _install(batch=True)

#: Whether OpenTelemetry's SDK was loaded when this worker's hook began: this module
#: imports it only inside the hook (child mode), so only the supervisor's preload did.
SDK_BEFORE_HOOK: bool | None = None

if MODE != "off":
    def configure_tracing() -> None:
        global SDK_BEFORE_HOOK
        SDK_BEFORE_HOOK = "opentelemetry.sdk.trace.export" in sys.modules
        if MODE == "broken":
            raise RuntimeError("no exporter here")
        if MODE == "child":
            _install(batch=False)


def probe(ctx, data):
    return {"otel_loaded": "opentelemetry" in sys.modules, "pid": os.getpid(), "sdk_before_hook": SDK_BEFORE_HOOK}


def flaky(ctx, data):
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    return probe(ctx, data)


def fatal(ctx, data):
    raise NonRetryableError("broken for good")


def nested(ctx, data):
    """The app's own span, inside the step's."""
    from opentelemetry import trace

    with trace.get_tracer("app").start_as_current_span(f"app.{ctx.step_id}"):
        return {}


async def nested_async(ctx, data):
    return nested(ctx, data)


quick = RetryPolicyBuilder().with_max_attempts(2).with_initial_interval(0.05).build()

traced = (
    WorkflowBuilder("traced", "A step, then one that fails once")
    .add_step(StepBuilder("first", "First", probe).build())
    .add_step(StepBuilder("second", "Second", flaky).with_dependencies("first").with_retry_policy(quick).build())
    .build()
)

doomed = WorkflowBuilder("doomed", "Fails at once").add_step(StepBuilder("fatal", "Fatal", fatal).build()).build()

nesting = (
    WorkflowBuilder("nesting", "Steps that start spans of their own")
    .add_step(StepBuilder("sync", "Sync", nested).build())
    .add_step(StepBuilder("timed", "Timed (on a thread of its own)", nested).with_timeout(30).build())
    .add_step(StepBuilder("async", "Async", nested_async).build())
    .build()
)
