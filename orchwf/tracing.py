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
import hashlib
import importlib
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
_drops_unsampled_parents = False  # set with _tracer: the sampler follows an unsampled parent
_root_decision: Callable[[int], bool] | None = None  # set with _tracer: see root_decision()
_no_span = contextlib.nullcontext(None)


class _Otel:
    """The OpenTelemetry names the per-step code uses, imported and built once, on first
    use: a worker makes thousands of spans a second, and an import statement or a new
    propagator per span is a measurable part of one (bench/span_cost.py)."""

    def __init__(self) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.trace = trace
        self.attach, self.detach = context.attach, context.detach
        self.propagator = TraceContextTextMapPropagator()
        self.consumer = trace.SpanKind.CONSUMER
        self.error = trace.StatusCode.ERROR
        self.sampled = trace.TraceFlags(trace.TraceFlags.SAMPLED)
        self.not_sampled = trace.TraceFlags(trace.TraceFlags.DEFAULT)
        self.empty = context.Context()


_otel: _Otel | None = None


def _api() -> _Otel:
    global _otel
    if _otel is None:
        _otel = _Otel()
    return _otel


def current_traceparent() -> str | None:
    """The W3C traceparent of the span active in the caller, or None."""
    if "opentelemetry.trace" not in sys.modules:
        return None  # never imported: no span can be active
    carrier: dict[str, str] = {}
    _api().propagator.inject(carrier)
    return carrier.get(TRACEPARENT)


def with_traceparent(metadata: dict[str, Any]) -> dict[str, Any]:
    """``metadata`` with the caller's traceparent added, unless it has one already."""
    if TRACEPARENT not in metadata:
        parent = current_traceparent()
        if parent is not None:
            metadata[TRACEPARENT] = parent
    return metadata


#: The SDK modules every worker's hook imports to make its provider: loaded by preload().
_PRELOADED = ("opentelemetry.sdk.trace", "opentelemetry.sdk.trace.export")


def preload() -> None:
    """In the supervisor, before it forks: import OpenTelemetry's API and SDK once, so
    that each worker does not import them again after fork (~0.1 s of a core each time a
    worker starts: a recycle, a reload, a crash's replacement). A module import starts
    no thread and opens no connection, so it may cross fork; the provider, the processor
    and the exporter are still made in each worker by the app's hook. Without the SDK
    (a hook that sets up something else), only the API is loaded; without the API,
    nothing (each worker's start_in_worker then logs why it runs untraced)."""
    for name in ("opentelemetry.trace", *_PRELOADED):
        try:
            importlib.import_module(name)
        except ImportError:
            log.debug("not preloaded: %s", name)
            if name == "opentelemetry.trace":
                return
    _api()


def start_in_worker(hook: Callable[[], object]) -> None:
    """In a worker process, after fork: run the app's hook, which sets up the tracer
    provider and its exporter in this process (an exporter's thread or socket must not
    cross fork), then trace every step attempt. A failing hook costs the traces, not
    the work."""
    global _tracer, _drops_unsampled_parents, _root_decision
    try:
        hook()
        tracer = _api().trace.get_tracer("orchwf")
        sampler = getattr(tracer, "sampler", None)
        _drops_unsampled_parents = drops_unsampled_parents(sampler)
        _root_decision = root_decision(sampler)
        _tracer = tracer
    except Exception:
        log.exception("%s() failed: this worker runs without tracing", HOOK)


def shutdown() -> None:
    """Export the spans still buffered: a worker leaves through os._exit, which skips
    the SDK's own flush at exit."""
    if _tracer is None:
        return
    stop = getattr(_api().trace.get_tracer_provider(), "shutdown", None)
    if stop is not None:
        try:
            stop()
        except Exception:
            log.exception("could not flush the traces")


class _CurrentSpan:
    """The step's span, current while the step runs (so the spans the step's code makes
    are its children) and ended after. What the SDK's ``start_as_current_span`` does,
    without its two generator-based context managers per span. An exception that
    escapes the block is recorded on the span, as the SDK records it."""

    __slots__ = ("span", "token")

    def __init__(self, span: Any) -> None:
        self.span = span

    def __enter__(self) -> Any:
        api = _api()
        self.token = api.attach(api.trace.set_span_in_context(self.span))
        return self.span

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        _api().detach(self.token)
        if isinstance(exc, Exception):
            self.span.record_exception(exc)
            self.span.set_status(_api().trace.Status(_api().error, f"{type(exc).__name__}: {exc}"))
        self.span.end()


class _CurrentParent:
    """The parent context, current while a step the sampler drops runs; its span is the
    parent's non-recording span, so ``end_step`` records nothing on it."""

    __slots__ = ("context", "token")

    def __init__(self, context: Any) -> None:
        self.context = context

    def __enter__(self) -> Any:
        api = _api()
        self.token = api.attach(self.context)
        return api.trace.get_current_span(self.context)

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        _api().detach(self.token)


def step_span(row: ClaimedStep, worker_id: str, instance_id: str | None = None
              ) -> contextlib.AbstractContextManager[Any]:
    """The current span of one step attempt (None when tracing is off). An exception
    that escapes the block is recorded on it; end_step records the attempt's outcome.
    ``instance_id``: the instance ID as text, when the caller has made it already."""
    if _tracer is None:
        return _no_span
    parent, sampled = _parent(row.workflow_inst_id, row.metadata)
    if not sampled and _drops_unsampled_parents:
        # The sampler would drop it: make the parent current (the step's own spans follow
        # its decision) without building a span nobody records (bench/span_cost.py).
        return _CurrentParent(parent)
    attributes = {
        "orchwf.workflow_id": row.workflow_id,
        "orchwf.instance_id": instance_id or str(row.workflow_inst_id),
        "orchwf.step_id": row.step_id,
        "orchwf.step_instance_id": str(row.step_inst_id),
        "orchwf.attempt": row.attempt,
        "orchwf.worker": worker_id,
    }
    if row.trace_id:
        attributes["orchwf.trace_id"] = row.trace_id
    return _CurrentSpan(_tracer.start_span(
        f"{row.workflow_id}.{row.step_id}", context=parent,
        kind=_api().consumer, attributes=attributes))


def end_step(span: Any, outcome: str, error: str | None, exception: BaseException | None) -> None:
    """Record how the attempt ended; an attempt that did not complete is an error."""
    span.set_attribute("orchwf.outcome", outcome)
    if outcome not in ("completed", "wait"):
        if exception is not None:
            span.record_exception(exception)
        api = _api()
        span.set_status(api.trace.Status(api.error, error))


def parent_context(instance_id: uuid.UUID, metadata: Mapping[str, Any] | None) -> Any:
    """The context step spans start in: the traceparent stored at enqueue, else the
    instance's own (unexported) span, whose IDs are derived from the instance ID."""
    return _parent(instance_id, metadata)[0]


def _parent(instance_id: uuid.UUID, metadata: Mapping[str, Any] | None) -> tuple[Any, bool]:
    """parent_context, and whether its trace is sampled."""
    api = _api()
    trace = api.trace
    value = metadata.get(TRACEPARENT) if metadata else None
    if isinstance(value, str):
        context = api.propagator.extract({TRACEPARENT: value}, context=api.empty)
        parent = trace.get_current_span(context).get_span_context()
        if parent.is_valid:
            return context, parent.trace_flags.sampled
    number = instance_id.int
    sampled = instance_sampled(instance_id)
    instance_span = trace.SpanContext(trace_id=number, span_id=(number & 0xFFFF_FFFF_FFFF_FFFF) or 1,
                                      is_remote=True, trace_flags=api.sampled if sampled else api.not_sampled)
    return trace.set_span_in_context(trace.NonRecordingSpan(instance_span), api.empty), sampled


def instance_sampled(instance_id: uuid.UUID) -> bool:
    """Whether the worker's sampler keeps an instance enqueued with no traceparent: its
    root decision for the instance, the same in every worker and for every step. The
    sampler is asked about a trace ID whose low 64 bits are a hash of the instance ID:
    a ratio sampler (TraceIdRatioBased) reads those bits, and a UUID's start with its
    variant bits, which would read as "large" (every ratio of 0.5 or less keeping none)."""
    mixed = int.from_bytes(hashlib.blake2b(instance_id.bytes, digest_size=16).digest(), "big")
    if _root_decision is not None:
        return _root_decision(mixed)
    sampler = getattr(_tracer, "sampler", None)
    if sampler is None:
        return True
    return bool(sampler.should_sample(_api().empty, mixed, "orchwf.instance").decision.is_sampled())


def root_decision(sampler: Any) -> Callable[[int], bool] | None:
    """The root decision of the SDK's own samplers for a trace ID, without asking them
    per instance (a SamplingResult and the parent's trace state built for each step:
    a part of what a step the sampler drops costs; docs/benchmarks.md, "Tracing"): a
    ratio's bound, or an always-on/always-off constant; bare or under ParentBased, the
    exact classes only, whose decisions these are. None for any other sampler: it is
    asked each time."""
    try:
        from opentelemetry.sdk.trace import sampling
    except ImportError:
        return None
    root = sampler
    if type(sampler) in (sampling.ParentBased, sampling.ParentBasedTraceIdRatio):
        root = getattr(sampler, "_root", None)
    if type(root) is sampling.TraceIdRatioBased:
        bound, limit = root.bound, sampling.TraceIdRatioBased.TRACE_ID_LIMIT
        return lambda trace_id: trace_id & limit < bound
    if type(root) is sampling.StaticSampler:
        keep = root.should_sample(_api().empty, 1, "orchwf.probe").decision.is_sampled()
        return lambda trace_id: keep
    return None


def drops_unsampled_parents(sampler: Any) -> bool:
    """Whether ``sampler`` drops every span whose remote parent is not sampled, as the
    SDK's default (``ParentBased``) does; then a step span under such a parent need not
    be built at all. Asked of the sampler itself (a few trace IDs), so a custom sampler
    that keeps some of them is respected."""
    if sampler is None:
        return False
    api = _api()
    trace = api.trace
    for trace_id in (1, 2**63, 2**64 - 1, 2**127 + 12345, 2**128 - 1):
        parent = trace.set_span_in_context(trace.NonRecordingSpan(trace.SpanContext(
            trace_id=trace_id, span_id=1, is_remote=True, trace_flags=api.not_sampled)))
        try:
            decision = sampler.should_sample(parent, trace_id, "orchwf.probe", api.consumer, {})
        except Exception:
            return False
        if decision.decision.is_sampled():
            return False
    return True
