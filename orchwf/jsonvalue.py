"""Validation of JSON objects at the boundary, so bad input never reaches a store."""

from __future__ import annotations

import json
import math
from typing import Any

from .errors import ValidationError

MAX_DEPTH = 100


def check_json_object(value: Any, what: str) -> dict[str, Any]:
    """Return a deep copy of ``value`` if it is a JSON object, else raise ValidationError.

    NUL characters and lone surrogates are rejected: Postgres ``jsonb`` cannot store
    ``\\u0000`` and UTF-8 cannot encode a lone surrogate, so every store refuses them
    the same way instead of failing later, half-written.
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationError(f"{what} must be a JSON object (a dict), got {type(value).__name__}")
    return _copy(value, what, 0)


def _copy(value: Any, path: str, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise ValidationError(f"{path}: nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise ValidationError(f"{path}: {value!r} is not valid JSON (NaN and Infinity are refused)")
        return value
    if isinstance(value, str):
        _check_str(value, path)
        return value
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValidationError(f"{path}: key {key!r} is not a string")
            _check_str(key, f"{path}: key {key!r}")
            out[key] = _copy(item, f"{path}[{key!r}]", depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [_copy(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
    raise ValidationError(f"{path}: value of type {type(value).__name__} is not JSON-serialisable")


def _check_str(text: str, path: str) -> None:
    if "\x00" in text:
        raise ValidationError(f"{path}: NUL character (\\u0000) is not allowed")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"{path}: string is not valid Unicode (lone surrogate)") from None


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
