"""OpenTelemetry traces (orchwf/tracing.py): spans per step attempt written by the real
daemon's forked workers, parented across the enqueue; and no opentelemetry import when
tracing is not configured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tracingapp
from daemonkit import HERE, Daemon

from orchwf import Client, WorkflowStatus
from orchwf.tracing import TRACEPARENT, parent_context, with_traceparent

pytestmark = pytest.mark.slow


def sdk_tracer() -> tuple[Any, Any]:
    """A tracer of the test's own (not the global provider) and its in-memory exporter."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("tests"), exporter


@pytest.fixture
def traced_client(app_db: str) -> Iterator[Client]:
    c = Client(app_db)
    c.register_workflow(tracingapp.traced)
    c.register_workflow(tracingapp.doomed)
    c.register_workflow(tracingapp.nesting)
    yield c
    c.close()


@pytest.fixture
def tracing_daemon(start_daemon: Callable[..., Daemon], traced_client: Client, tmp_path: Path
                   ) -> Callable[[str], Daemon]:
    def start(mode: str) -> Daemon:
        return start_daemon("--workers", "2", "--concurrency", "2", app="tracingapp",
                            env={"ORCHWF_TEST_OTEL_MODE": mode, "ORCHWF_TEST_SPANS": str(tmp_path / "spans.jsonl")})

    return start


def read_spans(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "spans.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def spans_of(spans: list[dict[str, Any]], instance_id: str) -> list[dict[str, Any]]:
    found = [s for s in spans if s["attributes"].get("orchwf.instance_id") == instance_id]
    return sorted(found, key=lambda s: (s["attributes"]["orchwf.step_id"], s["attributes"]["orchwf.attempt"]))


def check_traced_steps(spans: list[dict[str, Any]], instance_id: str, trace_id: str, parent_id: str) -> None:
    """first once, second twice (its first attempt fails), all children of one parent."""
    got = spans_of(spans, instance_id)
    assert [(s["name"], s["attributes"]["orchwf.attempt"], s["attributes"]["orchwf.outcome"]) for s in got] == [
        ("traced.first", 1, "completed"), ("traced.second", 1, "retry"), ("traced.second", 2, "completed")]
    for s in got:
        assert (s["trace_id"], s["parent_id"]) == (trace_id, parent_id)
        assert s["kind"] == "CONSUMER"
        attrs = s["attributes"]
        assert attrs["orchwf.workflow_id"] == "traced"
        host, pid, _ = attrs["orchwf.worker"].split(":")
        assert int(pid) == s["pid"]  # the worker that ran the attempt exported its span
    ok, failed, retried = got[0], got[1], got[2]
    assert ok["status"] == retried["status"] == "UNSET" and not ok["events"]
    assert failed["status"] == "ERROR" and failed["description"] == "first attempt fails"
    [event] = failed["events"]
    assert event["name"] == "exception"
    assert event["attributes"]["exception.type"] == "RuntimeError"
    assert event["attributes"]["exception.message"] == "first attempt fails"


def test_step_attempts_are_spans_under_the_span_active_at_enqueue(tracing_daemon, traced_client: Client,
                                                                  tmp_path: Path) -> None:
    tracer, exporter = sdk_tracer()
    d = tracing_daemon("child")
    with tracer.start_as_current_span("checkout") as app_span:
        linked = traced_client.enqueue("traced", {})
        doomed = traced_client.enqueue("doomed", {})
    alone = traced_client.enqueue("traced", {}, metadata={"trace_id": "req-42"})
    nesting = traced_client.enqueue("nesting", {})
    for instance_id in (linked, alone, nesting):
        assert traced_client.wait(instance_id, timeout=60).status == WorkflowStatus.COMPLETED
    assert traced_client.wait(doomed, timeout=60).status == WorkflowStatus.FAILED
    assert d.stop() == 0
    spans = read_spans(tmp_path)
    parent = app_span.get_span_context()
    trace_id, span_id = f"{parent.trace_id:032x}", f"{parent.span_id:016x}"
    assert traced_client.get_workflow(linked).metadata[TRACEPARENT] == f"00-{trace_id}-{span_id}-{parent.trace_flags:02x}"
    check_traced_steps(spans, linked, trace_id, span_id)

    # without a span at enqueue: the instance is the trace (its ID is the trace ID)
    assert TRACEPARENT not in traced_client.get_workflow(alone).metadata
    number = uuid.UUID(alone).int
    check_traced_steps(spans, alone, f"{number:032x}", f"{number & (2**64 - 1):016x}")
    assert {s["attributes"]["orchwf.trace_id"] for s in spans_of(spans, alone)} == {"req-42"}
    generated = traced_client.get_workflow(linked).trace_id  # the seed's trace ID, generated at enqueue
    assert generated and {s["attributes"]["orchwf.trace_id"] for s in spans_of(spans, linked)} == {generated}

    # a step that fails for good
    [fatal] = spans_of(spans, doomed)
    assert fatal["name"] == "doomed.fatal" and fatal["attributes"]["orchwf.outcome"] == "failed"
    assert (fatal["trace_id"], fatal["parent_id"]) == (trace_id, span_id)
    assert fatal["status"] == "ERROR" and fatal["description"] == "broken for good"
    assert [e["attributes"]["exception.type"] for e in fatal["events"]] == ["orchwf.errors.NonRetryableError"]

    # the app's spans in a step are children of the step's: sync, on a timeout's thread, async
    steps = {s["attributes"]["orchwf.step_id"]: s for s in spans_of(spans, nesting)}
    assert sorted(steps) == ["async", "sync", "timed"]
    for step_id, step in steps.items():
        [inner] = [s for s in spans if s["name"] == f"app.{step_id}"]
        assert (inner["trace_id"], inner["parent_id"]) == (step["trace_id"], step["span_id"])
    assert len(spans) == 7 + 6
    assert [s.name for s in exporter.get_finished_spans()] == ["checkout"]
    # the supervisor imported the SDK before it forked: no worker imported it again
    first = next(s for s in traced_client.get_workflow(alone).steps if s.step_id == "first")
    assert first.output["sdk_before_hook"] is True


def test_preload_imports_the_sdk_and_starts_nothing() -> None:
    """What the supervisor runs before it forks: modules only, no thread, no provider."""
    code = """
import sys, threading
from orchwf import tracing
assert "opentelemetry.sdk.trace.export" not in sys.modules
tracing.preload()
assert {"opentelemetry.trace", "opentelemetry.sdk.trace", "opentelemetry.sdk.trace.export"} <= set(sys.modules)
assert threading.active_count() == 1, threading.enumerate()
from opentelemetry import trace
assert type(trace.get_tracer_provider()).__name__ == "ProxyTracerProvider"  # none set: the workers' hooks set theirs
assert tracing._tracer is None
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_a_batch_processor_set_up_before_fork_exports_from_the_workers(tracing_daemon, traced_client: Client,
                                                                        tmp_path: Path) -> None:
    """The provider is installed at import, in the supervisor: the SDK restarts the batch
    thread in each forked worker, and the worker flushes it before os._exit (the spans
    wait for the 5 s batch delay, so only that flush can have written them)."""
    tracer, _ = sdk_tracer()
    d = tracing_daemon("prefork")
    with tracer.start_as_current_span("checkout") as app_span:
        linked = traced_client.enqueue("traced", {})
    assert traced_client.wait(linked, timeout=60).status == WorkflowStatus.COMPLETED
    supervisor = d.proc.pid
    assert d.stop(timeout=30) == 0
    spans = read_spans(tmp_path)
    parent = app_span.get_span_context()
    check_traced_steps(spans, linked, f"{parent.trace_id:032x}", f"{parent.span_id:016x}")
    assert supervisor not in {s["pid"] for s in spans}


def test_workers_import_no_opentelemetry_without_configure_tracing(tracing_daemon, traced_client: Client,
                                                                   tmp_path: Path) -> None:
    d = tracing_daemon("off")
    instance_id = traced_client.enqueue("traced", {})
    inst = traced_client.wait(instance_id, timeout=60)
    assert inst.status == WorkflowStatus.COMPLETED
    outputs = {s.step_id: s.output for s in inst.steps}
    assert outputs["first"]["otel_loaded"] is False and outputs["second"]["otel_loaded"] is False
    assert d.stop() == 0
    assert read_spans(tmp_path) == []


def test_a_failing_configure_tracing_costs_the_traces_not_the_work(tracing_daemon, traced_client: Client,
                                                                     tmp_path: Path) -> None:
    d = tracing_daemon("broken")
    instance_id = traced_client.enqueue("traced", {})
    assert traced_client.wait(instance_id, timeout=60).status == WorkflowStatus.COMPLETED
    assert d.stop() == 0
    assert read_spans(tmp_path) == []
    assert "configure_tracing() failed: this worker runs without tracing" in d.output()
    assert "no exporter here" in d.output()


def test_import_enqueue_and_a_step_in_process_import_no_opentelemetry(app_db: str, traced_client: Client) -> None:
    code = f"""
import sys
import orchwf
from orchwf import Client, InMemoryStateManager, Orchestrator
import tracingapp
with Client({app_db!r}) as client:
    client.enqueue("traced", {{}})
with Orchestrator(InMemoryStateManager()) as orch:
    orch.register_workflow(tracingapp.doomed)
    orch.register_workflow(tracingapp.traced)
    assert orch.start_workflow("traced", {{}}).success
loaded = sorted(m for m in sys.modules if m.startswith("opentelemetry"))
assert not loaded, loaded
"""
    env = dict(os.environ, PYTHONPATH=str(HERE), ORCHWF_TEST_OTEL_MODE="off")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_traceparent_at_enqueue() -> None:
    tracer, _ = sdk_tracer()
    assert with_traceparent({}) == {}  # no span active
    with tracer.start_as_current_span("app") as span:
        ctx = span.get_span_context()
        assert with_traceparent({"a": 1}) == {"a": 1, TRACEPARENT: f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"}
        assert with_traceparent({TRACEPARENT: "given"}) == {TRACEPARENT: "given"}  # the producer's own wins


def test_a_traceparent_that_does_not_parse_falls_back_to_the_instance() -> None:
    pytest.importorskip("opentelemetry")
    from opentelemetry import trace

    instance_id = uuid.uuid4()
    for metadata in ({TRACEPARENT: "garbage"}, {TRACEPARENT: 42}, None):
        parent = trace.get_current_span(parent_context(instance_id, metadata)).get_span_context()
        assert parent.trace_id == instance_id.int and parent.is_remote and parent.trace_flags.sampled


def test_the_hook_is_configure_tracing_in_the_app_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orchwf import ValidationError
    from orchwf.daemon.app import load_definitions, tracing_hook

    load_definitions("tracingapp:traced")
    assert tracing_hook("tracingapp:traced") is tracingapp.configure_tracing
    load_definitions("daemonapp")
    assert tracing_hook("daemonapp") is None
    (tmp_path / "badtracingapp.py").write_text("from tracingapp import traced\nconfigure_tracing = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    load_definitions("badtracingapp")
    with pytest.raises(ValidationError, match="configure_tracing must be a function"):
        tracing_hook("badtracingapp")


def test_a_step_span_is_current_in_its_block_and_records_what_escapes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """step_span's own context manager does what the SDK's start_as_current_span does:
    the span is current inside (the step's spans nest under it), the previous context
    is back after, and an exception that escapes is recorded and the span ended."""
    from opentelemetry import trace

    from orchwf import tracing
    from orchwf.db.rows import ClaimedStep

    tracer, exporter = sdk_tracer()
    monkeypatch.setattr(tracing, "_tracer", tracer)
    row = ClaimedStep(step_inst_id=uuid.uuid4(), workflow_inst_id=uuid.uuid4(), workflow_id="wf", step_id="s",
                      lease_token=1, attempt=1, retry_count=0, workflow_input={}, metadata=None, trace_id=None,
                      completed=None, step_input={})
    before = trace.get_current_span()
    with tracing.step_span(row, "w1") as span:
        assert trace.get_current_span() is span
        with tracer.start_as_current_span("inner"):
            pass
        tracing.end_step(span, "completed", None, None)
    assert trace.get_current_span() is before
    with pytest.raises(RuntimeError, match="boom"), tracing.step_span(row, "w1"):
        raise RuntimeError("boom")
    assert trace.get_current_span() is before
    inner, ok, broken = exporter.get_finished_spans()
    assert inner.parent.span_id == ok.context.span_id
    assert ok.name == broken.name == "wf.s" and ok.attributes["orchwf.outcome"] == "completed"
    assert ok.context.trace_id == row.workflow_inst_id.int
    assert broken.status.status_code == trace.StatusCode.ERROR and broken.status.description == "RuntimeError: boom"
    assert [e.name for e in broken.events] == ["exception"]


@pytest.mark.parametrize("root_decision", [True, False], ids=["bound read once", "sampler asked"])
def test_a_ratio_sampler_in_the_workers_thins_out_instances_enqueued_with_no_span(
        monkeypatch: pytest.MonkeyPatch, root_decision: bool) -> None:
    """OTEL_TRACES_SAMPLER=parentbased_traceidratio in the workers: about the ratio of the
    instances enqueued with no span is kept, each whole (every step, every attempt, every
    worker decides alike), and the rest cost no recorded span. Whether the worker reads
    the ratio's bound once (the SDK's own sampler) or asks the sampler per instance."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    from orchwf import tracing
    from orchwf.db.rows import ClaimedStep
    from orchwf.ids import new_id

    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.25)))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests")
    monkeypatch.setattr(tracing, "_tracer", tracer)
    # as start_in_worker sets it: ParentBased drops under an unsampled parent, so a
    # dropped step builds no span at all (its parent's non-recording span is current)
    assert tracing.drops_unsampled_parents(provider.sampler)
    monkeypatch.setattr(tracing, "_drops_unsampled_parents", True)
    monkeypatch.setattr(tracing, "_root_decision", tracing.root_decision(provider.sampler) if root_decision else None)
    assert (tracing._root_decision is not None) == root_decision
    instances = [uuid.UUID(new_id()) for _ in range(800)]  # UUIDv7, as orchwf makes them
    for instance in instances:
        for step in ("a", "b"):
            row = ClaimedStep(step_inst_id=uuid.uuid4(), workflow_inst_id=instance, workflow_id="wf", step_id=step,
                              lease_token=1, attempt=1, retry_count=0, workflow_input={}, metadata=None,
                              trace_id=None, completed=None, step_input={})
            with tracing.step_span(row, "w1") as span:
                with tracer.start_as_current_span("inner"):  # the step's own span follows its decision
                    pass
                tracing.end_step(span, "completed", None, None)
    kept: dict[int, list[str]] = {}
    for span in exporter.get_finished_spans():
        kept.setdefault(span.context.trace_id, []).append(span.name)
    assert 0.15 * 800 < len(kept) < 0.35 * 800, len(kept)
    assert all(sorted(names) == ["inner", "inner", "wf.a", "wf.b"] for names in kept.values())  # whole instances
    assert set(kept) <= {i.int for i in instances}


def test_only_a_sampler_that_drops_under_unsampled_parents_lets_steps_skip_the_span() -> None:
    """The shortcut of step_span (no span built for a step its sampler would drop) is
    taken only for a sampler that drops every span of an unsampled remote parent."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace.sampling import (
        ALWAYS_OFF,
        ALWAYS_ON,
        ParentBased,
        TraceIdRatioBased,
    )

    from orchwf import tracing

    assert tracing.drops_unsampled_parents(ParentBased(ALWAYS_ON))
    assert tracing.drops_unsampled_parents(ParentBased(TraceIdRatioBased(0.1)))
    assert tracing.drops_unsampled_parents(ALWAYS_OFF)
    assert not tracing.drops_unsampled_parents(ALWAYS_ON)
    assert not tracing.drops_unsampled_parents(TraceIdRatioBased(0.5))  # keeps some
    assert not tracing.drops_unsampled_parents(ParentBased(ALWAYS_ON, remote_parent_not_sampled=ALWAYS_ON))
    assert not tracing.drops_unsampled_parents(None)


def test_the_root_decision_read_once_is_the_samplers_own() -> None:
    """tracing.root_decision (the SDK's samplers' root decision, read once at a worker's
    start) decides every trace ID as the sampler itself does; any other sampler is asked."""
    pytest.importorskip("opentelemetry.sdk")
    import random

    from opentelemetry.context import Context
    from opentelemetry.sdk.trace.sampling import (
        ALWAYS_OFF,
        ALWAYS_ON,
        ParentBased,
        ParentBasedTraceIdRatio,
        TraceIdRatioBased,
    )

    from orchwf import tracing

    rng = random.Random(17)
    trace_ids = [rng.getrandbits(128) for _ in range(4000)] + [1, 2**64 - 1, 2**64, 2**128 - 1]
    for sampler in (TraceIdRatioBased(0.1), TraceIdRatioBased(0.5), TraceIdRatioBased(0), TraceIdRatioBased(1),
                    ParentBased(TraceIdRatioBased(0.3)), ParentBasedTraceIdRatio(0.05),
                    ALWAYS_ON, ALWAYS_OFF, ParentBased(ALWAYS_ON), ParentBased(ALWAYS_OFF)):
        decide = tracing.root_decision(sampler)
        assert decide is not None, sampler
        own = [sampler.should_sample(Context(), t, "x").decision.is_sampled() for t in trace_ids]
        assert [decide(t) for t in trace_ids] == own, sampler.get_description()

    class Custom(TraceIdRatioBased):  # a subclass may decide otherwise: it is asked
        pass

    assert tracing.root_decision(Custom(0.5)) is None
    assert tracing.root_decision(ParentBased(Custom(0.5))) is None
    assert tracing.root_decision(None) is None
