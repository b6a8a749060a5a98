"""The ledger check that ends every chaos test.

1. Every instance reached a terminal state, and so did every one of its steps; nothing
   is left in the ready queue or scheduled for an ended instance.
2. Every completed step has exactly one committed result and exactly one
   ``step.completed`` event; a step that did not complete has none. The committed
   result names the execution that produced it (chaosapp writes the side-table row id
   into the output): that execution exists, belongs to this step, and ran under the
   step's last lease (its attempt number is the step's ``attempts``), so no stale
   worker's result was committed.
3. Executions of each step (rows of the side table, written at start on the step's own
   connection) <= attempts + crashes (+ claims released at shutdown, which un-count an
   attempt that may have started; none in most scenarios, and reported). A completed
   step ran at least once. An operator's resume resets a step's budget and may re-run
   completed (compensated) steps, so only executions and events since the instance's
   last resume count.
4. No lease is held by a dead worker: no ``running`` step whose lease owner's pid is not
   alive; with ``final`` (the default), no step is ``running`` at all.
5. No step ran twice at the same time: two executions of a step that both ended may not
   overlap (unless the scenario causes it on purpose, ``allow_concurrent``).
6. Metrics agree with the database, when the scenario ran with the metrics endpoint:
   exactly (``metrics_exact``), or never above it when kills or lost connections may
   lose an increment between a commit and the counter.
"""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from harness import TERMINAL, connect, scrape
from proctools import pid_alive

STEP_TERMINAL = ("completed", "failed", "skipped", "cancelled")


class LedgerWarning(UserWarning):
    """A part of the ledger that could not be checked (with the reason)."""


@dataclass
class Ledger:
    instances: int = 0
    instance_status: dict[str, int] = field(default_factory=dict)
    steps: int = 0
    step_status: dict[str, int] = field(default_factory=dict)
    executions: int = 0
    reexecutions: int = 0          # executions beyond the first, summed over steps
    attempts: int = 0
    crashes: int = 0
    retries: int = 0
    releases: int = 0
    rescued_events: int = 0
    max_executions_per_step: int = 0
    metrics: str = "not requested"
    problems: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("problems")
        return d


def check_ledger(
    dsn: str,
    ids: list[str] | None = None,
    *,
    side_dsn: str | None = None,
    final: bool = True,
    allow_concurrent: bool = False,
    metrics_url: str | None = None,
    metrics_exact: bool = True,
    runs_no_app_code: frozenset[str] = frozenset(),
) -> Ledger:
    """Run every check; raise AssertionError listing all violations; return the figures."""
    led = Ledger()
    p = led.problems
    with connect(dsn) as conn:
        # every query is a constant; the instance filter is a parameter (NULL: all instances)
        params = {"ids": ids}
        inst = conn.execute(
            "SELECT i.id::text, i.status, i.steps_remaining FROM orchwf_workflow_instances i"
            " WHERE %(ids)s::uuid[] IS NULL OR i.id = ANY(%(ids)s::uuid[])", params
        ).fetchall()
        steps = conn.execute(
            "SELECT s.id::text, s.workflow_inst_id::text, s.step_id, s.status, s.output, s.attempts, s.crashes,"
            " s.retry_count, s.lease_owner, s.run_after IS NOT NULL"
            " FROM orchwf_step_instances s JOIN orchwf_workflow_instances i ON i.id = s.workflow_inst_id"
            " WHERE %(ids)s::uuid[] IS NULL OR i.id = ANY(%(ids)s::uuid[])",
            params,
        ).fetchall()
        # (events since the instance's last resume: a resume re-runs steps, compensated ones too)
        events = conn.execute(
            "SELECT e.step_inst_id::text, e.event_type,"
            " count(*) FILTER (WHERE r.at IS NULL OR e.\"timestamp\" >= r.at), count(*) FROM orchwf_workflow_events e"
            " JOIN orchwf_workflow_instances i ON i.id = e.workflow_inst_id"
            " LEFT JOIN (SELECT workflow_inst_id, max(\"timestamp\") AS at FROM orchwf_workflow_events"
            "            WHERE event_type = 'workflow.resumed' GROUP BY 1) r ON r.workflow_inst_id = e.workflow_inst_id"
            " WHERE (%(ids)s::uuid[] IS NULL OR i.id = ANY(%(ids)s::uuid[])) AND e.step_inst_id IS NOT NULL"
            " GROUP BY 1, 2",
            params,
        ).fetchall()
        ready_for_ended = conn.execute(
            "SELECT count(*) FROM orchwf_ready_steps r JOIN orchwf_workflow_instances i ON i.id = r.workflow_inst_id"
            " WHERE i.status IN ('completed', 'failed', 'cancelled')"
            " AND (%(ids)s::uuid[] IS NULL OR i.id = ANY(%(ids)s::uuid[]))",
            params,
        ).fetchone()[0]
        resumed_at = dict(conn.execute(
            "SELECT e.workflow_inst_id::text, max(e.\"timestamp\") FROM orchwf_workflow_events e"
            " JOIN orchwf_workflow_instances i ON i.id = e.workflow_inst_id"
            " WHERE (%(ids)s::uuid[] IS NULL OR i.id = ANY(%(ids)s::uuid[])) AND e.event_type = 'workflow.resumed'"
            " GROUP BY 1",
            params,
        ).fetchall())
        db_completed_events = conn.execute(
            "SELECT count(*) FROM orchwf_workflow_events WHERE event_type = 'step.completed'").fetchone()[0]
    with connect(side_dsn or dsn) as side:
        execs = side.execute(
            "SELECT id, instance_id::text, step_id, attempt, started_at, ended_at FROM orchwf_chaos_exec"
            " WHERE %(ids)s::uuid[] IS NULL OR instance_id = ANY(%(ids)s::uuid[]) ORDER BY id",
            params,
        ).fetchall()

    # 1. terminal states
    led.instances = len(inst)
    led.instance_status = dict(Counter(status for _, status, _ in inst))
    for iid, status, remaining in inst:
        if status not in TERMINAL:
            p.append(f"instance {iid} is {status} ({remaining} steps remaining)")
    if ids is not None and len(inst) != len(set(ids)):
        p.append(f"{len(set(ids)) - len(inst)} enqueued instances are missing")
    terminal_instances = {iid for iid, status, _ in inst if status in TERMINAL}
    led.steps = len(steps)
    led.step_status = dict(Counter(row[3] for row in steps))
    for _sid, iid, step_id, status, _, _, _, _, _, scheduled in steps:
        if iid in terminal_instances and status not in STEP_TERMINAL:
            p.append(f"step {step_id} of ended instance {iid} is still {status}")
        if iid in terminal_instances and scheduled:
            p.append(f"step {step_id} of ended instance {iid} is still scheduled (run_after set)")
    if ready_for_ended:
        p.append(f"{ready_for_ended} ready rows belong to ended instances")

    # 2. exactly one committed result and one step.completed event per completed step
    ev: dict[str, Counter[str]] = defaultdict(Counter)    # since the last resume
    ev_all: dict[str, Counter[str]] = defaultdict(Counter)
    for step_inst_id, kind, since, total in events:
        ev[step_inst_id][kind] += int(since)
        ev_all[step_inst_id][kind] += int(total)
    by_step: dict[tuple[str, str], list[tuple[Any, ...]]] = defaultdict(list)
    ever: Counter[tuple[str, str]] = Counter((row[1], row[2]) for row in execs)
    for row in execs:
        # a resume gives the steps it re-runs a fresh budget (attempts and crashes reset):
        # count the executions since the last resume against it
        if row[1] in resumed_at and row[4] < resumed_at[row[1]]:
            continue
        by_step[(row[1], row[2])].append(row)
    exec_ids = {row[0]: row for row in execs}
    for sid, iid, step_id, status, output, attempts, crashes, retries, owner, _ in steps:
        # a step a resume did not re-run completed before it
        completed_events = ev[sid]["step.completed"] or ev_all[sid]["step.completed"]
        released = ev[sid]["step.released"]
        led.attempts += attempts
        led.crashes += crashes
        led.retries += retries
        led.releases += released
        led.rescued_events += ev[sid]["step.rescued"]
        if status == "completed":
            if completed_events != 1:
                p.append(f"completed step {step_id} of {iid} has {completed_events} step.completed events:"
                         f" {_events_of(dsn, sid)}")
            if step_id != "$compensate" and step_id not in runs_no_app_code:  # e.g. a signal's payload
                mine = (output or {}).get(step_id) if isinstance(output, dict) else None
                if not isinstance(mine, dict) or "exec" not in mine:
                    p.append(f"completed step {step_id} of {iid} has no committed result: {output!r}")
                else:
                    row = exec_ids.get(mine["exec"])
                    if row is None or (row[1], row[2]) != (iid, step_id):
                        p.append(f"step {step_id} of {iid}: committed result names execution {mine['exec']},"
                                 " which is not one of this step's")
                    elif mine.get("attempt") != attempts:
                        p.append(f"step {step_id} of {iid}: committed result is from attempt {mine.get('attempt')}"
                                 f" but the step's last lease is attempt {attempts} (a stale result was kept)")
        elif completed_events:
            p.append(f"step {step_id} of {iid} is {status} but has {completed_events} step.completed events")

        # 3. executions <= attempts + crashes (+ released claims)
        n = len(by_step.get((iid, step_id), ()))
        led.executions += n
        led.reexecutions += max(0, n - 1)
        led.max_executions_per_step = max(led.max_executions_per_step, n)
        if n > attempts + crashes + released:
            p.append(f"step {step_id} of {iid} ran {n} times but has attempts={attempts} crashes={crashes}"
                     f" released={released}")
        if (status == "completed" and step_id != "$compensate" and step_id not in runs_no_app_code
                and ever[(iid, step_id)] == 0):
            p.append(f"step {step_id} of {iid} completed without any execution")

        # 4. leases
        if status == "running":
            if final:
                p.append(f"step {step_id} of {iid} is still running (lease owner {owner})")
            elif owner:
                pid = _owner_pid(owner)
                if pid is None or not pid_alive(pid):
                    p.append(f"step {step_id} of {iid} is leased by dead worker {owner}")

    # 5. no concurrent executions of one step
    if not allow_concurrent:
        for (iid, step_id), rows in by_step.items():
            ended = sorted((r for r in rows if r[5] is not None), key=lambda r: r[4])
            for a, b in zip(ended, ended[1:], strict=False):
                if b[4] < a[5]:
                    p.append(f"step {step_id} of {iid} ran twice at once: executions {a[0]} and {b[0]} overlap")

    # 6. metrics
    if metrics_url is not None:
        sample = scrape(metrics_url)
        if sample is None:
            led.metrics = f"skipped: no metrics endpoint answered at {metrics_url}"
            warnings.warn(LedgerWarning(led.metrics), stacklevel=2)
        else:
            completed_metric = sample.get("orchwf_steps_completed_total", 0.0)
            if metrics_exact and completed_metric != db_completed_events:
                p.append(f"metrics: orchwf_steps_completed_total={completed_metric:g} but the database has"
                         f" {db_completed_events} step.completed events")
            elif not metrics_exact and completed_metric > db_completed_events:
                p.append(f"metrics: orchwf_steps_completed_total={completed_metric:g} exceeds the database's"
                         f" {db_completed_events} step.completed events")
            led.metrics = (f"checked ({'exact' if metrics_exact else 'at most'}): steps completed"
                           f" metric={completed_metric:g} database={db_completed_events}")
    if p:
        shown = "\n  ".join(p[:40])
        raise AssertionError(f"LEDGER CHECK FAILED ({len(p)} problems):\n  {shown}\nfigures: {led.figures()}")
    return led


def _owner_pid(owner: str) -> int | None:
    parts = owner.rsplit(":", 2)
    try:
        return int(parts[-2])
    except (IndexError, ValueError):
        return None


def _events_of(dsn: str, step_inst_id: str) -> list[tuple[Any, ...]]:
    with connect(dsn) as conn:
        return conn.execute('SELECT event_type, event_data, "timestamp" FROM orchwf_workflow_events'
                            ' WHERE step_inst_id = %s ORDER BY "timestamp", seq', (step_inst_id,)).fetchall()
