"""MaintenanceRound: one orchwf_maintain call does what the rescuer, the scheduler and
the suspect watch do one by one, and reports the same numbers; it also marks the
supervisor's processes alive."""

from __future__ import annotations

from maintkit import (
    SCHEMA,
    Q,
    claim,
    connection,
    details,
    finish,
    register,
    wait_until,
    worker_id,
)

from orchwf import Client
from orchwf.daemon.maintenance.rescuer import Rescuer
from orchwf.daemon.maintenance.round import MaintenanceRound
from orchwf.daemon.maintenance.scheduler import Scheduler
from orchwf.daemon.maintenance.suspects import SuspectWatch
from orchwf.lifecycle import Outcome

SUPERVISOR = "host:42:0"
LATER = 60.0


def test_one_round_reports_what_the_services_report(client: Client, app_db: str) -> None:
    """Two expired leases, a due retry and a later retry: rescued 2, promoted 1, next_due
    about LATER, suspects true, both from the round and from the services."""
    client.enqueue_many("single", [{}, {}, {}, {}])
    mine = worker_id()
    with connection(app_db) as conn:
        register(conn, mine, supervisor_id=SUPERVISOR)
        expiring = claim(conn, worker_id(), limit=2, lease=0.3)
        [due, later] = claim(conn, worker_id(), limit=2)
        assert finish(conn, due, Outcome.RETRY, delay=0.3, error="boom")
        assert finish(conn, later, Outcome.RETRY, delay=LATER, error="boom")
        wait_until(lambda: all((details(conn, s).lease_expires_in or 0) < 0 for s in expiring)
                   and (details(conn, due).due_in or 0) < 0, "the lease and the first backoff to pass")
        queues, workflows = ["default"], ["single"]
        round_ = MaintenanceRound(SCHEMA, SUPERVISOR, queues, workflows)

        with conn.transaction(force_rollback=True):  # the services one by one, then undone
            rescued = Rescuer(SCHEMA).run_once(conn)
            scheduled = Scheduler(SCHEMA).run_once(conn)
            suspects = SuspectWatch(SCHEMA, queues, workflows).run_once(conn)
        with conn.transaction(force_rollback=True):  # no rescue in a round that must not
            quiet = round_.run_once(conn, rescue=False)
        assert (quiet.rescue.rescued, quiet.schedule.promoted, quiet.suspects) == (0, 1, False)

        age_before = _heartbeat_age(conn, mine)
        result = round_.run_once(conn, rescue=True)

        assert (rescued.rescued, scheduled.promoted, suspects) == (2, 1, True)
        assert result.rescue == rescued
        assert result.schedule.promoted == scheduled.promoted
        assert result.suspects is suspects
        assert result.schedule.next_due is not None and LATER - 5 < result.schedule.next_due <= LATER
        assert _heartbeat_age(conn, mine) < age_before  # the supervisor's processes marked alive
        # and it really happened: the rescued step is a suspect, the due one is ready
        assert [details(conn, s).crashes for s in expiring] == [1, 1]
        assert [s.step_inst_id for s in claim(conn, worker_id(), limit=5)] == [due.step_inst_id]
        suspects_now = claim(conn, worker_id(), limit=5, suspects=True)
        assert sorted(s.step_inst_id for s in suspects_now) == sorted(s.step_inst_id for s in expiring)


def _heartbeat_age(conn, wid: str) -> float:
    [row] = [p for p in Q.processes(conn) if p.worker_id == wid]
    return row.heartbeat_age


def test_round_and_scheduler_agree_on_next_due(client: Client, app_db: str) -> None:
    """After promoting a due retry, both report the wait for the later one."""
    client.enqueue_many("single", [{}, {}])
    with connection(app_db) as conn:
        [due, later] = claim(conn, worker_id(), limit=2)
        assert finish(conn, due, Outcome.RETRY, delay=0.05, error="boom")
        assert finish(conn, later, Outcome.RETRY, delay=LATER, error="boom")
        wait_until(lambda: (details(conn, due).due_in or 0) < 0, "the first backoff to pass")
        with conn.transaction(force_rollback=True):
            alone = Scheduler(SCHEMA).run_once(conn)
        together = MaintenanceRound(SCHEMA, SUPERVISOR, ["default"], ["single"]).run_once(conn, rescue=True)
        assert alone.promoted == together.schedule.promoted == 1
        assert together.schedule.next_due is not None and alone.next_due is not None
        assert abs(together.schedule.next_due - alone.next_due) < 1.0
