"""Fixtures of the engine parity suite: the in-process Orchestrator on a fresh database,
the real daemon (``orchwf worker --app parityapp --workers 1``, a subprocess, as in
tests/daemon/conftest.py) on another, and every scenario run once on each."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import paritykit  # noqa: E402


@pytest.fixture(scope="session")
def parity_engines(pg_server_dsn: str, pg_template_db: str) -> Iterator[dict[str, paritykit.Engine]]:
    with paritykit.fresh_database(pg_server_dsn, pg_template_db, "orchwf_parity_inproc") as a, \
            paritykit.fresh_database(pg_server_dsn, pg_template_db, "orchwf_parity_daemon") as b:
        inproc = paritykit.InProcess(a)
        daemon = paritykit.Daemon(b)
        try:
            yield {"inproc": inproc, "daemon": daemon}
        finally:
            daemon.close()
            inproc.close()


@pytest.fixture(scope="session")
def parity_runs(parity_engines: dict[str, paritykit.Engine]) -> Callable[[str, str], paritykit.Snapshot]:
    """``runs(scenario, engine)``: the scenario's snapshot, run once per session."""
    cache: dict[tuple[str, str], paritykit.Snapshot | BaseException] = {}

    def runs(scenario: str, engine: str) -> paritykit.Snapshot:
        key = (scenario, engine)
        if key not in cache:
            try:
                cache[key] = paritykit.run_scenario(parity_engines[engine], scenario)
            except Exception as exc:  # noqa: BLE001 - every test of the scenario reports it
                cache[key] = exc
        got = cache[key]
        if isinstance(got, BaseException):
            raise got
        return got

    return runs
