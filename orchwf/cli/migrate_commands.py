"""``orchwf migrate up|down|status``: the Go package's orchwf-migrate CLI, with working flags.

``--dsn``, ``--schema`` and ``--dry-run`` go after the subcommand in any order (or,
for convenience, before it: ``orchwf migrate --dsn URL up``). Without ``--dsn`` the
DSN comes from ``ORCHWF_DSN``, else from the embedded default database.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from ..errors import OrchwfError, ValidationError

F = TypeVar("F", bound=Callable[..., Any])


def _check_schema(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A bad --schema is a usage error (exit 2), reported before connecting."""
    if value is None:
        return None
    from ..db.queries import validate_schema

    try:
        return validate_schema(value)
    except ValidationError as exc:
        raise click.BadParameter(str(exc)) from None


def _options(*, group: bool) -> Callable[[F], F]:
    """--dsn / --schema / --dry-run, on the group (no env, no default) and on each command."""

    def decorate(fn: F) -> F:
        fn = click.option(
            "--dry-run",
            is_flag=True,
            default=None,
            help="Print the SQL that would run (for a DBA) and change nothing.",
        )(fn)
        fn = click.option(
            "--schema",
            envvar=None if group else "ORCHWF_SCHEMA",
            callback=_check_schema,
            help="Postgres schema for orchwf's tables [env ORCHWF_SCHEMA; default: public].",
        )(fn)
        fn = click.option(
            "--dsn",
            envvar=None if group else "ORCHWF_DSN",
            metavar="CONNINFO",
            help="PostgreSQL conninfo or URL [env ORCHWF_DSN; default: the embedded database].",
        )(fn)
        return fn

    return decorate


@click.group()
@_options(group=True)
def migrate(dsn: str | None, schema: str | None, dry_run: bool | None) -> None:
    """Apply, roll back and inspect orchwf's schema migrations."""


def _setting(ctx: click.Context, name: str) -> Any:
    """A command's own flag wins, then the group's flag, then the environment."""
    if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE:
        return ctx.params[name]
    parent = ctx.parent.params.get(name) if ctx.parent is not None else None
    if parent is not None:
        return parent
    return ctx.params[name]


def _resolve(ctx: click.Context) -> tuple[str, str, bool]:
    dsn = _setting(ctx, "dsn")
    schema = _setting(ctx, "schema") or "public"
    dry_run = bool(_setting(ctx, "dry_run"))
    if not dsn:
        try:
            from ..db.resolve import resolve_dsn
        except ImportError as exc:  # pragma: no cover - packaging problem
            raise OrchwfError(f"no database given: pass --dsn or set ORCHWF_DSN ({exc})") from None
        dsn = resolve_dsn(None)
    return dsn, schema, dry_run


def _fail(exc: Exception) -> None:
    """One line on stderr, exit 1; never a traceback, never a password."""
    from ..db.dsn import redact

    message = " ".join(redact(str(exc)).split()) or type(exc).__name__
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _run(fn: Callable[[], None]) -> None:
    import psycopg

    try:
        fn()
    except (OrchwfError, psycopg.Error) as exc:
        _fail(exc)


@migrate.command()
@_options(group=False)
@click.option("--target", metavar="VERSION", help="Stop after this version (e.g. 001).")
@click.pass_context
def up(ctx: click.Context, target: str | None, **_: Any) -> None:
    """Apply pending migrations (each in its own transaction), then the SQL API."""

    def run() -> None:
        from ..db import migrations

        dsn, schema, dry_run = _resolve(ctx)
        if dry_run:
            text = migrations.plan(dsn, schema, direction="up", target=target)
            click.echo(text or f"-- nothing to apply: schema {schema} is up to date")
            return
        applied = migrations.migrate(dsn, schema, target=target)
        names = {m.version: m.description for m in migrations.load_migrations()}
        for version in applied:
            click.echo(f"Applied migration: {version} - {names.get(version, '')}")
        if not applied:
            click.echo(f"Nothing to apply: schema {schema} is up to date.")
        if target is None:
            click.echo(f"Applied the SQL API: {len(migrations.load_api())} files of sql/api/.")

    _run(run)


@migrate.command()
@_options(group=False)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="How many migrations to roll back.",
)
@click.pass_context
def down(ctx: click.Context, steps: int, **_: Any) -> None:
    """Roll back the last applied migration(s)."""

    def run() -> None:
        from ..db import migrations

        dsn, schema, dry_run = _resolve(ctx)
        if dry_run:
            text = migrations.plan(dsn, schema, direction="down", steps=steps)
            click.echo(
                text or f"-- nothing to roll back: no migrations are applied in schema {schema}"
            )
            return
        rolled = migrations.rollback(dsn, schema, steps=steps)
        names = {m.version: m.description for m in migrations.load_migrations()}
        for version in rolled:
            click.echo(f"Rolled back migration: {version} - {names.get(version, '')}")
        if not rolled:
            click.echo(f"No migrations are applied in schema {schema}; nothing to roll back.")

    _run(run)


@migrate.command()
@_options(group=False)
@click.pass_context
def status(ctx: click.Context, **_: Any) -> None:
    """Show each migration as APPLIED <time> or PENDING (--dry-run: create nothing)."""

    def run() -> None:
        from ..db import migrations

        dsn, schema, dry_run = _resolve(ctx)
        rows = migrations.status(dsn, schema, read_only=dry_run)
        click.echo(f"Migration status (schema {schema}):")
        for row in rows:
            state = (
                f"APPLIED {row.applied_at.isoformat(sep=' ', timespec='seconds')}"
                if row.applied_at is not None
                else "PENDING"
            )
            click.echo(f"{row.version} - {row.description}: {state}")
        api = migrations.api_status(dsn, schema)
        click.echo("SQL API (sql/api/, applied by every migrate up):")
        for f in api:
            when = f" {f.applied_at.isoformat(sep=' ', timespec='seconds')}" if f.applied_at else ""
            click.echo(f"api/{f.name}: {f.state}{when}")

    _run(run)
