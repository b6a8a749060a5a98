"""Map the SQL API's error codes (sql/api/util.sql lists them) to orchwf exceptions."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from ..errors import InvalidStateError, OrchwfError, ValidationError, WorkflowNotFoundError


@contextmanager
def translate_errors() -> Iterator[None]:
    try:
        yield
    except psycopg.Error as exc:
        state = getattr(exc, "sqlstate", None)
        message = exc.diag.message_primary if exc.diag and exc.diag.message_primary else str(exc)
        if state == "OW404":
            err = WorkflowNotFoundError(message.removeprefix("workflow not found: "))
            raise err from None
        if state == "OW400":
            raise ValidationError(message) from None
        if state == "OW409":
            raise InvalidStateError(message) from None
        if state == "22P05" or state == "22P02" and "json" in message.lower():
            raise ValidationError(message) from None
        if state == "42883" or state == "42P01":
            raise OrchwfError(
                f"{message} -- is the database migrated? run `orchwf migrate up`"
            ) from exc
        raise
