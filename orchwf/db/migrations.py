"""Schema migrations: plain SQL files, applied one transaction each.

The SQL lives in ``sql/NNN_name.sql`` (up) and ``sql/NNN_name.down.sql`` (down); an
installed wheel carries them as ``orchwf/sql``. This module only orders them, tracks
what ran in ``orchwf_migrations`` and makes two concurrent migrators safe:

* every migration runs in ONE transaction together with its tracking-row insert (or
  delete), so a migrator killed halfway leaves the database at the previous version;
* each transaction first takes ``pg_advisory_xact_lock`` on a key derived from the
  schema name and only then reads the applied versions, so two migrators serialise
  and never apply a migration twice;
* ``SET LOCAL search_path`` points the unqualified names of the files at the target
  schema (default ``public``), so orchwf can live beside an application's tables.

Schema names are validated and always quoted with ``psycopg.sql.Identifier``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Union

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg.rows import tuple_row

from ..errors import OrchwfError, ValidationError
from .dsn import redact

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = [
    "DatabaseConnectionError",
    "Migration",
    "MigrationError",
    "MigrationStatus",
    "TRACKING_TABLE",
    "connect",
    "load_migrations",
    "migrate",
    "plan",
    "rollback",
    "status",
    "validate_schema",
]

TRACKING_TABLE = "orchwf_migrations"

ConnOrDsn = Union[str, "psycopg.Connection[object]"]
MigrationsDir = Union[str, Path, "Traversable", None]

_SCHEMA_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_UP_RE = re.compile(r"^(?P<version>\d+)_(?P<name>[A-Za-z0-9_]+)\.sql$")
_DOWN_RE = re.compile(r"^(?P<version>\d+)_(?P<name>[A-Za-z0-9_]+)\.down\.sql$")

_CREATE_TRACKING = (
    "CREATE TABLE IF NOT EXISTS {table} ("
    "version text PRIMARY KEY, "
    "description text, "
    "applied_at timestamptz NOT NULL DEFAULT now())"
)


class MigrationError(OrchwfError):
    """A migration could not be applied, rolled back or inspected (the cause is chained)."""


class DatabaseConnectionError(OrchwfError):
    """The database could not be reached; the message names the DSN with its password redacted."""


@dataclass(frozen=True)
class Migration:
    version: str  # as spelled in the file name, e.g. "001"
    name: str  # e.g. "init"
    up_sql: str
    down_sql: str | None

    @property
    def number(self) -> int:
        return int(self.version)

    @property
    def description(self) -> str:
        return self.name.replace("_", " ")

    @property
    def label(self) -> str:
        return f"{self.version}_{self.name}"


@dataclass(frozen=True)
class MigrationStatus:
    version: str
    description: str
    applied_at: datetime | None  # None: pending

    @property
    def applied(self) -> bool:
        return self.applied_at is not None


# -- arguments ----------------------------------------------------------------------------


def validate_schema(schema: str) -> str:
    """Return ``schema`` if it is a plain identifier, else raise ValidationError.

    Only unquoted-identifier characters are allowed, so the name means the same thing
    to us, to psql and to a DBA reading the dry-run output.
    """
    if not isinstance(schema, str) or not _SCHEMA_RE.match(schema):
        raise ValidationError(
            f"invalid schema name {schema!r}: use letters, digits and underscores, "
            "starting with a letter or underscore, at most 63 characters"
        )
    if schema.lower().startswith("pg_"):
        raise ValidationError(
            f"invalid schema name {schema!r}: names starting with pg_ are reserved"
        )
    return schema


def lock_key(schema: str) -> int:
    """The advisory-lock key of ``schema``'s migrator: stable across processes and versions."""
    digest = hashlib.sha256(f"orchwf.migrations:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


# -- migration files ----------------------------------------------------------------------


def _default_dir() -> Traversable:
    packaged = resources.files("orchwf").joinpath("sql")  # wheel: force-included
    if packaged.is_dir():
        return packaged
    repo = Path(__file__).resolve().parents[2] / "sql"  # editable install / source tree
    if repo.is_dir():
        return repo
    raise MigrationError("cannot find orchwf's migration files (orchwf/sql or the repo's sql/)")


def load_migrations(migrations_dir: MigrationsDir = None) -> list[Migration]:
    """The migrations in ``migrations_dir`` (default: orchwf's own), sorted by version."""
    if migrations_dir is None:
        root: Traversable | Path = _default_dir()
    elif isinstance(migrations_dir, (str, Path)):
        root = Path(migrations_dir)
        if not root.is_dir():
            raise MigrationError(f"migrations directory not found: {migrations_dir}")
    else:
        root = migrations_dir
    ups: dict[int, tuple[str, str, Traversable | Path]] = {}
    downs: dict[tuple[int, str], Traversable | Path] = {}
    for entry in root.iterdir():
        if match := _DOWN_RE.match(entry.name):
            downs[(int(match["version"]), match["name"])] = entry
        elif match := _UP_RE.match(entry.name):
            number = int(match["version"])
            if number in ups:
                raise MigrationError(
                    f"two migrations with version {number}: {ups[number][2].name} and {entry.name}"
                )
            ups[number] = (match["version"], match["name"], entry)
    for number, name in downs:
        if number not in ups or ups[number][1] != name:
            raise MigrationError(
                f"down migration without an up migration: {downs[(number, name)].name}"
            )
    out = []
    for number in sorted(ups):
        version, name, entry = ups[number]
        down = downs.get((number, name))
        out.append(
            Migration(
                version=version,
                name=name,
                up_sql=entry.read_text(encoding="utf-8"),
                down_sql=down.read_text(encoding="utf-8") if down is not None else None,
            )
        )
    return out


# -- connections --------------------------------------------------------------------------


def connect(conninfo: str, **kwargs: object) -> psycopg.Connection[tuple[object, ...]]:
    """``psycopg.connect`` whose errors never show the password of ``conninfo``."""
    try:
        return psycopg.connect(conninfo, **kwargs)  # type: ignore[arg-type]
    except psycopg.Error as exc:
        reason = " ".join(scrub(str(exc), conninfo).split())  # libpq's text spans lines
        raise DatabaseConnectionError(f"cannot connect to {redact(conninfo)}: {reason}") from None


def scrub(text: str, conninfo: str) -> str:
    """``text`` with every DSN in it redacted, and ``conninfo``'s password removed too.

    libpq echoes a malformed conninfo back in its error message, so the password can
    appear in the text in any form; redacting the known password catches all of them.
    """
    text = redact(text)
    try:
        password = conninfo_to_dict(conninfo).get("password")
    except psycopg.Error:
        password = None
    if isinstance(password, str) and password:
        text = text.replace(password, "***")
    return text


@contextmanager
def _connection(conn_or_dsn: ConnOrDsn) -> Iterator[psycopg.Connection[object]]:
    """Use a caller's connection (left open) or open and close our own."""
    if isinstance(conn_or_dsn, psycopg.Connection):
        if conn_or_dsn.closed:
            raise MigrationError("the connection is closed")
        if conn_or_dsn.info.transaction_status != TransactionStatus.IDLE:
            raise MigrationError(
                "the connection has a transaction open; commit or roll it back first "
                "(each migration must run in its own transaction)"
            )
        yield conn_or_dsn
    elif isinstance(conn_or_dsn, str):
        conn = connect(conn_or_dsn, autocommit=True)
        try:
            yield conn  # type: ignore[misc]
        finally:
            conn.close()
    else:
        raise ValidationError(
            f"expected a conninfo string or a psycopg.Connection, got {type(conn_or_dsn).__name__}"
        )


def _describe(exc: psycopg.Error) -> str:
    return redact(str(exc).strip() or type(exc).__name__)


# -- statements ---------------------------------------------------------------------------


def _tracking(schema: str | None) -> sql.Composable:
    return sql.Identifier(schema, TRACKING_TABLE) if schema else sql.Identifier(TRACKING_TABLE)


def _prologue(schema: str) -> list[sql.Composable]:
    """What every migration transaction runs first (also printed by the dry run)."""
    return [
        sql.SQL("SELECT pg_advisory_xact_lock({})").format(sql.Literal(lock_key(schema))),
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)),
        sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)),
        sql.SQL(_CREATE_TRACKING).format(table=_tracking(None)),
    ]


def _record(migration: Migration) -> sql.Composed:
    return sql.SQL("INSERT INTO {} (version, description) VALUES ({}, {})").format(
        _tracking(None), sql.Literal(migration.version), sql.Literal(migration.description)
    )


def _unrecord(migration: Migration) -> sql.Composed:
    return sql.SQL("DELETE FROM {} WHERE version = {}").format(
        _tracking(None), sql.Literal(migration.version)
    )


def _lock_and_prepare(cur: psycopg.Cursor[tuple[object, ...]], schema: str) -> None:
    """Lock, create the schema and tracking table if missing, point search_path at them.

    Existence is checked before creating, so a role without CREATE privilege can still
    run ``status`` (and anything else) on an already-migrated schema.
    """
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(schema),))
    cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
    if cur.fetchone() is None:
        cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    cur.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
    if not _tracking_exists(cur, schema):
        cur.execute(sql.SQL(_CREATE_TRACKING).format(table=_tracking(schema)))


def _tracking_exists(cur: psycopg.Cursor[tuple[object, ...]], schema: str) -> bool:
    cur.execute(
        "SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = %s", (schema, TRACKING_TABLE)
    )
    return cur.fetchone() is not None


def _applied(
    cur: psycopg.Cursor[tuple[object, ...]], schema: str
) -> dict[int, tuple[str, str, datetime]]:
    """Applied versions by number: (version, description, applied_at in UTC)."""
    cur.execute(
        sql.SQL("SELECT version, description, applied_at FROM {}").format(_tracking(schema))
    )
    out: dict[int, tuple[str, str, datetime]] = {}
    for version, description, applied_at in cur.fetchall():
        try:
            number = int(str(version))
        except ValueError:
            continue  # not ours: orchwf versions are numbers
        assert isinstance(applied_at, datetime)
        out[number] = (str(version), str(description or ""), applied_at.astimezone(timezone.utc))
    return out


def _find_target(migrations: Sequence[Migration], target: str | None) -> int | None:
    if target is None:
        return None
    try:
        number = int(target)
    except (TypeError, ValueError):
        raise ValidationError(
            f"invalid target version {target!r}: expected a number like 001"
        ) from None
    if not any(m.number == number for m in migrations):
        known = ", ".join(m.version for m in migrations) or "none"
        raise ValidationError(f"unknown target version {target!r}; known versions: {known}")
    return number


def _pending(
    migrations: Sequence[Migration], applied: Mapping[int, object], target: int | None
) -> list[Migration]:
    return [
        m for m in migrations if m.number not in applied and (target is None or m.number <= target)
    ]


def _last_applied(
    migrations: Sequence[Migration], applied: dict[int, tuple[str, str, datetime]]
) -> Migration | None:
    if not applied:
        return None
    number = max(applied)
    for m in migrations:
        if m.number == number:
            if m.down_sql is None:
                raise MigrationError(f"migration {m.label} has no down script ({m.label}.down.sql)")
            return m
    raise MigrationError(
        f"migration {applied[number][0]} ({applied[number][1]}) is applied but unknown to this "
        "version of orchwf; roll it back with the orchwf version that applied it"
    )


# -- commands -----------------------------------------------------------------------------


def migrate(
    conninfo_or_connection: ConnOrDsn,
    schema: str = "public",
    *,
    target: str | None = None,
    migrations_dir: MigrationsDir = None,
) -> list[str]:
    """Apply pending migrations (up to ``target`` if given); return the versions applied.

    Safe to run from several processes at once: the others wait on the advisory lock
    and then find nothing left to do.
    """
    validate_schema(schema)
    migrations = load_migrations(migrations_dir)
    limit = _find_target(migrations, target)
    done: list[str] = []
    with _connection(conninfo_or_connection) as conn:
        while True:
            current: Migration | None = None
            try:
                with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
                    _lock_and_prepare(cur, schema)
                    pending = _pending(migrations, _applied(cur, schema), limit)
                    if not pending:
                        break
                    current = pending[0]
                    cur.execute(sql.SQL(current.up_sql))  # type: ignore[arg-type]
                    cur.execute(_record(current))
            except psycopg.Error as exc:
                what = f"migration {current.label} failed" if current else "migrate failed"
                raise MigrationError(
                    f"{what} (nothing of it was applied): {_describe(exc)}"
                ) from exc
            assert current is not None
            done.append(current.version)
    return done


def rollback(
    conninfo_or_connection: ConnOrDsn,
    schema: str = "public",
    steps: int = 1,
    *,
    migrations_dir: MigrationsDir = None,
) -> list[str]:
    """Roll back the last ``steps`` applied migrations, newest first; return their versions.

    Stops early (without error) when nothing is left applied, so it works on a fresh DB.
    """
    validate_schema(schema)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValidationError(f"steps must be a positive int, got {steps!r}")
    migrations = load_migrations(migrations_dir)
    done: list[str] = []
    with _connection(conninfo_or_connection) as conn:
        for _ in range(steps):
            current: Migration | None = None
            try:
                with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
                    _lock_and_prepare(cur, schema)
                    current = _last_applied(migrations, _applied(cur, schema))
                    if current is None:
                        break
                    cur.execute(sql.SQL(current.down_sql or ""))  # type: ignore[arg-type]
                    cur.execute(_unrecord(current))
            except psycopg.Error as exc:
                what = f"rollback of {current.label} failed" if current else "rollback failed"
                raise MigrationError(f"{what} (nothing was changed): {_describe(exc)}") from exc
            assert current is not None
            done.append(current.version)
    return done


def status(
    conninfo_or_connection: ConnOrDsn,
    schema: str = "public",
    *,
    migrations_dir: MigrationsDir = None,
    read_only: bool = False,
) -> list[MigrationStatus]:
    """Every known migration with its applied time (None: pending), oldest first.

    Creates the tracking table if missing (so a fresh DB simply shows everything
    pending), unless ``read_only``. Versions applied by a newer orchwf are listed too.
    """
    validate_schema(schema)
    migrations = load_migrations(migrations_dir)
    with _connection(conninfo_or_connection) as conn:
        try:
            with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
                if read_only:
                    applied = _applied(cur, schema) if _tracking_exists(cur, schema) else {}
                else:
                    _lock_and_prepare(cur, schema)
                    applied = _applied(cur, schema)
        except psycopg.Error as exc:
            raise MigrationError(f"status failed: {_describe(exc)}") from exc
    out = []
    for m in migrations:
        row = applied.pop(m.number, None)
        out.append(MigrationStatus(m.version, m.description, row[2] if row else None))
    for number in sorted(applied):  # applied, but not among our files
        version, description, applied_at = applied[number]
        out.append(MigrationStatus(version, description, applied_at))
    out.sort(key=lambda s: int(s.version))
    return out


def plan(
    conninfo_or_connection: ConnOrDsn,
    schema: str = "public",
    *,
    direction: str = "up",
    target: str | None = None,
    steps: int = 1,
    migrations_dir: MigrationsDir = None,
) -> str:
    """The SQL that ``migrate`` (direction "up") or ``rollback`` ("down") would run now.

    Nothing is changed: the applied versions are read only if the tracking table
    exists. The text is a runnable psql script, one transaction per migration, with
    the lock, ``SET LOCAL search_path`` and tracking statements included. Empty when
    there is nothing to do.
    """
    validate_schema(schema)
    if direction not in ("up", "down"):
        raise ValidationError(f"direction must be 'up' or 'down', got {direction!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValidationError(f"steps must be a positive int, got {steps!r}")
    migrations = load_migrations(migrations_dir)
    limit = _find_target(migrations, target)
    with _connection(conninfo_or_connection) as conn:
        try:
            with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
                applied = _applied(cur, schema) if _tracking_exists(cur, schema) else {}
        except psycopg.Error as exc:
            raise MigrationError(f"dry run failed: {_describe(exc)}") from exc

        chunks: list[str] = []
        if direction == "up":
            for m in _pending(migrations, applied, limit):
                chunks.append(_script(conn, schema, m, m.up_sql, _record(m), "up"))
        else:
            remaining = dict(applied)
            for _ in range(steps):
                last = _last_applied(migrations, remaining)
                if last is None:
                    break
                remaining.pop(last.number)
                chunks.append(
                    _script(conn, schema, last, last.down_sql or "", _unrecord(last), "down")
                )
    return "\n".join(chunks)


def _script(
    conn: psycopg.Connection[object],
    schema: str,
    migration: Migration,
    body: str,
    tracking: sql.Composable,
    direction: str,
) -> str:
    lines = [f"-- orchwf migration {migration.label} ({direction}), schema {schema}", "BEGIN;"]
    lines += [stmt.as_string(conn) + ";" for stmt in _prologue(schema)]
    lines.append(body.strip())
    lines.append(tracking.as_string(conn) + ";")
    lines.append("COMMIT;")
    return "\n".join(lines) + "\n"
