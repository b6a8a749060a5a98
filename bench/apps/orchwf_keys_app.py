"""The workflows of ``python -m bench keys`` (bench/keys.py): the drain's no-op step
with and without a concurrency key, and a step that sleeps data["ms"] with and without
one. Each step stamps its start (and the sleeping one its end) into its output."""

from __future__ import annotations

import time
from typing import Any

from orchwf import StepBuilder, StepContext, WorkflowBuilder

from .orchwf_app import DEFINITIONS as _BENCH
from .orchwf_app import noop

KEYS, LIMIT = 1000, 5        # the drain's keys: every step has one, 1,000 distinct, limit 5


def _stamp(ctx: StepContext, data: dict[str, Any]) -> dict[str, Any]:
    return {"t_" + ctx.step_id: time.time()}


def _timed(ctx: StepContext, data: dict[str, Any]) -> dict[str, Any]:
    started = time.time()
    time.sleep(float(data["ms"]) / 1000)
    return {"t0": started, "t1": time.time()}


keyed_noop = (
    WorkflowBuilder("bench_keyed_noop", "bench: single no-op step with a concurrency key")
    .add_step(StepBuilder("s", "s", _stamp).with_concurrency("c:{k}", LIMIT).build())
    .build()
)
timed_keyed = (
    WorkflowBuilder("bench_timed_keyed", "bench: a step of data['ms'], 2 at a time per key")
    .add_step(StepBuilder("s", "s", _timed).with_concurrency("t:{k}", 2).build())
    .build()
)
timed_plain = (
    WorkflowBuilder("bench_timed_plain", "bench: a step of data['ms'], no key")
    .add_step(StepBuilder("s", "s", _timed).build())
    .build()
)

DEFINITIONS = [*_BENCH, keyed_noop, timed_keyed, timed_plain]
__all__ = ["DEFINITIONS", "keyed_noop", "noop", "timed_keyed", "timed_plain"]
