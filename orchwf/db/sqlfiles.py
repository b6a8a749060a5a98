"""orchwf's SQL files, as shipped: migrations, the API, the schema and the named queries.

The tree (the repository's ``sql/``; a wheel carries it as ``orchwf/sql``)::

    schema.sql               the current tables, in one picture (a fresh install runs it)
    migrations/NNN_name.sql  DDL and data moves, for databases of earlier releases
    migrations/NNN_name.down.sql
    api/*.sql                every SQL function, one current definition each
    queries/*.sql            the statements the Python code runs, by name (db/queries.py)

This module only finds and parses files; nothing here talks to a database.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Union

from ..errors import OrchwfError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

Dir = Union[Path, "Traversable"]

_UP_RE = re.compile(r"^(?P<version>\d+)_(?P<name>[A-Za-z0-9_]+)\.sql$")
_DOWN_RE = re.compile(r"^(?P<version>\d+)_(?P<name>[A-Za-z0-9_]+)\.down\.sql$")
_QUERY_NAME = re.compile(r"^-- name: (?P<name>[a-z][a-z0-9_]*)\s*$", re.MULTILINE)


class MigrationError(OrchwfError):
    """A migration could not be applied, rolled back or inspected (the cause is chained)."""


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
class ApiFile:
    """One file of sql/api/: functions created with CREATE OR REPLACE (idempotent)."""

    name: str  # e.g. "claim.sql"
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()[:16]


def sql_root() -> Dir:
    """``orchwf/sql`` in an installed wheel, else the source tree's ``sql/``."""
    packaged = resources.files("orchwf").joinpath("sql")
    if packaged.is_dir():
        return packaged
    repo = Path(__file__).resolve().parents[2] / "sql"
    if repo.is_dir():
        return repo
    raise MigrationError("cannot find orchwf's SQL files (orchwf/sql or the repository's sql/)")


def load_migrations(directory: Dir | str | None = None) -> list[Migration]:
    """The migrations of ``directory`` (default: orchwf's own), sorted by version."""
    root = _dir(directory, "migrations")
    ups: dict[int, tuple[str, str, Dir]] = {}
    downs: dict[tuple[int, str], Dir] = {}
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
            raise MigrationError(f"down migration without an up migration: {downs[(number, name)].name}")
    out = []
    for number in sorted(ups):
        version, name, entry = ups[number]
        down = downs.get((number, name))
        out.append(Migration(version, name, entry.read_text(encoding="utf-8"),
                             down.read_text(encoding="utf-8") if down is not None else None))
    return out


def load_api() -> list[ApiFile]:
    """The API files, in the order they are applied (by file name)."""
    root = sql_root().joinpath("api")
    files = sorted((e for e in root.iterdir() if e.name.endswith(".sql")), key=lambda e: e.name)
    return [ApiFile(e.name, e.read_text(encoding="utf-8")) for e in files]


def load_schema() -> str:
    """sql/schema.sql: the tables of the latest migration, for a fresh install."""
    return sql_root().joinpath("schema.sql").read_text(encoding="utf-8")


def load_queries() -> dict[str, str]:
    """Every named query of sql/queries/*.sql: ``-- name: NAME`` starts one."""
    out: dict[str, str] = {}
    root = sql_root().joinpath("queries")
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        text = entry.read_text(encoding="utf-8")
        marks = list(_QUERY_NAME.finditer(text))
        for i, mark in enumerate(marks):
            end = marks[i + 1].start() if i + 1 < len(marks) else len(text)
            name = mark["name"]
            if name in out:
                raise MigrationError(f"query {name!r} is defined twice (sql/queries/{entry.name})")
            out[name] = text[mark.end():end].strip()
    return out


def _dir(directory: Dir | str | None, default: str) -> Dir:
    if directory is None:
        return sql_root().joinpath(default)
    if isinstance(directory, str):
        directory = Path(directory)
    if not directory.is_dir():
        raise MigrationError(f"migrations directory not found: {directory}")
    return directory
