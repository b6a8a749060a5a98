"""Durable sleep (StepBuilder.with_delay, orchwf.sleep_step) in the daemon: the wait
holds no slot, lease, ready row or transaction, survives kill -9 of the daemon, and
the step starts no sooner than its delay after its dependencies completed."""

from __future__ import annotations

import os
import signal
import time
from datetime import timedelta

import psycopg
import pytest
from daemonkit import executions, wait_for

from orchwf import Client, StepBuilder, ValidationError, sleep_step

pytestmark = pytest.mark.slow

NAP = 1.5


def _steps(dsn: str, ids: list[str]) -> dict[tuple[str, str], tuple]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT workflow_inst_id::text, step_id, status, started_at, completed_at, run_after"
                            " FROM orchwf_step_instances WHERE workflow_inst_id = ANY(%s::uuid[])", (ids,)).fetchall()
    return {(r[0], r[1]): r[2:] for r in rows}


def _done(dsn: str, ids: list[str]) -> bool:
    with psycopg.connect(dsn) as conn:
        n = conn.execute("SELECT count(*) FROM orchwf_workflow_instances WHERE id = ANY(%s::uuid[])"
                         " AND status = 'completed'", (ids,)).fetchone()[0]
    return n == len(ids)


def test_a_nap_holds_nothing_and_lasts_its_delay(client: Client, app_db: str, start_daemon) -> None:
    daemon = start_daemon("--workers", "1", "--concurrency", "4")
    ids = [client.enqueue("sleeper", {}) for _ in range(20)]
    wait_for(lambda: all(s[0] == "completed" for k, s in _steps(app_db, ids).items() if k[1] == "a")
             and len(_steps(app_db, ids)) == 60, 30, "the first steps")
    with psycopg.connect(app_db) as conn:  # every nap is waiting now: it holds nothing
        waiting = conn.execute("SELECT count(*) FROM orchwf_live_steps WHERE step_id = 'nap'"
                               " AND status = 'pending' AND run_after > now()").fetchone()[0]
        ready = conn.execute("SELECT count(*) FROM orchwf_ready_steps").fetchone()[0]
        running = conn.execute("SELECT count(*) FROM orchwf_running_steps").fetchone()[0]
        in_tx = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                             " AND state LIKE 'idle in transaction%%'").fetchone()[0]
    assert waiting >= 15 and ready == 0 and running == 0 and in_tx == 0, (waiting, ready, running, in_tx)
    wait_for(lambda: _done(app_db, ids), 30, "the instances to finish")
    steps = _steps(app_db, ids)
    for i in ids:
        a_done, nap_start = steps[(i, "a")][2], steps[(i, "nap")][1]
        assert nap_start - a_done >= timedelta(seconds=NAP), (a_done, nap_start)
        assert steps[(i, "b")][1] >= steps[(i, "nap")][2]
    assert len(executions(app_db, ids)) == 40  # a and b once each; the nap runs no code of the app
    assert daemon.proc.poll() is None


def test_a_first_step_waits_for_its_delay_after_the_start(client: Client, app_db: str, start_daemon) -> None:
    start_daemon("--workers", "1")
    t0 = time.time()
    ids = [client.enqueue("late_start", {}) for _ in range(3)]
    wait_for(lambda: _done(app_db, ids), 30, "the late starts")
    with psycopg.connect(app_db) as conn:
        created = dict(conn.execute("SELECT id::text, created_at FROM orchwf_workflow_instances"
                                    " WHERE id = ANY(%s::uuid[])", (ids,)).fetchall())
    for (inst, _), (status, started, *_rest) in _steps(app_db, ids).items():
        # created_at is the ID's clock reading, a little after the enqueue's now(): 10 ms slack
        assert status == "completed" and started - created[inst] >= timedelta(seconds=0.99)
    assert time.time() - t0 >= 1.0


def test_naps_survive_kill_9_of_the_daemon(client: Client, app_db: str, start_daemon) -> None:
    first = start_daemon("--workers", "2", "--concurrency", "8")
    ids = client.enqueue_many("sleeper", [{} for _ in range(200)])
    wait_for(lambda: sum(1 for k, s in _steps(app_db, ids).items() if k[1] == "a" and s[0] == "completed") >= 100,
             60, "half the first steps")
    os.killpg(first.proc.pid, signal.SIGKILL)  # the supervisor and its workers, mid-nap
    first.proc.wait(10)
    start_daemon("--workers", "2", "--concurrency", "8")
    wait_for(lambda: _done(app_db, ids), 90, "every instance after the restart")
    runs = executions(app_db, ids)
    per_step: dict[tuple[str, str], int] = {}
    for inst, step, *_ in runs:
        per_step[(inst, step)] = per_step.get((inst, step), 0) + 1
    assert {k for k in per_step if k[1] == "b"} == {(i, "b") for i in ids}
    assert all(n == 1 for (inst, step), n in per_step.items() if step == "b"), "b ran twice"
    steps = _steps(app_db, ids)
    assert all(steps[(i, "nap")][1] - steps[(i, "a")][2] >= timedelta(seconds=NAP) for i in ids)


@pytest.mark.parametrize("delay", [-1, float("nan"), 367 * 86400, "soon", True])
def test_a_bad_delay_is_refused(delay: object) -> None:
    with pytest.raises(ValidationError, match="delay"):
        StepBuilder("s", "S", lambda ctx, data: {}).with_delay(delay)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="delay"):
        sleep_step("s", delay)  # type: ignore[arg-type]
