"""The orchwf benchmark app, loaded by ``orchwf worker --app bench.apps.orchwf_app``.

Every step records ``time.time()`` when it starts into its output, so the harness can
compute enqueue-to-start and parent-to-child delays from the database afterwards.
Steps are no-ops otherwise: the benchmark measures the engine, not the work.
"""

from __future__ import annotations

import time
from typing import Any

from orchwf import StepBuilder, StepContext, WorkflowBuilder

FANOUT = 8


def _stamp(ctx: StepContext, data: dict[str, Any]) -> dict[str, Any]:
    return {"t_" + ctx.step_id: time.time()}


# drain / latency / soak: one no-op step per workflow.
noop = (
    WorkflowBuilder("bench_noop", "bench: single no-op step")
    .add_step(StepBuilder("s", "s", _stamp).build())
    .build()
)

# DAG: start -> f1..f8 -> join (10 steps).
_dag = WorkflowBuilder("bench_dag", "bench: fan-out of 8 between a start and a join")
_dag.add_step(StepBuilder("start", "start", _stamp).build())
for _i in range(1, FANOUT + 1):
    _dag.add_step(StepBuilder(f"f{_i}", f"f{_i}", _stamp).with_dependencies("start").build())
_dag.add_step(
    StepBuilder("join", "join", _stamp)
    .with_dependencies(*[f"f{i}" for i in range(1, FANOUT + 1)])
    .build()
)
dag = _dag.build()

DEFINITIONS = [noop, dag]
