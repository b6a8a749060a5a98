"""SuspectWatch: true while a dead worker's steps wait for a quarantine worker, in the
watched queues and workflows only."""

from __future__ import annotations

from maintkit import SCHEMA, claim, connection, register, worker_id

from orchwf import Client
from orchwf.daemon.maintenance.rescuer import Rescuer
from orchwf.daemon.maintenance.suspects import SuspectWatch


def test_suspects_wait_after_a_dead_workers_claim_is_released(client: Client, app_db: str) -> None:
    """False before, true after the release, false again once a quarantine worker took it."""
    client.enqueue("single", {})
    watch = SuspectWatch(SCHEMA, ["default"], ["single"])
    dead = worker_id()
    with connection(app_db) as conn:
        assert watch.run_once(conn) is False  # an ordinary ready step is no suspect
        register(conn, dead)
        [step] = claim(conn, dead)
        assert watch.run_once(conn) is False

        Rescuer(SCHEMA).release_dead(conn, dead)

        assert watch.run_once(conn) is True
        assert SuspectWatch(SCHEMA, ["other"], ["single"]).run_once(conn) is False
        assert SuspectWatch(SCHEMA, ["default"], ["chain"]).run_once(conn) is False
        [taken] = claim(conn, worker_id(), suspects=True)
        assert taken.step_inst_id == step.step_inst_id
        assert watch.run_once(conn) is False
