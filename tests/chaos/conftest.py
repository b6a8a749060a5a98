"""Fixtures of the chaos suite (issue 7): a database with the side table, and real daemons.

Run alone with ``python -m pytest tests/chaos``; ``ORCHWF_CHAOS_PROFILE=long`` selects the
long profile (the issue's full figures); ``ORCHWF_CHAOS_REPORT=path`` appends every
scenario's figures to ``path`` as JSON lines.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import chaosapp  # noqa: E402
from harness import PROFILE, Daemon  # noqa: E402

from orchwf import Client  # noqa: E402


def pytest_report_header(config: pytest.Config) -> str:
    return f"orchwf chaos profile: {PROFILE.name} (ORCHWF_CHAOS_PROFILE=ci|long)"


def prepare(dsn: str) -> None:
    """Side table and workflow definitions in a migrated database."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(chaosapp.SIDE_TABLE)
    with Client(dsn) as client:
        for definition in chaosapp.ALL:
            client.register_workflow(definition)


class Chaos:
    """One test's world: its database, its daemons, and a client."""

    def __init__(self, dsn: str, log_dir: Path, side_dsn: str | None = None) -> None:
        self.dsn = dsn
        self.side_dsn = side_dsn or dsn
        self.log_dir = log_dir
        self.daemons: list[Daemon] = []
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.dsn)
        return self._client

    def start(self, *args: str, dsn: str | None = None, metrics: bool = False, name: str = "daemon",
              env: dict[str, str] | None = None) -> Daemon:
        log_path = self.log_dir / f"{name}-{len(self.daemons)}.log"
        d = Daemon(dsn or self.dsn, args, side_dsn=self.side_dsn, log_path=log_path, metrics=metrics, env=env)
        self.daemons.append(d)
        return d

    def enqueue(self, workflow_id: str, n: int, input: dict[str, Any] | None = None, **options: Any) -> list[str]:
        ids: list[str] = []
        for start in range(0, n, 500):
            ids += self.client.enqueue_many(workflow_id, [dict(input or {}) for _ in range(min(500, n - start))],
                                            **options)
        return ids

    def close(self) -> None:
        for d in self.daemons:
            if d.alive():
                try:
                    d.stop(signal.SIGTERM, timeout=15)
                except AssertionError:
                    pass
            d.close()  # nothing of a test's daemons survives it
        if self._client is not None:
            self._client.close()
            self._client = None


@pytest.fixture
def chaos_db(db_dsn: str) -> str:
    prepare(db_dsn)
    return db_dsn


@pytest.fixture
def chaos(chaos_db: str, tmp_path: Path) -> Iterator[Chaos]:
    world = Chaos(chaos_db, tmp_path)
    try:
        yield world
    finally:
        world.close()
