"""The bench app with OpenTelemetry tracing on (``python -m bench tracing``): the same
workflows as orchwf_app, and a ``configure_tracing`` hook that each worker calls after
fork. Spans go through the SDK's BatchSpanProcessor to a ConsoleSpanExporter writing to
/dev/null: every span is built, batched and serialised (as an OTLP exporter would), and
nothing is sent anywhere.
"""

from __future__ import annotations

import os

from .orchwf_app import DEFINITIONS, dag, io, noop  # noqa: F401 - what the worker loads

__all__ = ["DEFINITIONS", "configure_tracing"]


def configure_tracing() -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter(out=open(os.devnull, "w"))))  # noqa: SIM115
    trace.set_tracer_provider(provider)
