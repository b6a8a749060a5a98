"""Systems under benchmark. Peers are optional: a missing package skips that peer."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

from .base import System


def _orchwf(**kw: object) -> System:
    from .orchwf_sys import OrchwfSystem

    return OrchwfSystem(**kw)  # type: ignore[arg-type]


def _pgqueuer(**kw: object) -> System:
    from .pgqueuer_sys import PgqueuerSystem

    return PgqueuerSystem(**kw)  # type: ignore[arg-type]


def _procrastinate(**kw: object) -> System:
    from .procrastinate_sys import ProcrastinateSystem

    return ProcrastinateSystem(**kw)  # type: ignore[arg-type]


FACTORIES: dict[str, tuple[Callable[..., System], tuple[str, ...]]] = {
    "orchwf": (_orchwf, ()),
    "pgqueuer": (_pgqueuer, ("pgqueuer", "asyncpg")),
    "procrastinate": (_procrastinate, ("procrastinate",)),
}


def missing_packages(name: str) -> list[str]:
    return [m for m in FACTORIES[name][1] if importlib.util.find_spec(m) is None]


def make(name: str, **kw: object) -> System:
    return FACTORIES[name][0](**kw)
