"""The ``orchwf`` command line: one click group, one module per command family."""

from __future__ import annotations

import sys

import click

from ..errors import OrchwfError


class OrchwfGroup(click.Group):
    """Turns expected errors into one clear line and exit code 1 (2 for usage errors)."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except OrchwfError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2 if type(exc).__name__ == "UsageError" else 1)
        except Exception as exc:
            import psycopg

            if not isinstance(exc, psycopg.Error):
                raise
            # A database error no command translated: one line, passwords redacted.
            from ..db.dsn import redact

            text = exc.diag.message_primary if exc.diag and exc.diag.message_primary else str(exc)
            state = exc.sqlstate or ""
            lost = state.startswith("08") or (not state and isinstance(exc, psycopg.OperationalError))
            kind = "cannot reach the database" if lost else "database error"
            click.echo(f"error: {kind}: {' '.join(redact(text or type(exc).__name__).split())}", err=True)
            sys.exit(1)


@click.group(cls=OrchwfGroup)
@click.version_option(package_name="orchwf")
def cli() -> None:
    """orchwf: workflow orchestration on PostgreSQL."""


def _register() -> None:
    from . import (
        dashboard_command,
        db_commands,
        demo_command,
        migrate_commands,
        ops_commands,
        queue_commands,
        schedule_commands,
        worker_commands,
    )

    cli.add_command(migrate_commands.migrate)
    cli.add_command(db_commands.db)
    cli.add_command(worker_commands.worker)
    cli.add_command(demo_command.demo)
    cli.add_command(dashboard_command.dashboard)
    cli.add_command(schedule_commands.schedules)
    cli.add_command(queue_commands.queue)
    cli.add_command(queue_commands.keys_cmd)
    for command in ops_commands.COMMANDS:
        cli.add_command(command)


_register()


def worker_entry() -> None:
    """Console script ``orchwf-worker``: the same as ``orchwf worker``."""
    cmd = cli.get_command(click.Context(cli), "worker")
    if cmd is None:
        click.echo("error: the worker command is not available", err=True)
        sys.exit(1)
    cmd(prog_name="orchwf-worker")
