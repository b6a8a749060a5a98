"""The interface every benchmarked system implements."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..common import Proc, table_stats


class System:
    name = "?"
    hot_tables: list[str] = []

    def __init__(self) -> None:
        self.dsn = ""
        self.conn: Any = None
        self.settings: dict[str, str] = {}

    def setup(self, server_dsn: str, dbname: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def enqueue_batch(self, n: int, batch: int = 1000) -> float:
        """Enqueue ``n`` jobs in batches; return the seconds it took."""
        raise NotImplementedError

    def load(self, n: int, batch: int = 1000) -> float:
        """Enqueue ``n`` jobs in ONE transaction (with ANALYZE), so that running workers
        see them all at once; return the seconds it took."""
        raise NotImplementedError

    def enqueue_one(self) -> tuple[Any, float]:
        """Enqueue one job in its own transaction; return (id, wall time after commit)."""
        raise NotImplementedError

    def enqueue_timed_batch(self, k: int) -> tuple[list[Any], float]:
        raise NotImplementedError

    def start_workers(self, logdir: Path) -> Proc:
        raise NotImplementedError

    def process_roles(self, proc: Proc) -> dict[str, list[int]]:
        raise NotImplementedError

    def remaining(self) -> int:
        raise NotImplementedError

    def failed(self) -> int:
        return 0

    def drain_window(self, proc: Proc | None = None) -> tuple[float, float]:
        raise NotImplementedError

    def start_times(self, ids: list[Any], proc: Proc | None = None) -> dict[str, float]:
        raise NotImplementedError

    def table_stats(self) -> dict[str, dict[str, int]]:
        return table_stats(self.dsn, self.hot_tables)
