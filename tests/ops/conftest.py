"""Fixtures of the operations tests (issue 5): a migrated database with opsapp's
workflows registered, and the real daemon as a subprocess."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from opskit import Daemon, register  # noqa: E402


@pytest.fixture
def ops_db(db_dsn: str) -> str:
    """A fresh migrated database with opsapp's workflow definitions registered."""
    register(db_dsn)
    return db_dsn


@pytest.fixture
def daemon(ops_db: str) -> Iterator[Callable[..., Daemon]]:
    """start(*args, env=...) runs `orchwf worker --app opsapp` with a free metrics port."""
    started: list[Daemon] = []

    def start(*args: str, **kwargs: object) -> Daemon:
        d = Daemon(str(kwargs.pop("dsn", ops_db)), *args, **kwargs)  # type: ignore[arg-type]
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc.poll() is None:
            try:
                d.stop(timeout=20)
            except Exception:  # noqa: BLE001 - kill() below is the backstop
                pass
        d.kill()
