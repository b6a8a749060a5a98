"""Workflows for the dashboard tests, run by a real ``orchwf worker --app dashapp``.

``dash_gated``'s check step fails while its gate row in ``dashboard_test_gate`` is closed
(or missing), with the input's ``reason`` as the error; a test opens the gate, then
retries the step from the browser. The example order pipeline is imported so the same
daemon runs the demo's workflow too.
"""

from __future__ import annotations

import os
from typing import Any

import psycopg

from orchwf import RetryPolicyBuilder, StepBuilder, WorkflowBuilder
from orchwf.examples.order_pipeline import order_pipeline  # noqa: F401 (picked up by --app)

GATE_TABLE_SQL = "CREATE TABLE IF NOT EXISTS dashboard_test_gate (name text PRIMARY KEY, open boolean NOT NULL)"


def _fetch(ctx: Any, data: dict[str, Any]) -> dict[str, Any]:
    return {"fetched": data.get("note", "")}


def _check(ctx: Any, data: dict[str, Any]) -> dict[str, Any]:
    with psycopg.connect(os.environ["ORCHWF_TEST_APP_DSN"], autocommit=True) as conn:
        row = conn.execute("SELECT open FROM dashboard_test_gate WHERE name = %s", (data["gate"],)).fetchone()
    if not row or not row[0]:
        raise RuntimeError(data.get("reason", "the gate is closed"))
    return {"checked": True}


def _done(name: str):
    def run(ctx: Any, data: dict[str, Any]) -> dict[str, Any]:
        return {name: True}

    return run


gated = (
    WorkflowBuilder("dash_gated", "Gated publish")
    .add_step(StepBuilder("fetch", "Fetch", _fetch).build())
    .add_step(StepBuilder("check", "Check the gate", _check).with_dependencies("fetch")
              .with_retry_policy(RetryPolicyBuilder().with_max_attempts(2).with_initial_interval(0.05).build())
              .build())
    .add_step(StepBuilder("audit", "Audit", _done("audited")).with_dependencies("fetch").build())
    .add_step(StepBuilder("publish", "Publish", _done("published")).with_dependencies("check", "audit").build())
    .build()
)
