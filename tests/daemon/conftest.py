"""Fixtures that run the real daemon (``orchwf worker``) as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import orchwf
from orchwf import Client

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

import daemonapp  # noqa: E402
from daemonkit import SIDE_TABLES, Daemon, executions, wait_for  # noqa: E402,F401


@pytest.fixture
def app_db(db_dsn: str) -> str:
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute(SIDE_TABLES)
    return db_dsn


@pytest.fixture
def client(app_db: str) -> Iterator[Client]:
    c = Client(app_db)
    for value in vars(daemonapp).values():
        if isinstance(value, orchwf.WorkflowDefinition):
            c.register_workflow(value)
    yield c
    c.close()


@pytest.fixture
def start_daemon(app_db: str, client: Client) -> Iterator[Callable[..., Daemon]]:
    daemons: list[Daemon] = []

    def start(*args: str, dsn: str | None = None, **options: Any) -> Daemon:
        """``options``: Daemon's app= and env=."""
        d = Daemon(dsn or app_db, list(args), **options)
        daemons.append(d)
        return d

    yield start
    for d in daemons:
        print(f"--- daemon log ({d.log_file.name}) ---\n{d.output()[-5000:]}")
        if d.proc.poll() is None:
            try:
                d.stop(signal.SIGTERM, timeout=20)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(d.proc.pid, signal.SIGKILL)  # no orphan survives a test
        except ProcessLookupError:
            pass


