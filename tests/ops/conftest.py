"""Fixtures of the operations tests (issue 5): a migrated database with opsapp's
workflows registered, the real daemon as a subprocess, and a real Prometheus server."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from opskit import Daemon, register  # noqa: E402
from promkit import Prometheus, require_prometheus  # noqa: E402


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


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[..., Prometheus]]:
    """start(targets, rules=None) runs Debian's prometheus server (skips the test when it is
    not installed); stopped after the test, its log printed (shown when the test failed)."""
    require_prometheus()
    started: list[Prometheus] = []

    def start(targets: list[str], rules: str | None = None) -> Prometheus:
        server = Prometheus(tmp_path / f"prometheus-{len(started)}", targets, rules)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
        print(f"--- prometheus log ({server.log_path}):\n{server.log()[-4000:]}")
