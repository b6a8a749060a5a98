"""Process titles for ps/top; DSNs never appear in them."""

from __future__ import annotations

from collections.abc import Callable

_set: Callable[[str], None] | None
try:
    from setproctitle import setproctitle as _set
except ImportError:  # pragma: no cover - setproctitle is a dependency
    _set = None


def set_title(title: str) -> None:
    if _set is not None:
        _set(title)
