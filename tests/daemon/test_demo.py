"""``orchwf demo`` end to end, with a small count."""

from __future__ import annotations

import re
import subprocess
import sys

import psycopg
import pytest

pytestmark = pytest.mark.slow


def test_demo_runs_the_order_pipeline_to_the_end(db_dsn: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "orchwf", "demo", "--count", "120", "--dsn", db_dsn, "--timeout", "120"],
        capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"finished 120 workflows in [\d.]+s", done.stdout), done.stdout
    assert "statuses: completed 119, failed 1" in done.stdout  # order 99 cannot be shipped
    with psycopg.connect(db_dsn) as conn:
        compensated = conn.execute(
            "SELECT count(*) FROM orchwf_workflow_events WHERE event_type = 'step.compensated'").fetchone()[0]
        retried = conn.execute(
            "SELECT count(*) FROM orchwf_step_instances WHERE step_id = 'charge_card' AND retry_count = 1").fetchone()[0]
    assert compensated == 2  # the failed order's card refunded and stock released
    assert retried == 120 // 13  # every 13th charge fails once, then succeeds
