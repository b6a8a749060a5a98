"""Which database to use: the DSN given, else $ORCHWF_DSN, else the embedded server."""

from __future__ import annotations

import os


def resolve_dsn(dsn: str | None) -> str:
    """The DSN to use: ``dsn`` if given, else ``$ORCHWF_DSN``, else the embedded server.

    The last step starts (or reuses) the local embedded Postgres and migrates it, so
    orchwf works on a laptop with no database installed.
    """
    if dsn:
        return dsn
    env = os.environ.get("ORCHWF_DSN", "").strip()
    if env:
        return env
    from .embedded import start

    return start()
