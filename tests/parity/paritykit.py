"""The engine parity suite's machinery: the two engines behind one interface, the
scenarios, and the views of a finished run that the tests compare.

An engine runs a scenario's workflow and returns a ``Snapshot`` (the instance with its
steps, its events, and the order the compensators ran in, from a side table). The views
(``ASPECTS``) turn a snapshot into plain data; the tests require both engines' views to
be equal, except for the documented differences in ``DAEMON_ONLY_*`` below.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

import orchwf
from orchwf import (
    Client,
    DBStateManager,
    Orchestrator,
    WorkflowEvent,
    WorkflowInstance,
    WorkflowStatus,
)
from orchwf.lifecycle import COMPENSATE_STEP, Event

HERE = Path(__file__).parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import parityapp  # noqa: E402

APP = "parityapp"
WAIT = 30.0  # seconds any run may take at most

# -- the documented differences: the ONLY ones the comparison lets through --------------
#
# The daemon runs an ended instance's compensators as a pseudo-step, '$compensate'
# (lifecycle.COMPENSATE_STEP; README "What the daemon guarantees": compensators run "on a
# worker"; docs/operations.md, failure semantics: "a `$compensate` step is queued"). It
# has a step entry of its own, and the claim and finish write step.started and
# step.completed for it. The compensators' own events (step.compensated,
# step.compensation_failed) carry the compensated step's ID, as in-process, and ARE
# compared. test_parity.test_compensate_pseudo_step_is_the_only_extra_step checks that
# this filter hides nothing else.
DAEMON_ONLY_STEPS = frozenset({COMPENSATE_STEP})
# README "Events": "the daemon adds step.rescued and step.released, for crashes and
# shutdowns the in-process engine does not have".
DAEMON_ONLY_EVENTS = frozenset({Event.STEP_RESCUED.value, Event.STEP_RELEASED.value})
# README "Events" lists workflow.resumed without a payload: the daemon writes {} (or
# {"retry_step": id}, sql/api/ops.sql), the Orchestrator {"retry_count": n}
# (orchestrator.py _prepare_resume). Its TYPE is compared, its data is not.
DATA_NOT_COMPARED = frozenset({Event.WORKFLOW_RESUMED.value})


# -- engines ----------------------------------------------------------------------------


@contextlib.contextmanager
def fresh_database(server_dsn: str, template: str, prefix: str) -> Iterator[str]:
    """A database copied from the migrated template (dropped afterwards), with the side table."""
    name = f"{prefix}_{os.getpid()}_{os.urandom(3).hex()}"
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template)))
    dsn = make_conninfo(server_dsn, dbname=name)
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(parityapp.SIDE_TABLE)
        yield dsn
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def definitions() -> list[orchwf.WorkflowDefinition]:
    return [v for v in vars(parityapp).values() if isinstance(v, orchwf.WorkflowDefinition)]


@dataclass
class Snapshot:
    """A finished run, as the engine's public API reports it."""

    engine: str
    instance: WorkflowInstance
    events: list[WorkflowEvent]
    compensations: list[str]  # step IDs, in the order their compensators ran


class Engine:
    name = ""
    dsn = ""

    def run(self, workflow_id: str, data: dict[str, Any], metadata: dict[str, Any]) -> str:
        """Start and wait for the end; the instance ID."""
        raise NotImplementedError

    def start(self, workflow_id: str, data: dict[str, Any], metadata: dict[str, Any]) -> str:
        raise NotImplementedError

    def wait(self, iid: str) -> WorkflowInstance:
        raise NotImplementedError

    def cancel(self, iid: str) -> None:
        raise NotImplementedError

    def resume(self, iid: str) -> None:
        """Resume and wait for the end."""
        raise NotImplementedError

    def instance(self, iid: str) -> WorkflowInstance:
        raise NotImplementedError

    def events(self, iid: str) -> list[WorkflowEvent]:
        raise NotImplementedError

    def snapshot(self, iid: str) -> Snapshot:
        with psycopg.connect(self.dsn) as conn:
            order = [r[0] for r in conn.execute(
                "SELECT step_id FROM parity_compensations WHERE instance_id = %s ORDER BY id", (iid,))]
        return Snapshot(self.name, self.instance(iid), self.events(iid), order)


class InProcess(Engine):
    """The Orchestrator with a DBStateManager, in this process."""

    name = "inproc"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.store = DBStateManager(dsn)
        self.orch = Orchestrator(self.store)
        for d in definitions():
            self.orch.register_workflow(d)

    def close(self) -> None:
        self.orch.shutdown(wait=True)
        self.store.close()

    def run(self, workflow_id, data, metadata):
        return self.orch.start_workflow(workflow_id, data, metadata).workflow_inst.id

    def start(self, workflow_id, data, metadata):
        return self.orch.start_workflow_async(workflow_id, data, metadata)

    def wait(self, iid):
        return self.orch.wait(iid, timeout=WAIT)

    def cancel(self, iid):
        self.orch.cancel_workflow(iid)

    def resume(self, iid):
        self.orch.resume_workflow(iid)

    def instance(self, iid):
        return self.orch.get_workflow_status(iid)

    def events(self, iid):
        return self.orch.get_workflow_events(iid)


class DaemonProcess:
    """``orchwf worker --app <app>`` as a subprocess, its output in a log file."""

    def __init__(self, dsn: str, app: str = APP, args: tuple[str, ...] = ("--workers", "1"),
                 path: Path = HERE) -> None:
        env = dict(os.environ, PYTHONPATH=str(path))
        env.pop("NOTIFY_SOCKET", None)
        self.log = tempfile.NamedTemporaryFile(prefix="orchwf-parity-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchwf", "worker", "--app", app, "--dsn", dsn, "--metrics-port", "0", *args],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def remove_log(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.log.name)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # no orphan survives the suite
        self.proc.wait(5)


class Daemon(Engine):
    """Enqueue through orchwf.Client, run by a real ``orchwf worker --workers 1``."""

    name = "daemon"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.client = Client(dsn)
        for d in definitions():
            self.client.register_workflow(d)
        self.process = DaemonProcess(dsn)

    def close(self) -> None:
        """Stop the daemon; its log is printed (pytest shows it when a test failed), then removed."""
        self.process.stop()
        self.client.close()
        print(f"--- daemon log ---\n{self.process.output()[-3000:]}")
        self.process.remove_log()

    def run(self, workflow_id, data, metadata):
        iid = self.start(workflow_id, data, metadata)
        self.wait(iid)
        return iid

    def start(self, workflow_id, data, metadata):
        return self.client.enqueue(workflow_id, data, metadata=metadata)

    def wait(self, iid):
        try:
            return self.client.wait(iid, timeout=WAIT)
        except TimeoutError:
            raise AssertionError(f"daemon did not finish {iid}; its log:\n{self.process.output()[-4000:]}") from None

    def cancel(self, iid):
        self.client.cancel_workflow(iid)

    def resume(self, iid):
        self.client.resume_workflow(iid)
        self.wait(iid)

    def instance(self, iid):
        return self.client.get_workflow(iid)

    def events(self, iid):
        return self.client.get_workflow_events(iid)


# -- scenarios ---------------------------------------------------------------------------


def wait_until(predicate: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def meta_for(engine: Engine, scratch: Path) -> dict[str, Any]:
    return {"side_dsn": engine.dsn, "started": str(scratch / "started"), "gate": str(scratch / "gate"),
            "fix_flag": str(scratch / "fixed")}


def run_simple(workflow_id: str, data: dict[str, Any]) -> Callable[[Engine, Path], str]:
    def drive(engine: Engine, scratch: Path) -> str:
        return engine.run(workflow_id, data, meta_for(engine, scratch))

    return drive


def run_cancel(engine: Engine, scratch: Path) -> str:
    """Cancel while the gate step blocks; then open the gate so its thread ends."""
    meta = meta_for(engine, scratch)
    iid = engine.start("p_cancel", {"order": 7}, meta)
    wait_until(lambda: os.path.exists(meta["started"]), "the gate step to start")
    engine.cancel(iid)
    Path(meta["gate"]).touch()
    engine.wait(iid)
    return iid


def run_resume(workflow_id: str) -> Callable[[Engine, Path], str]:
    def drive(engine: Engine, scratch: Path) -> str:
        meta = meta_for(engine, scratch)
        iid = engine.run(workflow_id, {"batch": 4}, meta)
        first = engine.instance(iid)
        assert first.status == WorkflowStatus.FAILED, (engine.name, first.status, first.error)
        Path(meta["fix_flag"]).touch()  # the failing condition is fixed
        engine.resume(iid)
        return iid

    return drive


SCENARIOS: dict[str, Callable[[Engine, Path], str]] = {
    "dag": run_simple("p_dag", {"seed": 5}),
    "retries": run_simple("p_retry", {"label": "r"}),
    "optional": run_simple("p_optional", {"report": "weekly"}),
    "timeout": run_simple("p_timeout", {}),
    "timeout_ignored": run_simple("p_timeout_ignored", {}),
    "compensation": run_simple("p_compensation", {"order": 42}),
    "compensation_failure": run_simple("p_compensation_failure", {"order": 43}),
    "cancel": run_cancel,
    "resume": run_resume("p_resume"),
    "resume_compensated": run_resume("p_resume_compensated"),
}


def run_scenario(engine: Engine, name: str) -> Snapshot:
    with tempfile.TemporaryDirectory(prefix=f"parity-{name}-") as scratch:
        iid = SCENARIOS[name](engine, Path(scratch))
        return engine.snapshot(iid)


# -- views of a snapshot -----------------------------------------------------------------


def steps(snap: Snapshot) -> dict[str, Any]:
    """step_id -> StepInstance, without the daemon's pseudo-step (DAEMON_ONLY_STEPS)."""
    out = {}
    for s in snap.instance.steps:
        if snap.engine == "daemon" and s.step_id in DAEMON_ONLY_STEPS:
            continue
        out[s.step_id] = s
    return out


def step_of_event(snap: Snapshot) -> dict[str, str]:
    """step_inst_id -> step_id for every step event. A step no longer in the instance
    (the daemon's resume deletes the old '$compensate' row, sql/api/ops.sql, and leaves
    its events) is named by its step.started event, which carries the step_id."""
    names = {s.id: s.step_id for s in snap.instance.steps}
    for e in snap.events:
        if e.step_inst_id and e.step_inst_id not in names and e.event_type == Event.STEP_STARTED.value:
            names[e.step_inst_id] = str(e.event_data.get("step_id"))
    return names


def _events(snap: Snapshot) -> list[tuple[str | None, WorkflowEvent]]:
    """(step_id or None for workflow-level, event) in order, without the documented
    daemon-only ones. An event of a step that cannot be named keeps its raw ID, so it fails."""
    names = step_of_event(snap)
    out = []
    for e in snap.events:
        if snap.engine == "daemon" and e.event_type in DAEMON_ONLY_EVENTS:
            continue
        if e.step_inst_id is None:
            out.append((None, e))
            continue
        step_id = names.get(e.step_inst_id, f"<unknown step {e.step_inst_id}>")
        if snap.engine == "daemon" and step_id in DAEMON_ONLY_STEPS:
            continue
        out.append((step_id, e))
    return out


def pseudo_step_events(snap: Snapshot) -> list[str]:
    """The types of the events of the daemon's '$compensate' pseudo-step, in order."""
    names = step_of_event(snap)
    return [e.event_type for e in snap.events
            if e.step_inst_id is not None and names.get(e.step_inst_id) in DAEMON_ONLY_STEPS]


def _data(event: WorkflowEvent) -> Any:
    if event.event_type in DATA_NOT_COMPARED:
        return "<not compared>"
    data = dict(event.event_data)
    if "duration_ms" in data:  # a measurement: only its kind is compared
        data["duration_ms"] = "<ms>" if isinstance(data["duration_ms"], int) and data["duration_ms"] >= 0 else data["duration_ms"]
    return data


def view_status(snap: Snapshot) -> Any:
    return {"instance": snap.instance.status.value, "steps": {k: s.status.value for k, s in steps(snap).items()}}


def view_outputs(snap: Snapshot) -> Any:
    return {"instance": snap.instance.output, "steps": {k: s.output for k, s in steps(snap).items()}}


def view_inputs(snap: Snapshot) -> Any:
    return {k: s.input for k, s in steps(snap).items()}


def view_errors(snap: Snapshot) -> Any:
    return {"instance": snap.instance.error, "steps": {k: s.error for k, s in steps(snap).items()}}


def view_attempts(snap: Snapshot) -> Any:
    return {k: {"attempts": s.attempts, "retry_count": s.retry_count} for k, s in steps(snap).items()}


def view_step_events(snap: Snapshot) -> Any:
    """Per step, the types of its events in order (parallel steps interleave freely)."""
    out: dict[str, list[str]] = {}
    for step_id, e in _events(snap):
        if step_id is not None:
            out.setdefault(step_id, []).append(e.event_type)
    return out


def view_workflow_events(snap: Snapshot) -> Any:
    return [e.event_type for step_id, e in _events(snap) if step_id is None]


def view_event_data(snap: Snapshot) -> Any:
    out: dict[str, list[tuple[str, Any]]] = {}
    for step_id, e in _events(snap):
        out.setdefault(step_id or "<workflow>", []).append((e.event_type, _data(e)))
    return out


def view_compensations(snap: Snapshot) -> Any:
    return snap.compensations


ASPECTS: dict[str, Callable[[Snapshot], Any]] = {
    "status": view_status,
    "outputs": view_outputs,
    "inputs": view_inputs,
    "errors": view_errors,
    "attempts": view_attempts,
    "step_events": view_step_events,
    "workflow_events": view_workflow_events,
    "event_data": view_event_data,
    "compensations": view_compensations,
}
