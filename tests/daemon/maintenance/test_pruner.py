"""Pruner: retention drops whole partitions of history (docs/schema.md), never a DELETE.

A range goes once every instance created in it finished more than the retention ago; an
instance still running (or finished more recently) keeps its whole range, so nothing of
it is lost. Old instances are made by the in-process store, which keeps the created_at
and completed_at it is given (each lands in its day's partition). The pruner's other
half, forgetting process rows silent for an hour, would need a back-dated heartbeat, so
it is not covered here.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from maintkit import SCHEMA, connection

from orchwf import Client, DBStateManager, WorkflowInstance, WorkflowNotFoundError, WorkflowStatus
from orchwf.daemon.maintenance import pruner
from orchwf.daemon.maintenance.pruner import Pruner, PruneResult
from orchwf.ids import new_id

DAY = 86400.0


def _instance(store: DBStateManager, days_ago: float, status: WorkflowStatus, finished_days_ago: float | None = None
              ) -> WorkflowInstance:
    at = datetime.now(timezone.utc) - timedelta(days=days_ago)
    inst = WorkflowInstance(id=new_id(at), workflow_id="single", status=status, created_at=at, started_at=at)
    if finished_days_ago is not None:
        inst.completed_at = datetime.now(timezone.utc) - timedelta(days=finished_days_ago)
    store.save_workflow(inst)
    return inst


def test_a_range_goes_when_all_its_instances_finished_before_the_retention(client: Client, app_db: str) -> None:
    with DBStateManager(app_db) as store, connection(app_db) as conn:
        old = [_instance(store, 3, WorkflowStatus.COMPLETED, 3), _instance(store, 3, WorkflowStatus.FAILED, 2.9)]
        straggler = _instance(store, 3, WorkflowStatus.RUNNING)  # created that day, still running
        recent = _instance(store, 0, WorkflowStatus.COMPLETED, 0)

        p = Pruner(SCHEMA, DAY)
        assert p.due(now=0.0)
        # the straggler keeps its whole range (and so the two finished beside it)
        assert p.run_once(conn, now=100.0).pruned == 0
        assert not p.due(now=100.0 + pruner.EVERY - 1) and p.due(now=100.0 + pruner.EVERY)
        assert client.get_workflow(old[0].id).status == WorkflowStatus.COMPLETED

        # it finishes, but recently: the range still stays (retention counts from the finish)
        straggler.status, straggler.completed_at = WorkflowStatus.COMPLETED, datetime.now(timezone.utc)
        store.save_workflow(straggler)
        assert p.run_once(conn, now=400.0).pruned == 0
        assert client.get_workflow(straggler.id).status == WorkflowStatus.COMPLETED

        # once its finish is older than the retention too, the range goes, whole
        straggler.completed_at = datetime.now(timezone.utc) - timedelta(days=2)
        store.save_workflow(straggler)
        result = p.run_once(conn, now=700.0)
        assert result.pruned == 3 and result.partitions >= 1
        for gone in (*old, straggler):
            with pytest.raises(WorkflowNotFoundError):
                client.get_workflow(gone.id)
        assert client.get_workflow(recent.id).status == WorkflowStatus.COMPLETED
        assert p.run_once(conn, now=1000.0) == PruneResult(0, 0)


def _age(conn, then) -> float:
    """Seconds since ``then`` by the database's clock (no table read)."""
    return conn.execute("SELECT extract(epoch FROM now() - %s)::float8", (then,)).fetchone()[0]


def test_a_zero_retention_never_prunes() -> None:
    """--retention 0 disables the pruner."""
    assert not Pruner(SCHEMA, 0).due(now=1e9)
