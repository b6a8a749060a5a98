from __future__ import annotations

from collections.abc import Iterator

import pytest

from orchwf import InMemoryStateManager, Orchestrator


@pytest.fixture
def sm() -> InMemoryStateManager:
    return InMemoryStateManager()


@pytest.fixture
def orch(sm: InMemoryStateManager) -> Iterator[Orchestrator]:
    o = Orchestrator(sm, async_workers=4)
    yield o
    o.shutdown(wait=True)
