"""Scenario 11: signals and faults. Instances wait for a signal between two steps; a
producer signals every one of them (twice: the step must take the first) while workers
are killed with kill -9 and the database is restarted. Each wait receives its first
signal, exactly once, and the chaos ledger holds."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path

import psycopg
import pytest
from harness import PROFILE, connect, record_figures, wait_for, wait_until_done
from ledger import check_ledger
from world import Chaos, prepare

from orchwf.db.migrations import migrate

pytestmark = [pytest.mark.slow, pytest.mark.timeout(PROFILE.timeout)]

SIGNAL_SQL = "SELECT orchwf_signal(x.id, 'go', jsonb_build_object('n', x.n, 'first', %s)) " \
             "FROM unnest(%s::uuid[], %s::int[]) AS x(id, n)"


def _waiting(dsn: str) -> int:
    try:
        with connect(dsn) as conn:
            return int(conn.execute("SELECT count(*) FROM orchwf_live_steps WHERE step_id = 'wait'"
                                    " AND status = 'pending' AND pending_deps = 0").fetchone()[0])
    except psycopg.OperationalError:
        return 0


def _send(dsn: str, ids: list[str], first: bool, sent: list[int]) -> None:
    """Every instance its signal, 100 to a transaction; a batch the database restart
    interrupts is sent again (it committed whole or not at all)."""
    deadline = time.monotonic() + 180
    for start in range(0, len(ids), 100):
        batch = ids[start:start + 100]
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(SIGNAL_SQL, (first, batch, list(range(start, start + len(batch))))).fetchall()
                sent[0] += len(batch)
                break
            except psycopg.OperationalError:
                time.sleep(0.3)  # the server is restarting


def test_each_wait_takes_its_first_signal_once_through_kills_and_a_restart(embedded_server, tmp_path: Path) -> None:
    dsn = embedded_server.dsn_for("chaos_signals")
    with psycopg.connect(embedded_server.dsn, autocommit=True) as conn:
        conn.execute("CREATE DATABASE chaos_signals")
        conn.execute("ALTER DATABASE chaos_signals SET synchronous_commit = on")
    migrate(dsn)
    prepare(dsn)
    world = Chaos(dsn, tmp_path)
    n = PROFILE.signal_workflows
    rng = random.Random(11)
    try:
        ids = world.enqueue("signalled", n, {"sleep": 0.002})
        daemon = world.start("--workers", "2", "--concurrency", "8", "--lease-seconds", "3")
        wait_for(lambda: _waiting(dsn) >= n * 0.9, timeout=120, what="most instances to wait for their signal")
        sent = [0]
        producer = threading.Thread(target=lambda: (_send(dsn, ids, True, sent), _send(dsn, ids, False, sent)),
                                    daemon=True)
        producer.start()
        kills = 0
        for _ in range(3):  # workers killed while the waits are received
            time.sleep(rng.uniform(0.3, 1.0))
            for pid in daemon.workers():
                os.kill(pid, signal.SIGKILL)
                kills += 1
        wait_for(lambda: sent[0] >= n // 2, timeout=120, what="half the signals")
        embedded_server.stop()  # the database restarts mid-delivery
        time.sleep(1.0)
        embedded_server.start()
        producer.join(timeout=180)
        assert not producer.is_alive(), "the producer did not finish sending"
        elapsed = wait_until_done(dsn, ids, timeout=180, daemons=[daemon])
        assert daemon.alive(), "the daemon did not ride out the faults"
        daemon.stop()
        led = check_ledger(dsn, ids, runs_no_app_code=frozenset({"wait"}))
        with connect(dsn) as conn:
            outputs = dict(conn.execute(
                "SELECT workflow_inst_id::text, output FROM orchwf_step_instances"
                " WHERE step_id = 'wait' AND workflow_inst_id = ANY(%s::uuid[])", (ids,)).fetchall())
        assert led.instance_status == {"completed": n}
        wrong = {i: outputs.get(i) for k, i in enumerate(ids) if outputs.get(i) != {"n": k, "first": True}}
        assert not wrong, f"{len(wrong)} waits did not take their own first signal: {list(wrong.items())[:3]}"
        record_figures("11 signals and faults", {"workflows": n, "signals_sent": sent[0], "worker_kills": kills,
                                                 "restarts": 1, "seconds_after_restart": round(elapsed, 1),
                                                 **led.figures()})
    finally:
        world.close()
