"""Connections of the daemon's processes: always opened in the process that uses them.

TCP keepalives and a user timeout make a partitioned connection fail within about 30
seconds instead of hanging a worker (or a supervisor that should be draining) for the
kernel's default of two hours.
"""

from __future__ import annotations

from typing import Any

import psycopg

KEEPALIVE: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30000,
}


def connect(dsn: str, *, application_name: str, autocommit: bool = True,
            prepare: bool = True) -> psycopg.Connection[Any]:
    """``prepare=False`` for PgBouncer transaction pooling, where prepared statements of
    one session may run on another."""
    return psycopg.connect(
        dsn,
        autocommit=autocommit,
        connect_timeout=5,
        application_name=application_name,
        prepare_threshold=5 if prepare else None,
        **KEEPALIVE,
    )
