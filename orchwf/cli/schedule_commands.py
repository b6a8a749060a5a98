"""``orchwf schedules list|add|remove|pause|resume``: cron schedules (docs/schedules.md).

The same operations as the Client's (client.py), on the CLI's connection; a running
``orchwf worker`` fires the schedules.
"""

from __future__ import annotations

from typing import Any

import click

from .ops_commands import (
    _json_object,
    connection,
    db_options,
    emit_json,
    json_option,
    short,
    table,
    ts,
)


@click.group("schedules")
def schedules() -> None:
    """Cron schedules: each starts an instance of a workflow at every tick."""


@schedules.command("list")
@db_options
@json_option
def list_cmd(dsn: str | None, schema: str, as_json: bool) -> None:
    """Every schedule, with its next and last run (times in UTC)."""
    from ..db.queries import Queries

    with connection(dsn) as conn:
        rows = Queries.of(schema).list_schedules(conn)
    if as_json:
        emit_json([_row_json(r) for r in rows])
        return
    if not rows:
        click.echo("no schedules")
        return
    table(["NAME", "WORKFLOW", "CRON", "TIME ZONE", "MISFIRE", "STATE", "NEXT RUN", "LAST RUN", "LAST ERROR"],
          [[r.name, r.workflow_id, r.cron, r.timezone, r.misfire, "paused" if r.paused else "active",
            ts(r.next_run_at), ts(r.last_run_at), short(r.last_error or "", 50) or None] for r in rows])


def _row_json(row: Any) -> dict[str, Any]:
    out = dict(vars(row))
    out["last_instance_id"] = None if row.last_instance_id is None else str(row.last_instance_id)
    return out


@schedules.command("add")
@db_options
@click.argument("workflow_id")
@click.argument("cron")
@click.option("--name", help="The schedule's name [default: 'WORKFLOW_ID CRON']; an existing one is replaced.")
@click.option("--timezone", default="UTC", show_default=True, help="IANA time zone the expression is read in.")
@click.option("--input", "input_", default="{}", callback=_json_object, metavar="JSON|@FILE|-", show_default=True,
              help="Each instance's input: a JSON object, @path to a file, or - for stdin.")
@click.option("--misfire", type=click.Choice(["once", "all", "skip"]), default="once", show_default=True,
              help="Ticks missed while no worker ran: one run for them all, each, or none.")
@json_option
def add_cmd(dsn: str | None, schema: str, workflow_id: str, cron: str, name: str | None, timezone: str,
            input_: dict[str, Any], misfire: str, as_json: bool) -> None:
    """Start WORKFLOW_ID at every tick of CRON (five fields, or @hourly, @daily, ...)."""
    from ..client import add_schedule
    from ..db.queries import Queries

    with connection(dsn) as conn:
        added = add_schedule(conn, workflow_id, cron, timezone=timezone, input=input_, name=name, misfire=misfire,
                             schema=schema)
        [row] = [r for r in Queries.of(schema).list_schedules(conn) if r.name == added]
    if as_json:
        emit_json(_row_json(row))
    else:
        click.echo(f"schedule {added!r}: next run {ts(row.next_run_at)}")


HELP = {"remove": "Remove the schedule NAME (the instances it started stay).",
        "pause": "Stop firing NAME until resumed; ticks meanwhile are skipped.",
        "resume": "Fire NAME again, from its next tick after now."}


def _by_name(action: str, paused: bool | None = None) -> Any:
    """remove, pause, resume: one schedule by name; a missing one is an error (exit 1)."""
    @click.command(action, help=HELP[action])
    @db_options
    @click.argument("name")
    @json_option
    def command(dsn: str | None, schema: str, name: str, as_json: bool) -> None:
        from .. import client

        with connection(dsn) as conn:
            if paused is None:
                client.remove_schedule(conn, name, schema=schema)
            else:
                client.set_schedule_paused(conn, name, paused, schema=schema)
        if as_json:
            emit_json({"name": name, "action": action})
        else:
            click.echo(f"schedule {name!r}: {action}d")

    return command


schedules.add_command(_by_name("remove"))
schedules.add_command(_by_name("pause", True))
schedules.add_command(_by_name("resume", False))
