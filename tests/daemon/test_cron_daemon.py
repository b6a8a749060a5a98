"""Cron across hosts: two supervisors, each killed with kill -9 at random and restarted,
while a per-minute schedule runs with the schedules' clock at 30x (a tick every two
seconds: ORCHWF_CRON_CLOCK_SPEED, the test hook of maintenance/cron.py). Every tick
starts exactly one instance; with both down for a while, "all" fills every missed tick
and "once" starts one instance for them."""

from __future__ import annotations

import os
import random
import signal
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from daemonkit import Daemon

from orchwf import Client
from orchwf.daemon.maintenance.cron import Clock

pytestmark = pytest.mark.slow

SPEED = 30.0


def _ticks(dsn: str, name: str) -> list[datetime]:
    with psycopg.connect(dsn) as conn:
        keys = [r[0] for r in conn.execute(
            "SELECT idempotency_key FROM orchwf_workflow_instances WHERE metadata->>'orchwf_schedule' = %s",
            (name,)).fetchall()]
    return sorted(datetime.strptime(k.rsplit(":", 2)[-2] + ":" + k.rsplit(":", 1)[-1], "%Y-%m-%dT%H:%MZ")
                  .replace(tzinfo=timezone.utc) for k in keys)


def _virtual_now(dsn: str, clock: Clock) -> datetime:
    with psycopg.connect(dsn) as conn:
        return clock.now(conn.execute("SELECT now()").fetchone()[0])


def _kill(daemon: Daemon) -> None:
    os.killpg(daemon.proc.pid, signal.SIGKILL)
    daemon.proc.wait(10)


def test_each_tick_starts_one_instance_across_two_supervisors_killed_at_random(app_db: str, client: Client) -> None:
    every = client.add_schedule("single", "* * * * *", name="every-tick", misfire="all")
    once = client.add_schedule("single", "* * * * *", name="one-catch-up", misfire="once")
    anchor = time.time()
    clock = Clock(SPEED, anchor)
    env = {"ORCHWF_CRON_CLOCK_SPEED": str(SPEED), "ORCHWF_CRON_CLOCK_ANCHOR": repr(anchor)}
    args = ["--workers", "1", "--concurrency", "4"]
    daemons = [Daemon(app_db, args, env=env), Daemon(app_db, args, env=env)]
    rng = random.Random(1234)
    kills = 0
    try:
        end = time.monotonic() + 30
        while time.monotonic() < end:  # one of the two killed and restarted at a time
            time.sleep(rng.uniform(1.0, 3.0))
            i = rng.randrange(2)
            _kill(daemons[i])
            kills += 1
            daemons[i] = Daemon(app_db, args, env=env)
        time.sleep(3)
        # both down: about six ticks pass with no supervisor at all
        for d in daemons:
            _kill(d)
        down_at = _virtual_now(app_db, clock)
        time.sleep(12)
        up_at = _virtual_now(app_db, clock)
        daemons = [Daemon(app_db, args, env=env)]
        time.sleep(8)
        stopped_at = _virtual_now(app_db, clock)
    finally:
        for d in daemons:
            if d.proc.poll() is None:
                _kill(d)
    all_ticks = _ticks(app_db, every)
    assert kills >= 8
    assert len(all_ticks) >= 20, all_ticks  # 30x for ~53 s: a tick every two seconds
    assert len(all_ticks) == len(set(all_ticks)), "a tick started twice"
    gaps = [(a, b) for a, b in zip(all_ticks, all_ticks[1:], strict=False) if b - a != timedelta(minutes=1)]
    assert not gaps, f"ticks without an instance between {gaps[:3]}"
    assert stopped_at - all_ticks[-1] < timedelta(minutes=3), "the last ticks were not fired"

    once_ticks = _ticks(app_db, once)
    assert len(once_ticks) == len(set(once_ticks))
    outage = [t for t in once_ticks if down_at < t <= up_at]
    assert len(outage) <= 1, f"the outage's missed ticks started {len(outage)} instances, not one catch-up"
    assert up_at - down_at >= timedelta(minutes=5)
    after = [t for t in once_ticks if t > down_at]
    assert after and after[0] >= up_at - timedelta(minutes=1), (
        "the catch-up ran an old tick: 'once' fires the latest due one")
    assert len([t for t in all_ticks if down_at < t <= up_at]) >= 5  # "all" filled them


def test_a_schedule_of_the_definition_is_fired_by_the_daemon(app_db: str, client: Client) -> None:
    """``with_schedule`` in the app (daemonapp.scheduled): the supervisor registers it and fires it."""
    anchor = time.time()
    env: dict[str, Any] = {"ORCHWF_CRON_CLOCK_SPEED": str(SPEED), "ORCHWF_CRON_CLOCK_ANCHOR": repr(anchor)}
    daemon = Daemon(app_db, ["--workers", "1"], env=env)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with psycopg.connect(app_db) as conn:
                done = conn.execute(
                    "SELECT count(*) FROM orchwf_workflow_instances WHERE workflow_id = 'scheduled'"
                    " AND status = 'completed' AND input = '{\"from\": \"schedule\"}'").fetchone()[0]
            if done >= 2:
                break
            time.sleep(0.3)
        else:
            raise AssertionError(f"no scheduled instance completed\n{daemon.output()[-3000:]}")
    finally:
        daemon.stop()
    [row] = [s for s in client.list_schedules() if s.workflow_id == "scheduled"]
    assert row.source == "definition" and row.name == "scheduled-every-minute"
