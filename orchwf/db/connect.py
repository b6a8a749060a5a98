"""The one way orchwf opens a database connection.

* Errors never show a password: a failed connect raises DatabaseConnectionError, whose
  message names the DSN redacted (libpq echoes a malformed conninfo back verbatim).
  It is a psycopg.OperationalError too, so the daemon's reconnect loops treat it as the
  lost database it is.
* TCP keepalives and a user timeout (``keepalive=True``, the daemon's processes) make a
  partitioned connection fail within about 30 seconds instead of hanging for the
  kernel's default of two hours.
* ``prepare=False`` for PgBouncer in transaction mode, where a prepared statement of one
  session may be run on another.
* A connection never crosses fork(): every process opens its own, after the fork.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from ..errors import OrchwfError
from .dsn import redact

KEEPALIVE: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30000,
}


class DatabaseConnectionError(OrchwfError, psycopg.OperationalError):
    """The database could not be reached; the message names the DSN with its password redacted."""


def connect(
    dsn: str,
    *,
    application_name: str,
    autocommit: bool = True,
    prepare: bool = True,
    keepalive: bool = True,
    connect_timeout: int = 5,
    **kwargs: Any,
) -> psycopg.Connection[Any]:
    """Open a connection (autocommit by default: callers open transactions explicitly)."""
    options: dict[str, Any] = dict(KEEPALIVE) if keepalive else {}
    options.update(kwargs)
    try:
        return psycopg.connect(
            dsn,
            autocommit=autocommit,
            connect_timeout=connect_timeout,
            application_name=application_name,
            prepare_threshold=5 if prepare else None,
            **options,
        )
    except psycopg.Error as exc:
        reason = " ".join(scrub(str(exc), dsn).split())  # libpq's text spans lines
        raise DatabaseConnectionError(f"cannot connect to {redact(dsn)}: {reason}") from None


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


def pool(dsn: str, *, name: str, min_size: int = 1, max_size: int = 4, check: bool = False) -> Any:
    """A psycopg_pool.ConnectionPool of autocommit connections, opened now: for processes
    whose threads each borrow a connection (the in-process store, the dashboard).

    Connect once directly first, so a bad DSN fails now with libpq's reason (password
    redacted) instead of a pool timeout 30 seconds later. ``check``: test a connection
    before lending it (a dashboard outlives database restarts).
    """
    from psycopg_pool import ConnectionPool

    connect(dsn, application_name=name, keepalive=False).close()
    return ConnectionPool(
        dsn, min_size=min_size, max_size=max_size, timeout=10, open=True, name=name,
        kwargs={"autocommit": True, "application_name": name},
        check=ConnectionPool.check_connection if check else None,
    )
