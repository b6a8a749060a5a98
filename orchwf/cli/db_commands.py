"""``orchwf db url|start|stop|status``: the embedded default database.

These commands manage only the embedded server in ``$ORCHWF_HOME`` (``ORCHWF_DSN`` is
not consulted), so ``psql "$(orchwf db url)"`` always reaches the server orchwf starts
when no DSN is configured. Errors surface as ``OrchwfError`` and the top-level group
prints them as one ``error: ...`` line with exit code 1.
"""

from __future__ import annotations

import json

import click

from ..db import embedded


@click.group()
def db() -> None:
    """The embedded Postgres used when no --dsn / ORCHWF_DSN is given."""


@db.command()
def url() -> None:
    """Print the DSN of the embedded database, starting and migrating it if needed."""
    click.echo(embedded.start())


@db.command()
def start() -> None:
    """Start (or reuse) the embedded server and migrate it; print its DSN."""
    click.echo(embedded.start())


@db.command()
def stop() -> None:
    """Stop the embedded server (fast shutdown)."""
    if embedded.stop():
        click.echo("stopped")
    else:
        click.echo("not running")


@db.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(as_json: bool) -> None:
    """Show whether the embedded server runs, its port, DSN and data directory."""
    info = embedded.status()
    if as_json:
        click.echo(json.dumps(info, indent=2, sort_keys=True))
        return
    for key in ("running", "dsn", "pid", "port", "home", "data_dir", "log_file",
                "postgres_version", "package"):
        value = info.get(key)
        click.echo(f"{key}: {'-' if value is None else value}")
