"""IDs: time-ordered instance, step and event IDs, and the trace, correlation and
business IDs an instance carries (from metadata, else a contextvar, else a default)."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import datetime, timedelta, timezone
from typing import Any

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


_last = [0, 0]  # the millisecond and 12-bit counter of this process's last ID
_last_lock = threading.Lock()


def new_id(at: datetime | None = None) -> str:
    """A time-ordered UUID (the UUIDv7 layout: 48 bits of Unix milliseconds, then random
    bits), as the database's orchwf_uuid7() makes them. New rows land at the right edge
    of their indexes, and an instance's ID gives its created_at: ``id_time``.

    Within one millisecond a process's IDs count up (RFC 9562's method 1: the 12 bits
    after the version are a counter), so they sort in the order they were made.
    """
    moment = at if at is not None else datetime.now(timezone.utc)
    ms = (moment - _EPOCH) // timedelta(milliseconds=1)
    rand = int.from_bytes(os.urandom(10), "big")
    with _last_lock:
        if ms == _last[0] and _last[1] < 0xFFF:
            counter = _last[1] + 1
        else:
            counter = rand >> 68 & 0x7FF  # room to count up
        _last[0], _last[1] = ms, counter
    value = (ms & (2**48 - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand & (2**62 - 1)
    return str(uuid.UUID(int=value))


def id_time(value: str) -> datetime | None:
    """The millisecond a time-ordered ID was made (None for another kind of UUID)."""
    parsed = uuid.UUID(value)
    if parsed.version != 7:
        return None
    return _EPOCH + timedelta(milliseconds=parsed.int >> 80)


def new_instance_id() -> tuple[str, datetime]:
    """An instance's ID and its created_at (the ID's millisecond: the store finds the
    instance's history partition from the ID alone)."""
    moment = datetime.now(timezone.utc)
    moment = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
    return new_id(moment), moment

_trace_id: ContextVar[str | None] = ContextVar("orchwf_trace_id", default=None)
_correlation_id: ContextVar[str | None] = ContextVar("orchwf_correlation_id", default=None)
_business_id: ContextVar[str | None] = ContextVar("orchwf_business_id", default=None)


def set_trace_id(value: str | None) -> None:
    """Set the trace ID that workflows started from this context inherit."""
    _trace_id.set(value)


def set_correlation_id(value: str | None) -> None:
    _correlation_id.set(value)


def set_business_id(value: str | None) -> None:
    _business_id.set(value)


def _pick(metadata: Mapping[str, Any], key: str, var: ContextVar[str | None], default: str) -> str:
    value = metadata.get(key)
    if isinstance(value, str) and value:
        return value
    from_ctx = var.get()
    if from_ctx:
        return from_ctx
    return default


def resolve_ids(metadata: Mapping[str, Any]) -> tuple[str, str, str]:
    """(trace_id, correlation_id, business_id) as the Go ORCHWF package resolves them (README, \"Status, listing and IDs\")."""
    return (
        _pick(metadata, "trace_id", _trace_id, str(uuid.uuid4())),
        _pick(metadata, "correlation_id", _correlation_id, str(uuid.uuid4())),
        _pick(metadata, "business_id", _business_id, ""),
    )
