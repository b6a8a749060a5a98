"""The orchwf benchmark app, loaded by ``orchwf worker --app bench.apps.orchwf_app``.

Every step records ``time.time()`` when it starts into its output, so the harness can
compute enqueue-to-start and parent-to-child delays from the database afterwards.
Steps are no-ops otherwise (the benchmark measures the engine, not the work), except
``bench_io``'s, which waits 10 ms as a call to another service would.
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

def _io(ctx: StepContext, data: dict[str, Any]) -> dict[str, Any]:
    started = time.time()
    time.sleep(IO_SECONDS)  # a call to another service: the thread waits, the GIL is free
    return {"t_" + ctx.step_id: started}


IO_SECONDS = 0.010

# defaults sweep: one step that waits 10 ms on "I/O" (python -m bench defaults).
io = (
    WorkflowBuilder("bench_io", "bench: single step waiting 10 ms")
    .add_step(StepBuilder("s", "s", _io).build())
    .build()
)

DEFINITIONS = [noop, dag, io]
