"""Redaction of connection strings, for anything printed.

``redact`` runs on every DSN (or message that may hold one) before it reaches a log,
an error message or a process title, because a password there is readable by anyone
who can run ``ps`` or read the logs.
"""

from __future__ import annotations

import re

REDACTED = "***"

# postgresql://user:secret@host/db -> the password runs from the first ':' of the user
# info to the LAST '@' before whitespace, so a raw '@' or '/' inside the password is
# hidden too (over-redacting a little is better than leaking a little).
_URL_USERINFO = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*:)(?P<pw>[^\s]+)(?P<tail>@)"
)
# ...?password=secret&sslmode=require (libpq accepts connection keywords in the query)
_URL_QUERY = re.compile(r"(?P<head>[?&](?:ssl)?password=)(?P<pw>[^&#\s]*)", re.IGNORECASE)
# host=h password=secret / password = 'it''s quoted' / password='a \' b'
_KEYWORD = re.compile(
    r"""(?P<head>(?:^|(?<=\s))(?:ssl)?password\s*=\s*)"""
    r"""(?P<pw>'(?:[^'\\]|\\.)*(?:'|$)|"(?:[^"\\]|\\.)*(?:"|$)|[^\s'"]\S*|(?=\s|$))""",
    re.IGNORECASE,
)


def _sub(match: re.Match[str]) -> str:
    pw = match.group("pw")
    if not pw or pw in ("''", '""'):
        return match.group(0)  # nothing secret to hide
    tail = match.groupdict().get("tail") or ""
    return f"{match.group('head')}{REDACTED}{tail}"


def redact(dsn: str) -> str:
    """Return ``dsn`` (or any text containing DSNs) with every password replaced by ``***``.

    Handles URL DSNs (``postgresql://user:pw@host/db``, ``?password=``) and libpq
    ``key=value`` strings, including single- or double-quoted values with escapes.
    A DSN without a password comes back unchanged.
    """
    if not dsn:
        return dsn
    text = _URL_USERINFO.sub(_sub, dsn)
    text = _URL_QUERY.sub(_sub, text)
    return _KEYWORD.sub(_sub, text)
