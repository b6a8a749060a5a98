"""OpenTelemetry traces (the ``otel`` extra): one span per step attempt.

All of orchwf's OpenTelemetry code is here, and nothing imports ``opentelemetry`` unless
tracing is in use: a worker imports it only once its app's ``configure_tracing`` hook has
run, a producer only when the app has imported it already (else no span can be active).
Without the extra, orchwf runs unchanged.

The trace crosses the enqueue through the instance's metadata: ``enqueue`` stores the
W3C ``traceparent`` of the span active in the caller under the reserved key
``"traceparent"`` (any producer, psql included, may set it), and the worker makes it the
parent of every step attempt's span. An instance without one is a trace of its own:
its trace ID is the instance ID (a UUID is 128 bits, as a trace ID), and its step
spans share a parent span derived from the instance ID that is never exported (no
process lives for an instance's whole run to emit it). Nothing is written at enqueue
then, so instances enqueued by producers without OpenTelemetry are traced too.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .db.rows import ClaimedStep

log = logging.getLogger("orchwf.tracing")

TRACEPARENT = "traceparent"  # the reserved metadata key
HOOK = "configure_tracing"   # the app module's function a worker calls after fork

_tracer: Any = None  # set in a worker whose app configured tracing
_no_span = contextlib.nullcontext(None)


def current_traceparent() -> str | None:
    """The W3C traceparent of the span active in the caller, or None."""
    if "opentelemetry.trace" not in sys.modules:
        return None  # never imported: no span can be active
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get(TRACEPARENT)


def with_traceparent(metadata: dict[str, Any]) -> dict[str, Any]:
    """``metadata`` with the caller's traceparent added, unless it has one already."""
    if TRACEPARENT not in metadata:
        parent = current_traceparent()
        if parent is not None:
            metadata[TRACEPARENT] = parent
    return metadata


def start_in_worker(hook: Callable[[], object]) -> None:
    """In a worker process, after fork: run the app's hook, which sets up the tracer
    provider and its exporter in this process (an exporter's thread or socket must not
    cross fork), then trace every step attempt. A failing hook costs the traces, not
    the work."""
    global _tracer
    try:
        hook()
        from opentelemetry import trace

        _tracer = trace.get_tracer("orchwf")
    except Exception:
        log.exception("%s() failed: this worker runs without tracing", HOOK)


def shutdown() -> None:
    """Export the spans still buffered: a worker leaves through os._exit, which skips
    the SDK's own flush at exit."""
    if _tracer is None:
        return
    from opentelemetry import trace

    stop = getattr(trace.get_tracer_provider(), "shutdown", None)
    if stop is not None:
        try:
            stop()
        except Exception:
            log.exception("could not flush the traces")


def step_span(row: ClaimedStep, worker_id: str) -> contextlib.AbstractContextManager[Any]:
    """The current span of one step attempt (None when tracing is off). An exception
    that escapes the block is recorded on it; end_step records the attempt's outcome."""
    if _tracer is None:
        return _no_span
    attributes = {
        "orchwf.workflow_id": row.workflow_id,
        "orchwf.instance_id": str(row.workflow_inst_id),
        "orchwf.step_id": row.step_id,
        "orchwf.step_instance_id": str(row.step_inst_id),
        "orchwf.attempt": row.attempt,
        "orchwf.worker": worker_id,
    }
    if row.trace_id:
        attributes["orchwf.trace_id"] = row.trace_id
    from opentelemetry.trace import SpanKind

    return _tracer.start_as_current_span(  # type: ignore[no-any-return]
        f"{row.workflow_id}.{row.step_id}", context=parent_context(row.workflow_inst_id, row.metadata),
        kind=SpanKind.CONSUMER, attributes=attributes)


def end_step(span: Any, outcome: str, error: str | None, exception: BaseException | None) -> None:
    """Record how the attempt ended; an attempt that did not complete is an error."""
    from opentelemetry.trace import Status, StatusCode

    span.set_attribute("orchwf.outcome", outcome)
    if outcome != "completed":
        if exception is not None:
            span.record_exception(exception)
        span.set_status(Status(StatusCode.ERROR, error))


def parent_context(instance_id: uuid.UUID, metadata: Mapping[str, Any] | None) -> Any:
    """The context step spans start in: the traceparent stored at enqueue, else the
    instance's own (unexported) span, whose IDs are derived from the instance ID."""
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    value = (metadata or {}).get(TRACEPARENT)
    if isinstance(value, str):
        context = TraceContextTextMapPropagator().extract({TRACEPARENT: value})
        if trace.get_current_span(context).get_span_context().is_valid:
            return context
    number = instance_id.int
    instance_span = trace.SpanContext(
        trace_id=number, span_id=(number & 0xFFFF_FFFF_FFFF_FFFF) or 1, is_remote=True,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED))
    return trace.set_span_in_context(trace.NonRecordingSpan(instance_span))
