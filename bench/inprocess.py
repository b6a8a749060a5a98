"""``python -m bench inprocess``: the library's in-process engine on PostgreSQL.

``Orchestrator`` with ``DBStateManager``, one workflow at a time (``start_workflow``, as
an app calls it), on a fresh database of the server under test: a single-step workflow
and a two-step chain, ``--workflows`` of each after a warm-up; the figure is the wall
time per workflow (every instance, step and event write is its own call to the SQL API
and, outside a transaction of the app's, its own commit). docs/benchmarks.md, "Fourth
round".
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from .common import log

WORKFLOWS = 300
DATABASE = "orchwf_bench_inprocess"


def _definitions() -> list[Any]:
    from orchwf import StepBuilder, WorkflowBuilder

    one = WorkflowBuilder("inproc_one", "one step").add_step(
        StepBuilder("a", "a", lambda ctx, data: {"x": 1}).build()).build()
    two = (WorkflowBuilder("inproc_two", "a chain of two")
           .add_step(StepBuilder("a", "a", lambda ctx, data: {"x": 1}).build())
           .add_step(StepBuilder("b", "b", lambda ctx, data: {"y": 2}).with_dependencies("a").build())
           .build())
    return [one, two]


def run(server_dsn: str, workdir: Path, rounds: int = 3, workflows: int = WORKFLOWS) -> dict[str, Any]:
    from orchwf import DBStateManager, Orchestrator
    from orchwf.db.migrations import migrate

    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(DATABASE)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    dsn = server_dsn.rsplit("/", 1)[0] + "/" + DATABASE
    migrate(dsn)
    per: dict[str, list[float]] = {}
    with DBStateManager(dsn) as store:
        orchestrator = Orchestrator(store)
        for definition in _definitions():
            orchestrator.register_workflow(definition)
        for rnd in range(rounds):
            for definition in _definitions():
                log(f"--- in-process {definition.id}: {workflows} (round {rnd + 1} of {rounds})")
                for _ in range(20):  # warm-up: connections opened, plans made
                    orchestrator.start_workflow(definition.id, {})
                t0 = time.perf_counter()
                for _ in range(workflows):
                    if not orchestrator.start_workflow(definition.id, {}).success:
                        raise RuntimeError(f"{definition.id} failed")
                per.setdefault(definition.id, []).append((time.perf_counter() - t0) / workflows)
        orchestrator.shutdown()
    return {"ms_per_workflow": {k: [round(v * 1000, 2) for v in vs] for k, vs in per.items()},
            "rounds": rounds, "workflows": workflows}


def table(r: dict[str, Any]) -> str:
    lines = ["| workflow | ms per workflow (median) | rounds |", "|---|---:|---|"]
    for name, values in r["ms_per_workflow"].items():
        lines.append(f"| {name} | {statistics.median(values):.2f} | {', '.join(f'{v:.2f}' for v in values)} |")
    lines.append(f"\n({r['workflows']} workflows a round, one at a time, Orchestrator + DBStateManager)")
    return "\n".join(lines)
