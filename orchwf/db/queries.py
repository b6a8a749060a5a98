"""The data-access layer: the only Python code that talks SQL.

Every statement orchwf runs is a named query of ``sql/queries/*.sql`` (``-- name: X``),
loaded once and qualified for a schema here; ``Queries`` has one method per operation,
which takes the connection to run on (pools, transactions and reconnects are the
caller's business) and returns dataclasses of ``db/rows.py``, built by column name.

Values are always bound parameters. The only identifiers composed into SQL text are the
schema (validated, then quoted by ``psycopg.sql.Identifier``) and, for the listing
filters, column names taken from a constant allow-list.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Final

import psycopg
from psycopg import sql

from ..errors import ValidationError
from .sqlfiles import load_queries

__all__ = ["Queries", "validate_schema"]

_SCHEMA_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

Conn = psycopg.Connection[Any]
Cursor = psycopg.Cursor[Any]


def validate_schema(schema: str) -> str:
    """Return ``schema`` if it is a plain identifier, else raise ValidationError.

    Only unquoted-identifier characters are allowed, so the name means the same thing to
    orchwf, to psql and to a DBA reading ``orchwf migrate up --dry-run``.
    """
    if not isinstance(schema, str) or not _SCHEMA_RE.match(schema):
        raise ValidationError(
            f"invalid schema name {schema!r}: use letters, digits and underscores, "
            "starting with a letter or underscore, at most 63 characters"
        )
    if schema.lower().startswith("pg_"):
        raise ValidationError(f"invalid schema name {schema!r}: names starting with pg_ are reserved")
    return schema


@functools.lru_cache(maxsize=1)
def _texts() -> dict[str, str]:
    return load_queries()


class Queries:
    """orchwf's statements for one schema. Cheap to get: ``Queries.of(schema)`` is cached."""

    def __init__(self, schema: str = "public") -> None:
        self.schema = validate_schema(schema)
        ident = sql.Identifier(schema)
        self._sql: Final[dict[str, sql.Composed]] = {
            name: sql.SQL(text).format(schema=ident)  # type: ignore[arg-type]
            for name, text in _texts().items()
        }

    @classmethod
    @functools.lru_cache(maxsize=64)
    def of(cls, schema: str = "public") -> Queries:
        return cls(schema)

    def statement(self, name: str) -> sql.Composed:
        """The composed statement ``name`` (for callers that print it, like the dry run)."""
        return self._sql[name]

    def text(self, name: str, conn: Conn) -> str:
        return self._sql[name].as_string(conn)

    def _run(self, conn: Conn | Cursor, name: str, params: Any = None, *, binary: bool = False) -> Cursor:
        return conn.execute(self._sql[name], params, binary=binary)  # type: ignore[arg-type]
