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
from psycopg.types.json import Jsonb
from world import Chaos, prepare

from orchwf.db.migrations import migrate

pytestmark = [pytest.mark.slow, pytest.mark.timeout(PROFILE.timeout)]

# Both signals of each instance in one statement, the first one first: the wait takes the
# first (the lower id), the second is kept until its instance ends.
SIGNAL_SQL = "SELECT count(*) FROM orchwf_signal_many(%s::uuid[], %s::text[], %s::jsonb[])"
# A batch that a restart interrupted may have committed: resend only to instances that
# have no signal yet (a signal row stays until its instance ends; an ended one is done).
UNSIGNALLED = ("SELECT i.id::text FROM orchwf_live_instances i WHERE i.id = ANY(%s::uuid[])"
               " AND NOT EXISTS (SELECT 1 FROM orchwf_signals g WHERE g.workflow_inst_id = i.id)")


def _waiting(dsn: str) -> int:
    try:
        with connect(dsn) as conn:
            return int(conn.execute("SELECT count(*) FROM orchwf_live_steps WHERE step_id = 'wait'"
                                    " AND status = 'pending' AND pending_deps = 0").fetchone()[0])
    except psycopg.OperationalError:
        return 0


def _send(dsn: str, ids: list[str], sent: list[int], errors: list[BaseException]) -> None:
    """Every instance its two signals, 100 instances to a transaction; a batch the database
    restart interrupts is sent again to the instances it did not reach."""
    try:
        deadline = time.monotonic() + 180
        number = {instance: k for k, instance in enumerate(ids)}
        for start in range(0, len(ids), 100):
            batch = ids[start:start + 100]
            while time.monotonic() < deadline:
                try:
                    with psycopg.connect(dsn, connect_timeout=5) as conn, conn.transaction():
                        todo = [r[0] for r in conn.execute(UNSIGNALLED, (batch,)).fetchall()]
                        targets = [i for i in todo for _ in (0, 1)]
                        payloads = [Jsonb({"n": number[i], "first": first}) for i in todo for first in (True, False)]
                        conn.execute(SIGNAL_SQL, (targets, ["go"] * len(targets), payloads)).fetchall()
                    sent[0] += len(batch)
                    break
                except psycopg.OperationalError:
                    time.sleep(0.3)  # the server is restarting
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)


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
        errors: list[BaseException] = []
        producer = threading.Thread(target=_send, args=(dsn, ids, sent, errors), daemon=True)
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
        assert not errors and sent[0] == n, (sent, errors)
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
