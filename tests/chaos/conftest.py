"""Fixtures of the chaos suite (issue 7): a database with the side table, and real daemons.

Run alone with ``python -m pytest tests/chaos``; ``ORCHWF_CHAOS_PROFILE=long`` selects the
long profile (the issue's full figures); ``ORCHWF_CHAOS_REPORT=path`` appends every
scenario's figures to ``path`` as JSON lines.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from harness import PROFILE  # noqa: E402
from world import Chaos, LeastPrivilege, prepare  # noqa: E402


def pytest_report_header(config: pytest.Config) -> str:
    return f"orchwf chaos profile: {PROFILE.name} (ORCHWF_CHAOS_PROFILE=ci|long)"


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


@pytest.fixture
def least_privilege(empty_db_dsn: str, tmp_path: Path) -> Iterator[tuple[LeastPrivilege, Chaos]]:
    import secrets

    roles = LeastPrivilege(empty_db_dsn, secrets.token_hex(3))
    world = Chaos(roles.test_dsn, tmp_path, side_dsn=roles.test_dsn, schema="orchwf")
    try:
        roles.install()
        prepare(roles.test_dsn, schema="orchwf")
        yield roles, world
    finally:
        world.close()
        roles.remove()
