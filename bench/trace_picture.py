"""``python -m bench.trace_picture [--dsn ADMIN_DSN] [--out docs/images/trace-dag.png]``:
a picture of one workflow instance's trace, as a tracing UI would draw it.

It runs the real daemon (``orchwf worker --workers 2``) with
``bench.apps.orchwf_traced_app``, whose ``configure_tracing`` writes every finished span
to a file; enqueues one ``bench_traced_order`` instance (fetch, then three steps at once,
then two more) inside a span of its own, as a web request would; and draws the spans
on a time line (matplotlib): the request span at the top, each step attempt below it,
labelled with the worker process that ran it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from orchwf.client import enqueue, register_workflow
from orchwf.db.migrations import migrate

from .apps import orchwf_traced_app
from .common import ROOT, drop_database, fresh_database


def _trace(dsn: str, spans_file: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    mine: list[dict[str, Any]] = []

    class Keep(SpanExporter):
        def export(self, spans):  # type: ignore[no-untyped-def]
            for s in spans:
                mine.append({"name": s.name, "span_id": f"{s.context.span_id:016x}", "start": s.start_time,
                             "end": s.end_time, "parent_id": None, "attributes": {}, "pid": os.getpid()})
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Keep()))
    tracer = provider.get_tracer("bench.trace_picture")
    env = dict(os.environ, ORCHWF_BENCH_SPANS=str(spans_file), PYTHONPATH=str(ROOT))
    worker = subprocess.Popen([sys.executable, "-m", "orchwf", "worker", "--app", "bench.apps.orchwf_traced_app",
                               "--dsn", dsn, "--workers", "2", "--metrics-port", "0", "--log-level", "WARNING"],
                              env=env, cwd=ROOT)
    try:
        time.sleep(2.0)  # the workers are up and idle: the picture shows the workflow, not a start-up
        with tracer.start_as_current_span("POST /orders") as request, psycopg.connect(dsn) as conn:
            time.sleep(0.005)
            with conn.transaction():
                iid = enqueue(conn, "bench_traced_order", {"order": 42})
        with psycopg.connect(dsn) as conn:
            for _ in range(200):
                if conn.execute("SELECT status FROM orchwf_workflow_instances WHERE id = %s",
                                (iid,)).fetchone()[0] == "completed":
                    break
                time.sleep(0.05)
    finally:
        worker.terminate()
        worker.wait(30)
    steps = [json.loads(line) for line in spans_file.read_text().splitlines()]
    trace_id = f"{request.get_span_context().trace_id:032x}"
    return [s for s in steps if s["trace_id"] == trace_id], mine[0]


def draw(steps: list[dict[str, Any]], request: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = request["start"]
    steps.sort(key=lambda s: (s["start"], s["name"]))
    rows = [("POST /orders  (the app's request span: enqueue)", request, "#57606a")] + [
        (f"{s['name']}  (attempt {s['attributes'].get('orchwf.attempt')}, worker pid {s['pid']})", s, "#0969da")
        for s in steps]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 1.2))
    for i, (_, span, color) in enumerate(rows):
        start, end = (span["start"] - t0) / 1e6, (span["end"] - t0) / 1e6
        ax.barh(i, end - start, left=start, color=color, height=0.6)
        ax.text(end + 4, i, f"{end - start:.0f} ms", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [label for label, _, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ms since the request span started")
    ax.set_title("One trace: a web request enqueues bench_traced_order;\n"
                 "each step attempt is a span whose parent is the request", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/postgres", help="an admin database")
    p.add_argument("--out", default=str(ROOT / "docs" / "images" / "trace-dag.png"))
    a = p.parse_args()
    dsn = fresh_database(a.dsn, "orchwf_trace_picture")
    spans_file = Path(f"/tmp/orchwf-trace-{os.getpid()}.jsonl")
    try:
        migrate(dsn)
        with psycopg.connect(dsn, autocommit=True) as conn:
            register_workflow(conn, orchwf_traced_app.order)
        steps, request = _trace(dsn, spans_file)
    finally:
        spans_file.unlink(missing_ok=True)
        drop_database(a.dsn, "orchwf_trace_picture")
    assert len(steps) == 6, f"expected 6 step spans in the request's trace, got {len(steps)}"
    assert all(s["parent_id"] == request["span_id"] for s in steps), "a step span is not a child of the request"
    draw(steps, request, Path(a.out))
    print(f"{len(steps)} step spans under the request span; picture: {a.out}")


if __name__ == "__main__":
    main()
