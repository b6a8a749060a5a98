"""Pruner: finished instances older than the retention are removed with their steps and
events; recent and unfinished ones are kept.

Instances are made old by waiting (a retention of one second), not by writing
completed_at: Queries offers no way to back-date an instance, and the tests stay off the
tables. The pruner's other half, forgetting process rows silent for an hour
(SILENT_PROCESS_SECONDS), would need a back-dated heartbeat, so it is not covered here.
"""

from __future__ import annotations

import pytest
from maintkit import SCHEMA, claim, connection, finish, wait_until, worker_id

from orchwf import (
    Client,
    DBStateManager,
    Orchestrator,
    StepBuilder,
    WorkflowBuilder,
    WorkflowNotFoundError,
)
from orchwf.daemon.maintenance import pruner
from orchwf.daemon.maintenance.pruner import Pruner, PruneResult
from orchwf.lifecycle import Outcome

RETENTION = 1.0

quick = WorkflowBuilder("prune_me", "Finishes at once").add_step(
    StepBuilder("s", "S", lambda ctx, data: {"ok": True}).build()).build()


def test_finished_instances_past_retention_are_pruned(client: Client, app_db: str) -> None:
    """Old finished instances (in-process and daemon) go; recent and running ones stay."""
    with DBStateManager(app_db) as store, connection(app_db) as conn:
        orch = Orchestrator(store)
        orch.register_workflow(quick)
        old_inproc = orch.start_workflow("prune_me", {}).workflow_inst.id
        old_daemon = client.enqueue("single", {})
        [step] = claim(conn, worker_id())
        assert finish(conn, step, Outcome.COMPLETED, output={"done": True})
        unfinished = client.enqueue("single", {})
        assert client.get_workflow(old_daemon).status.value == "completed"

        completed = client.get_workflow(old_daemon).completed_at  # the later of the two
        wait_until(lambda: _age(conn, completed) > RETENTION, "the first instances to pass the retention")
        recent = orch.start_workflow("prune_me", {}).workflow_inst.id
        orch.shutdown()

        p = Pruner(SCHEMA, RETENTION)
        assert p.due(now=0.0)
        assert p.run_once(conn, now=100.0) == PruneResult(2)
        assert not p.due(now=100.0 + pruner.EVERY - 1) and p.due(now=100.0 + pruner.EVERY)

        for gone in (old_inproc, old_daemon):
            with pytest.raises(WorkflowNotFoundError):
                client.get_workflow(gone)
        assert client.get_workflow(recent).status.value == "completed"
        assert client.get_workflow(unfinished).status.value == "pending"
        assert [e.event_type for e in client.get_workflow_events(recent)][-1] == "workflow.completed"
        assert p.run_once(conn, now=400.0) == PruneResult(0)


def _age(conn, then) -> float:
    """Seconds since ``then`` by the database's clock (no table read)."""
    return conn.execute("SELECT extract(epoch FROM now() - %s)::float8", (then,)).fetchone()[0]


def test_a_zero_retention_never_prunes() -> None:
    """--retention 0 disables the pruner."""
    assert not Pruner(SCHEMA, 0).due(now=1e9)
