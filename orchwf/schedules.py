"""Cron schedules: validation and the misfire decision (pure: no database here; the
Client writes schedules, client.py, and the daemon fires them).

The daemon's cron service (daemon/maintenance/cron.py) fires them: at each tick it
enqueues one instance with the idempotency key ``cron:<name>:<tick>``, in the
transaction that moves the schedule's ``next_run_at`` on, under the schedule row's lock.
A host that dies mid-way rolls back both, so another host fires the tick; two hosts
never both fire it. All hosts read one clock, the database's.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

from .cron import CronSchedule
from .errors import ValidationError
from .jsonvalue import check_json_object
from .types import Schedule, WorkflowDefinition

MISFIRE_POLICIES = ("once", "all", "skip")
MAX_NAME = 200  # the tick's idempotency key, "cron:<name>:<tick>", must fit in 255
#: A tick fired less than this late is on time; an older one was missed (the misfire policy).
ON_TIME = timedelta(seconds=60)
#: "all" fires at most this many missed ticks per run; the rest on the next run.
MAX_TICKS_PER_RUN = 1000


def check_schedule(schedule: Schedule, workflow_id: str) -> Schedule:
    """The schedule, validated, with its default name (``<workflow_id> <cron>``)."""
    if not isinstance(schedule, Schedule):
        raise ValidationError(f"expected a Schedule, got {type(schedule).__name__}")
    CronSchedule.parse(schedule.cron, schedule.timezone)
    if schedule.misfire not in MISFIRE_POLICIES:
        raise ValidationError(f"misfire must be one of {', '.join(MISFIRE_POLICIES)}, got {schedule.misfire!r}")
    name = schedule.name or f"{workflow_id} {' '.join(schedule.cron.split())}"
    check_name(name)
    data = check_json_object({} if schedule.input is None else schedule.input, "schedule input")
    return replace(schedule, name=name, cron=" ".join(schedule.cron.split()), input=data)


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME or "\x00" in name:
        raise ValidationError(f"schedule name must be a string of 1 to {MAX_NAME} characters, got {name!r}")
    return name


def check_definition_schedules(definition: WorkflowDefinition) -> tuple[Schedule, ...]:
    """A definition's schedules, validated, each with a name of its own."""
    checked = tuple(check_schedule(s, definition.id) for s in definition.schedules)
    names = [s.name for s in checked]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValidationError(f"workflow {definition.id!r} has two schedules named {twice[0]!r}: give them names")
    return checked


def tick_key(name: str, tick: datetime) -> str:
    """The idempotency key of one tick's instance: the same on every host."""
    return f"cron:{name}:{tick.astimezone(timezone.utc).strftime('%Y-%m-%dT%H:%MZ')}"


def ticks_to_fire(cron: CronSchedule, misfire: str, next_run_at: datetime, now: datetime
                  ) -> tuple[list[datetime], datetime]:
    """The ticks to start instances for, and the schedule's next run after them.

    Ticks from ``next_run_at`` to ``now`` are due. One less than ``ON_TIME`` late is on
    time; older ones were missed (no daemon ran). "all" fires every due tick (at most
    MAX_TICKS_PER_RUN a run: the rest on the next run); "once" fires only the latest
    due tick, so a long outage makes one run, not a storm; "skip" fires only a tick
    that is on time."""
    due = cron.ticks(next_run_at, now, MAX_TICKS_PER_RUN if misfire == "all" else 1_000_000)
    if misfire == "all":
        fire = due
        after = due[-1] if len(due) == MAX_TICKS_PER_RUN else now
    elif misfire == "once":
        fire = due[-1:]
        after = now
    else:
        fire = [t for t in due if now - t < ON_TIME][-1:]
        after = now
    return fire, cron.next_after(after)
