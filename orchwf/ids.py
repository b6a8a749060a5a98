"""Trace, correlation and business IDs: from metadata, else a contextvar, else a default."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

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
