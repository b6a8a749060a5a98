"""Schema migrations: the migrations, the schema picture and the SQL API (db/sqlfiles.py).

``migrate`` brings a schema to the latest version, then applies the API:

* a schema with no orchwf tables is a fresh install: ``sql/schema.sql`` runs in one
  transaction, and every migration is recorded as applied;
* otherwise each pending migration of ``sql/migrations/`` runs in ONE transaction with
  its tracking row, so a migrator killed halfway leaves the previous version;
* then every file of ``sql/api/`` runs (CREATE OR REPLACE), in one transaction, every
  time, and is recorded with its checksum in ``orchwf_api_files``. The API is applied
  only when the schema is at the latest version: it is written for the latest tables.

Each transaction first takes ``pg_advisory_xact_lock`` on a key derived from the schema
name and only then reads the applied versions, so two migrators serialise and never
apply anything twice. ``SET LOCAL search_path`` points the files' unqualified names at
the target schema (default ``public``), so orchwf can live beside an application's
tables. Rolling back runs the ``.down.sql`` files, newest first; it does not re-apply
the API (docs/schema.md, "Upgrades and downgrades").
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Union

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.pq import TransactionStatus

from ..errors import ValidationError
from .connect import DatabaseConnectionError, connect
from .dsn import redact
from .queries import Queries, validate_schema
from .sqlfiles import (
    ApiFile,
    Dir,
    Migration,
    MigrationError,
    load_api,
    load_migrations,
    load_schema,
)

__all__ = [
    "ApiStatus",
    "load_api",
    "DatabaseConnectionError",
    "Migration",
    "MigrationError",
    "MigrationStatus",
    "TRACKING_TABLE",
    "api_status",
    "load_migrations",
    "migrate",
    "plan",
    "rollback",
    "status",
    "validate_schema",
]

TRACKING_TABLE = "orchwf_migrations"
LOCK_RETRIES = 10  # tries of a migration that loses a lock race with running workers

ConnOrDsn = Union[str, "psycopg.Connection[object]"]
MigrationsDir = Union[str, "Dir", None]  # noqa: UP007
Cursor = psycopg.Cursor[Any]


@dataclass(frozen=True)
class MigrationStatus:
    version: str
    description: str
    applied_at: datetime | None  # None: pending

    @property
    def applied(self) -> bool:
        return self.applied_at is not None


@dataclass(frozen=True)
class ApiStatus:
    name: str
    applied_at: datetime | None  # None: never applied
    current: bool  # the applied version is this release's file

    @property
    def state(self) -> str:
        if self.applied_at is None:
            return "PENDING"
        return "APPLIED" if self.current else "CHANGED"


def lock_key(schema: str) -> int:
    """The advisory-lock key of ``schema``'s migrator: stable across processes and versions."""
    digest = hashlib.sha256(f"orchwf.migrations:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


# -- connections --------------------------------------------------------------------------


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
        conn = connect(conn_or_dsn, application_name="orchwf-migrate", keepalive=False)
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


# -- the steps of one transaction ---------------------------------------------------------


class _Tx:
    """What a migrator does inside one transaction, on one cursor."""

    def __init__(self, cur: Cursor, schema: str) -> None:
        self.cur = cur
        self.schema = schema
        self.q = Queries.of(schema)

    def run(self, query: str, **params: object) -> Cursor:
        return self.cur.execute(self.q.statement(query), params or None)

    def lock_and_prepare(self) -> None:
        """Lock, create the schema and tracking table if missing, point search_path at them.

        Existence is checked before creating, so a role without CREATE privilege can still
        run ``status`` (and anything else) on an already-migrated schema.
        """
        self.run("migration_lock", key=lock_key(self.schema))
        if self.run("schema_exists", schema=self.schema).fetchone() is None:
            self.run("create_schema")
        self.run("set_search_path")
        if not self.tracking_exists():
            self.run("create_tracking")

    def tracking_exists(self) -> bool:
        return self.run("tracking_exists", schema=self.schema).fetchone() is not None

    def applied(self) -> dict[int, tuple[str, str, datetime]]:
        """Applied versions by number: (version, description, applied_at in UTC)."""
        out: dict[int, tuple[str, str, datetime]] = {}
        for version, description, applied_at in self.run("applied_migrations").fetchall():
            try:
                number = int(str(version))
            except ValueError:
                continue  # not ours: orchwf versions are numbers
            assert isinstance(applied_at, datetime)
            out[number] = (str(version), str(description or ""), applied_at.astimezone(timezone.utc))
        return out

    def fresh(self) -> bool:
        """No orchwf table and no applied migration: a new install."""
        return not self.applied() and not self.run("orchwf_tables", schema=self.schema).fetchall()

    def api_applied(self) -> dict[str, tuple[str, datetime]]:
        if self.run("api_tracking_exists", schema=self.schema).fetchone() is None:
            return {}
        return {str(name): (str(checksum), applied_at.astimezone(timezone.utc))  # type: ignore[union-attr,attr-defined]
                for name, checksum, applied_at in self.run("applied_api_files").fetchall()}

    def apply_api(self, files: Sequence[ApiFile]) -> None:
        # As pg_dump does: a function's body is checked when it runs (the tests run them
        # all), not when it is created, so the files need no order among themselves.
        self.run("no_body_checks")
        self.run("create_api_tracking")
        for api in files:
            self.cur.execute(sql.SQL(api.sql))  # type: ignore[arg-type]  # a file of ours
            self.run("record_api_file", name=api.name, checksum=api.checksum)


# -- plans ----------------------------------------------------------------------------------


def _find_target(migrations: Sequence[Migration], target: str | None) -> int | None:
    if target is None:
        return None
    try:
        number = int(target)
    except (TypeError, ValueError):
        raise ValidationError(f"invalid target version {target!r}: expected a number like 001") from None
    if not any(m.number == number for m in migrations):
        known = ", ".join(m.version for m in migrations) or "none"
        raise ValidationError(f"unknown target version {target!r}; known versions: {known}")
    return number


def _pending(migrations: Sequence[Migration], applied: Mapping[int, object], target: int | None) -> list[Migration]:
    return [m for m in migrations if m.number not in applied and (target is None or m.number <= target)]


def _last_applied(migrations: Sequence[Migration], applied: dict[int, tuple[str, str, datetime]]) -> Migration | None:
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


def _own_tree(migrations_dir: MigrationsDir) -> bool:
    """orchwf's own files (with schema.sql and the API), not a caller's directory."""
    return migrations_dir is None


# -- commands -----------------------------------------------------------------------------


def migrate(
    conninfo_or_connection: ConnOrDsn,
    schema: str = "public",
    *,
    target: str | None = None,
    migrations_dir: MigrationsDir = None,
) -> list[str]:
    """Apply pending migrations (up to ``target`` if given), then the API; return the
    versions applied.

    Safe to run from several processes at once: the others wait on the advisory lock
    and then find nothing left to do.
    """
    validate_schema(schema)
    migrations = load_migrations(migrations_dir)
    limit = _find_target(migrations, target)
    own = _own_tree(migrations_dir)
    done: list[str] = []
    with _connection(conninfo_or_connection) as conn:
        if own and limit is None:
            done += _fresh_install(conn, schema, migrations)
        races = 0
        while True:
            current: Migration | None = None
            try:
                with conn.transaction(), conn.cursor() as cur:
                    tx = _Tx(cur, schema)
                    tx.lock_and_prepare()
                    pending = _pending(migrations, tx.applied(), limit)
                    if not pending:
                        break
                    current = pending[0]
                    tx.run("migration_lock_timeout")
                    cur.execute(sql.SQL(current.up_sql))  # type: ignore[arg-type]  # a file of ours
                    tx.run("record_migration", version=current.version, description=current.description)
            except (pg_errors.DeadlockDetected, pg_errors.LockNotAvailable) as exc:
                # Running workers hold the tables (a rolling upgrade): nothing was applied;
                # wait a moment and try again, rather than queue every worker behind us.
                races += 1
                if races > LOCK_RETRIES:
                    raise MigrationError(f"migration {current.label if current else ''} could not get its locks "
                                         f"in {LOCK_RETRIES} tries (nothing of it was applied): {_describe(exc)}"
                                         ) from exc
                time.sleep(min(5.0, 0.2 * 2 ** races))
                continue
            except psycopg.Error as exc:
                what = f"migration {current.label} failed" if current else "migrate failed"
                raise MigrationError(f"{what} (nothing of it was applied): {_describe(exc)}") from exc
            assert current is not None
            done.append(current.version)
        if own and (limit is None or limit == migrations[-1].number):
            _apply_api(conn, schema, migrations)
    return done


def _fresh_install(conn: psycopg.Connection[object], schema: str, migrations: Sequence[Migration]) -> list[str]:
    """sql/schema.sql in one transaction, recording every migration, if nothing is there."""
    try:
        with conn.transaction(), conn.cursor() as cur:
            tx = _Tx(cur, schema)
            tx.lock_and_prepare()
            if not tx.fresh():
                return []
            cur.execute(sql.SQL(load_schema()))  # type: ignore[arg-type]  # a file of ours
            for m in migrations:
                tx.run("record_migration", version=m.version, description=m.description)
    except psycopg.Error as exc:
        raise MigrationError(f"fresh install (sql/schema.sql) failed, nothing was created: {_describe(exc)}") from exc
    return [m.version for m in migrations]


def _apply_api(conn: psycopg.Connection[object], schema: str, migrations: Sequence[Migration]) -> None:
    files = load_api()
    try:
        with conn.transaction(), conn.cursor() as cur:
            tx = _Tx(cur, schema)
            tx.lock_and_prepare()
            if _pending(migrations, tx.applied(), None):
                return  # another migrator's newer files? not ours to judge: skip
            tx.apply_api(files)
    except psycopg.Error as exc:
        raise MigrationError(f"applying the SQL API (sql/api/) failed, nothing of it was applied: "
                             f"{_describe(exc)}") from exc


def rollback(
    conninfo_or_connection: ConnOrDsn,
    schema: str = "public",
    steps: int = 1,
    *,
    migrations_dir: MigrationsDir = None,
) -> list[str]:
    """Roll back the last ``steps`` applied migrations, newest first; return their versions.

    Stops early (without error) when nothing is left applied, so it works on a fresh DB.
    The API functions stay as they are (the down scripts say what they restore).
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
                with conn.transaction(), conn.cursor() as cur:
                    tx = _Tx(cur, schema)
                    tx.lock_and_prepare()
                    current = _last_applied(migrations, tx.applied())
                    if current is None:
                        break
                    cur.execute(sql.SQL(current.down_sql or ""))  # type: ignore[arg-type]  # a file of ours
                    tx.run("unrecord_migration", version=current.version)
                    if _own_tree(migrations_dir) and tx.run("api_tracking_exists", schema=schema).fetchone():
                        tx.run("forget_api_files")  # the API on record is no longer the schema's
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
    applied, _ = _read(conninfo_or_connection, schema, read_only, api=False)
    migrations = load_migrations(migrations_dir)
    out = []
    for m in migrations:
        row = applied.pop(m.number, None)
        out.append(MigrationStatus(m.version, m.description, row[2] if row else None))
    for number in sorted(applied):  # applied, but not among our files
        version, description, applied_at = applied[number]
        out.append(MigrationStatus(version, description, applied_at))
    out.sort(key=lambda s: int(s.version))
    return out


def api_status(conninfo_or_connection: ConnOrDsn, schema: str = "public") -> list[ApiStatus]:
    """Each file of sql/api/: when it was applied, and whether that was this release's text."""
    _, api = _read(conninfo_or_connection, schema, read_only=True, api=True)
    return [ApiStatus(f.name, api[f.name][1] if f.name in api else None,
                      f.name in api and api[f.name][0] == f.checksum) for f in load_api()]


def _read(conninfo_or_connection: ConnOrDsn, schema: str, read_only: bool, *, api: bool
          ) -> tuple[dict[int, tuple[str, str, datetime]], dict[str, tuple[str, datetime]]]:
    validate_schema(schema)
    with _connection(conninfo_or_connection) as conn:
        try:
            with conn.transaction(), conn.cursor() as cur:
                tx = _Tx(cur, schema)
                if read_only:
                    applied = tx.applied() if tx.tracking_exists() else {}
                else:
                    tx.lock_and_prepare()
                    applied = tx.applied()
                # a runtime role may read orchwf_migrations only (docs/reliability.md)
                return applied, tx.api_applied() if api else {}
        except psycopg.Error as exc:
            raise MigrationError(f"status failed: {_describe(exc)}") from exc


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
    exists. The text is a runnable psql script, one transaction per migration (a fresh
    install is one transaction, sql/schema.sql), then one for the API files, with the
    lock, ``SET LOCAL search_path`` and tracking statements included. Empty when there
    is nothing to do (the API is re-applied by every ``migrate``, so "up" is never empty
    on orchwf's own files).
    """
    validate_schema(schema)
    if direction not in ("up", "down"):
        raise ValidationError(f"direction must be 'up' or 'down', got {direction!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValidationError(f"steps must be a positive int, got {steps!r}")
    migrations = load_migrations(migrations_dir)
    limit = _find_target(migrations, target)
    own = _own_tree(migrations_dir)
    with _connection(conninfo_or_connection) as conn:
        try:
            with conn.transaction(), conn.cursor() as cur:
                tx = _Tx(cur, schema)
                applied = tx.applied() if tx.tracking_exists() else {}
                fresh = own and limit is None and not applied and not tx.run(
                    "orchwf_tables", schema=schema).fetchall()
        except psycopg.Error as exc:
            raise MigrationError(f"dry run failed: {_describe(exc)}") from exc

        script = _Script(conn, schema)
        if direction == "up":
            if fresh:
                script.transaction("fresh install (sql/schema.sql)", load_schema(),
                                   [("record_migration", {"version": m.version, "description": m.description})
                                    for m in migrations])
            else:
                for m in _pending(migrations, applied, limit):
                    script.transaction(f"migration {m.label} (up)", m.up_sql,
                                       [("record_migration", {"version": m.version, "description": m.description})])
            if own and (limit is None or limit == migrations[-1].number):
                files = load_api()
                body = "\n".join(f"-- sql/api/{f.name}\n{f.sql.strip()}" for f in files)
                body = script.statement("no_body_checks") + "\n" + body
                script.transaction("SQL API (sql/api/, applied by every migrate up)", body,
                                   [("create_api_tracking", {})]
                                   + [("record_api_file", {"name": f.name, "checksum": f.checksum}) for f in files])
        else:
            remaining = dict(applied)
            for _ in range(steps):
                last = _last_applied(migrations, remaining)
                if last is None:
                    break
                remaining.pop(last.number)
                script.transaction(f"migration {last.label} (down)", last.down_sql or "",
                                   [("unrecord_migration", {"version": last.version})])
    return script.text()


class _Script:
    """A runnable psql script: BEGIN, the lock and search_path, the body, tracking, COMMIT."""

    def __init__(self, conn: psycopg.Connection[object], schema: str) -> None:
        self.conn = conn
        self.schema = schema
        self.q = Queries.of(schema)
        self.chunks: list[str] = []

    def _stmt(self, name: str, params: Mapping[str, object]) -> str:
        text = self.q.statement(name).as_string(self.conn)
        # client-side binding, for the printed script only
        return psycopg.ClientCursor(self.conn).mogrify(text, params or None) + ";"  # type: ignore[arg-type]

    def statement(self, name: str) -> str:
        return self._stmt(name, {})

    def transaction(self, title: str, body: str, tracking: Sequence[tuple[str, Mapping[str, object]]]) -> None:
        lines = [f"-- orchwf {title}, schema {self.schema}", "BEGIN;",
                 self._stmt("migration_lock", {"key": lock_key(self.schema)}),
                 self._stmt("create_schema_if_missing", {}),
                 self._stmt("set_search_path", {}),
                 self._stmt("create_tracking", {}),
                 body.strip()]
        lines += [self._stmt(name, params) for name, params in tracking]
        lines.append("COMMIT;")
        self.chunks.append("\n".join(lines) + "\n")

    def text(self) -> str:
        return "\n".join(self.chunks)
