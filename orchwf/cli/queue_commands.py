"""``orchwf queue``: queue controls that apply to every worker on every host.

``pause`` and ``resume`` go through the SQL API (sql/api/queues.sql), as a producer or
psql would; the claim skips a paused queue in SQL, so workers of every release obey.
"""

from __future__ import annotations

import click

from .ops_commands import connection, db_options, emit_json, json_option


def _queue_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from ..client import check_queue_name
    from ..errors import ValidationError

    try:
        return check_queue_name(value)
    except ValidationError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group("queue")
def queue() -> None:
    """Pause and resume queues, for every worker on every host."""


@queue.command("pause")
@db_options
@click.argument("name", metavar="QUEUE", callback=_queue_name)
@json_option
def pause_cmd(dsn: str | None, schema: str, name: str, as_json: bool) -> None:
    """Stop starting steps of QUEUE: running steps finish, enqueued steps wait."""
    from ..client import pause_queue

    with connection(dsn) as conn:
        changed = pause_queue(conn, name, schema=schema)
    if as_json:
        emit_json({"queue": name, "paused": True, "changed": changed})
    else:
        click.echo(f"queue {name}: paused" + ("" if changed else " (it was paused already)"))


@queue.command("resume")
@db_options
@click.argument("name", metavar="QUEUE", callback=_queue_name)
@json_option
def resume_cmd(dsn: str | None, schema: str, name: str, as_json: bool) -> None:
    """Start steps of QUEUE again; its waiting steps start at once."""
    from ..client import resume_queue

    with connection(dsn) as conn:
        changed = resume_queue(conn, name, schema=schema)
    if as_json:
        emit_json({"queue": name, "paused": False, "changed": changed})
    else:
        click.echo(f"queue {name}: running" + ("" if changed else " (it was not paused)"))
