"""Rescuer: expired leases (run_once) and a dead worker's claims (release_dead) go back
to the queue, as suspects, through the fenced finish."""

from __future__ import annotations

from maintkit import (
    SCHEMA,
    Q,
    claim,
    connection,
    details,
    register,
    step_events,
    wait_until,
    worker_id,
)

from orchwf import Client
from orchwf.daemon.maintenance.rescuer import Rescuer, RescueResult


def test_run_once_rescues_expired_leases_only(client: Client, app_db: str) -> None:
    """A claim whose lease ran out is rescued and ready again; a live lease is not."""
    client.enqueue_many("single", [{}, {}])
    rescuer = Rescuer(SCHEMA)
    with connection(app_db) as conn:
        [short] = claim(conn, worker_id(), lease=0.3)
        [live] = claim(conn, worker_id(), lease=60)
        assert rescuer.run_once(conn) == RescueResult(0)  # nothing expired yet
        wait_until(lambda: (details(conn, short).lease_expires_in or 0) < 0, "the short lease to expire")

        assert rescuer.run_once(conn) == RescueResult(1)
        assert rescuer.run_once(conn) == RescueResult(0)

        rescued = details(conn, short)
        assert (rescued.crashes, rescued.lease_owner) == (1, None)
        assert client.get_workflow(str(short.workflow_inst_id)).step("only").status.value == "retrying"
        kinds = [kind for kind, _ in step_events(client, short)]
        assert kinds == ["step.started", "step.rescued"]
        assert "lease expired" in step_events(client, short)[1][1]["cause"]
        assert details(conn, live).lease_owner is not None  # untouched
        # ready again: a suspect, for a quarantine worker, on its second attempt
        assert claim(conn, worker_id()) == []
        [again] = claim(conn, worker_id(), suspects=True)
        assert (again.step_inst_id, again.attempt) == (short.step_inst_id, 2)


def test_release_dead_gives_back_a_dead_workers_claims_and_forgets_it(client: Client, app_db: str) -> None:
    """Every claim of the dead worker is requeued, its registration removed; others stay."""
    client.enqueue_many("single", [{}, {}, {}])
    dead, alive = worker_id(), worker_id()
    with connection(app_db) as conn:
        register(conn, dead)
        register(conn, alive)
        held = claim(conn, dead, limit=2)
        [other] = claim(conn, alive)
        assert len(held) == 2

        rows = Rescuer(SCHEMA).release_dead(conn, dead)

        assert sorted(r.step_inst_id for r in rows) == sorted(s.step_inst_id for s in held)
        assert {r.outcome for r in rows} == {"requeue"}
        assert all(f"worker {dead} died" in r.cause for r in rows)
        workers = {p.worker_id for p in Q.processes(conn)}
        assert dead not in workers and alive in workers
        assert [c.lease_owner for c in Q.running_claims(conn, 10)] == [alive]
        assert details(conn, other).lease_owner == alive
        for step in held:
            assert [kind for kind, _ in step_events(client, step)] == ["step.started", "step.rescued"]
        assert Rescuer(SCHEMA).release_dead(conn, dead) == []  # once is all
