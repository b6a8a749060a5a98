"""Child workflows (orchwf.child_workflow_step) in the daemon: the parent step completes
with the child's output and holds nothing while the child runs; a failed child fails the
step, whose retry policy starts a new child; cancelling the parent cancels its child;
``orchwf show`` links parent and children."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from daemonkit import executions, wait_for

from orchwf import Client, ValidationError, child_workflow_step
from orchwf.cli.main import cli

pytestmark = pytest.mark.slow


def _status(dsn: str, ids: list[str]) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT id::text, status FROM orchwf_workflow_instances WHERE id = ANY(%s::uuid[])",
                                 (ids,)).fetchall())


def _children(dsn: str, parent: str) -> list[tuple[str, str, str]]:
    """(child ID, workflow, status) of the instances started by ``parent``, oldest first."""
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT id::text, workflow_id, status FROM orchwf_workflow_instances"
                            " WHERE metadata->>'orchwf_parent' = %s ORDER BY created_at", (parent,)).fetchall()


def _step(dsn: str, instance: str, step_id: str) -> tuple:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT status, output, error, attempts FROM orchwf_step_instances"
                            " WHERE workflow_inst_id = %s AND step_id = %s", (instance, step_id)).fetchone()


def test_the_parent_step_completes_with_the_childs_output(client: Client, app_db: str, start_daemon,
                                                          tmp_path: Path) -> None:
    start_daemon("--workers", "1", "--concurrency", "4")
    gate = tmp_path / "gate"
    parent = client.enqueue("parent", {"n": 21, "gate": str(gate)})
    wait_for(lambda: any(r[1] == "work" for r in executions(app_db)), 30, "the child's step to run")
    with psycopg.connect(app_db) as conn:  # the parent's step waits: no lease, no queue row
        held = conn.execute("SELECT count(*) FROM orchwf_running_steps WHERE workflow_inst_id = %s",
                            (parent,)).fetchone()[0]
        queued = conn.execute("SELECT count(*) FROM orchwf_ready_steps WHERE workflow_inst_id = %s",
                              (parent,)).fetchone()[0]
    assert (held, queued) == (0, 0)
    assert _step(app_db, parent, "run_child")[0] == "pending"
    from orchwf.dashboard import pages
    from orchwf.dashboard.queries import Queries as DashboardQueries
    from orchwf.dashboard.server import make_pool

    with make_pool(app_db, max_size=1) as pool:  # the step shows what it waits for
        waiting_page = pages.instance_page(DashboardQueries(pool, "public").instance(parent), pages.View(csrf_token="t"))
    [(running_child, _, _)] = _children(app_db, parent)
    assert f'child workflow <a href="/instances/{running_child}">{running_child}</a>' in waiting_page
    gate.touch()
    wait_for(lambda: _status(app_db, [parent]) == {parent: "completed"}, 30, "the parent")
    [(child, workflow, status)] = _children(app_db, parent)
    assert (workflow, status) == ("child", "completed")
    step_status, output, _, attempts = _step(app_db, parent, "run_child")
    assert step_status == "completed" and output == {"doubled": 42} and attempts == 1
    with psycopg.connect(app_db) as conn:
        meta = conn.execute("SELECT metadata FROM orchwf_workflow_instances WHERE id = %s", (child,)).fetchone()[0]
        started = conn.execute("SELECT event_data FROM orchwf_workflow_events WHERE workflow_inst_id = %s"
                               " AND event_type = 'step.child_started'", (parent,)).fetchall()
    assert meta["orchwf_parent"] == parent and meta["orchwf_parent_step"] == "run_child"
    assert started == [({"child_instance_id": child},)]
    assert [r[1] for r in executions(app_db) if r[0] == parent] == ["after"]  # prep is a lambda: not logged

    runner = CliRunner(env={"ORCHWF_DSN": app_db})
    shown = runner.invoke(cli, ["show", parent], catch_exceptions=False).stdout
    assert f"child {child}" in shown
    shown_child = runner.invoke(cli, ["show", child], catch_exceptions=False).stdout
    assert f"parent {parent} (step run_child)" in shown_child

    from orchwf.dashboard import pages
    from orchwf.dashboard.queries import Queries as DashboardQueries
    from orchwf.dashboard.server import make_pool

    with make_pool(app_db, max_size=1) as pool:
        dash = DashboardQueries(pool, "public")
        parent_page = pages.instance_page(dash.instance(parent), pages.View(csrf_token="t"))
        child_page = pages.instance_page(dash.instance(child), pages.View(csrf_token="t"))
    assert f'<a class="child" href="/instances/{child}">{child}</a>' in parent_page
    assert f'<a class="parent" href="/instances/{parent}">{parent}</a> (step run_child)' in child_page


def test_a_failed_child_fails_the_step_and_a_retry_starts_a_new_child(client: Client, app_db: str,
                                                                       start_daemon) -> None:
    start_daemon("--workers", "1", "--concurrency", "4")
    parent = client.enqueue("retrying_parent", {})
    wait_for(lambda: _status(app_db, [parent]) == {parent: "completed"}, 30, "the parent")
    children = _children(app_db, parent)
    assert [(w, s) for _, w, s in children] == [("flaky_child", "failed"), ("flaky_child", "completed")]
    status, output, _, _ = _step(app_db, parent, "run_child")
    assert (status, output) == ("completed", {"second": True})


def test_a_child_that_fails_for_good_fails_the_parent(client: Client, app_db: str, start_daemon) -> None:
    start_daemon("--workers", "1", "--concurrency", "4")
    parent = client.enqueue("failing_parent", {})
    wait_for(lambda: _status(app_db, [parent]) == {parent: "failed"}, 30, "the parent to fail")
    [(child, _, child_status)] = _children(app_db, parent)
    status, _, error, _ = _step(app_db, parent, "run_child")
    assert child_status == "failed" and status == "failed" and f"child workflow {child} failed" in error


def test_cancelling_the_parent_cancels_its_child(client: Client, app_db: str, start_daemon,
                                                 tmp_path: Path) -> None:
    start_daemon("--workers", "1", "--concurrency", "4")
    parent = client.enqueue("parent", {"gate": str(tmp_path / "never")})
    wait_for(lambda: any(r[1] == "work" for r in executions(app_db)), 30, "the child's step to run")
    assert client.cancel_workflow(parent) == "cancelled"
    [(child, _, status)] = _children(app_db, parent)
    assert status == "cancelled" and _status(app_db, [parent]) == {parent: "cancelled"}
    time.sleep(0.5)
    assert _step(app_db, parent, "run_child")[0] == "cancelled"


def test_input_from_must_be_a_dependency() -> None:
    with pytest.raises(ValidationError, match="input_from 'prep' must be one of its dependencies"):
        child_workflow_step("c", "child", input_from="prep").build()
    with pytest.raises(ValidationError, match="child workflow ID"):
        child_workflow_step("c", "")


def test_a_resumed_parent_starts_a_new_child(client: Client, app_db: str, start_daemon, tmp_path: Path) -> None:
    """Cancelled with its child, then resumed: the step starts a second child (the first
    one's report went with the cancel) and the parent completes."""
    start_daemon("--workers", "1", "--concurrency", "4")
    gate = tmp_path / "gate"
    parent = client.enqueue("parent", {"n": 2, "gate": str(gate)})
    wait_for(lambda: any(r[1] == "work" for r in executions(app_db)), 30, "the child's step to run")
    assert client.cancel_workflow(parent) == "cancelled"
    gate.touch()
    assert client.resume_workflow(parent) in ("pending", "running")
    wait_for(lambda: _status(app_db, [parent]) == {parent: "completed"}, 30, "the resumed parent")
    assert [s for _, _, s in _children(app_db, parent)] == ["cancelled", "completed"]
    assert _step(app_db, parent, "run_child")[1] == {"doubled": 4}


def test_a_child_workflow_must_be_registered_and_cycles_are_refused(client: Client, app_db: str) -> None:
    """At registration, with nothing stored: a child workflow that is not registered, and
    a chain of children that leads back (in the database, or among an app's definitions)."""
    from orchwf import StepBuilder, WorkflowBuilder
    from orchwf.client import registration_order

    def starts(workflow_id: str, child: str) -> Any:
        return WorkflowBuilder(workflow_id, workflow_id).add_step(child_workflow_step("c", child).build()).build()

    with pytest.raises(ValidationError, match="starts workflow 'nowhere', which is not registered"):
        client.register_workflow(starts("orphan_parent", "nowhere"))
    with pytest.raises(ValidationError, match="cycle: loop_a -> loop_a"):
        client.register_workflow(starts("loop_a", "loop_a"))
    leaf = WorkflowBuilder("loop_b", "b").add_step(StepBuilder("s", "S", lambda ctx, data: {}).build()).build()
    client.register_workflow(leaf)
    client.register_workflow(starts("loop_c", "loop_b"))
    with pytest.raises(ValidationError, match="cycle: loop_b -> loop_c -> loop_b"):
        client.register_workflow(starts("loop_b", "loop_c"))  # b, re-registered to start c, which starts b
    with psycopg.connect(app_db) as conn:
        registered = {r[0] for r in conn.execute("SELECT workflow_id FROM orchwf_workflow_definitions")}
        leaf_doc = conn.execute("SELECT definition FROM orchwf_workflow_definitions WHERE workflow_id = 'loop_b'"
                                ).fetchone()[0]
    assert "orphan_parent" not in registered and "loop_a" not in registered
    assert [s["id"] for s in leaf_doc["steps"]] == ["s"]  # unchanged
    assert [d.id for d in registration_order([starts("p", "q"), starts("q", "r")])] == ["q", "p"]
    with pytest.raises(ValidationError, match="cycle: p -> q -> p"):
        registration_order([starts("p", "q"), starts("q", "p")])
