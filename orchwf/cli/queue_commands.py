"""``orchwf queue``: queue controls that apply to every worker on every host.

``pause``, ``resume`` and ``rate-limit`` go through the SQL API (sql/api/queues.sql), as
a producer or psql would; the claim applies them in SQL, so workers of every release obey.
"""

from __future__ import annotations

import click

from .ops_commands import connection, db_options, emit_json, json_option, queries


def _queue_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from ..client import check_queue_name
    from ..errors import ValidationError

    try:
        return check_queue_name(value)
    except ValidationError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group("queue")
def queue() -> None:
    """Pause, resume and rate-limit queues, for every worker on every host."""


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


def rate_text(per_second: float | None, burst: int | None) -> str:
    """A rate limit for people: "10/s, burst 10", "0.5/s (30/min), burst 1", or "-"."""
    if per_second is None:
        return "-"
    rate = f"{per_second:g}/s" if per_second >= 1 else f"{per_second:g}/s ({per_second * 60:g}/min)"
    return f"{rate}, burst {burst}"


@queue.command("rate-limit")
@db_options
@click.argument("name", metavar="QUEUE", callback=_queue_name)
@click.option("--per-second", type=float, metavar="R", help="Steps started per second, on all hosts together.")
@click.option("--per-minute", type=float, metavar="R", help="Steps started per minute (instead of --per-second).")
@click.option("--burst", type=int, metavar="B",
              help="Starts allowed at once after a quiet spell [default: one second's worth, at least 1].")
@click.option("--off", is_flag=True, help="Remove the queue's rate limit.")
@json_option
def rate_limit_cmd(dsn: str | None, schema: str, name: str, per_second: float | None, per_minute: float | None,
                   burst: int | None, off: bool, as_json: bool) -> None:
    """Start at most R steps of QUEUE per second (or minute), across all hosts.

    A token bucket in the database: never more than B + R x T starts in any T seconds.
    """
    from ..client import check_rate_limit, set_queue_rate_limit
    from ..errors import ValidationError

    given = [o for o, v in (("--per-second", per_second), ("--per-minute", per_minute), ("--off", off or None))
             if v is not None]
    if len(given) != 1:
        raise click.UsageError("give one of --per-second, --per-minute or --off")
    if off and burst is not None:
        raise click.UsageError("--burst goes with a rate, not with --off")
    rate = None if off else per_second if per_second is not None else (per_minute or 0.0) / 60
    if rate is not None:
        try:
            rate, burst = check_rate_limit(rate, burst)
        except ValidationError as exc:
            option = "--burst" if "burst" in str(exc) else "--per-minute" if per_minute is not None else "--per-second"
            raise click.BadParameter(str(exc), param_hint=option) from None
    with connection(dsn) as conn:
        set_queue_rate_limit(conn, name, rate, burst=burst, schema=schema)
        control = next((c for c in queries(schema).queue_controls(conn) if c.name == name), None)
    limit = None if control is None else control.rate_per_second
    actual_burst = None if control is None else control.burst
    if as_json:
        emit_json({"queue": name, "rate_per_second": limit, "burst": actual_burst})
    else:
        click.echo(f"queue {name}: " + ("no rate limit" if limit is None else
                                        f"at most {rate_text(limit, actual_burst)}"))


@click.command("keys")
@db_options
@click.option("--limit", type=click.IntRange(1, 100000), default=100, show_default=True,
              help="Keys to show, the busiest first.")
@json_option
def keys_cmd(dsn: str | None, schema: str, limit: int, as_json: bool) -> None:
    """Concurrency keys in use: slots held of the limit, and steps waiting for one."""
    with connection(dsn) as conn:
        rows = queries(schema).concurrency_keys(conn, limit)
    if as_json:
        emit_json([{"key": r.key, "limit": r.concurrency_limit, "held": r.held, "waiting": r.waiting}
                   for r in rows])
        return
    if not rows:
        click.echo("no concurrency key holds a slot")
        return
    width = max(len("KEY"), *(len(r.key) for r in rows))
    click.echo(f"{'KEY':<{width}}  {'RUNNING':>9}  {'WAITING':>8}")
    for r in rows:
        click.echo(f"{r.key:<{width}}  {f'{r.held}/{r.concurrency_limit}':>9}  {r.waiting:>8}")
