"""One procrastinate worker process for the benchmark
(``python -m bench.apps.procrastinate_worker``).

A no-op task that records when each job started (wall clock, keyed by job id); the
map is written to ``--dump`` as JSON when the worker stops (SIGTERM: procrastinate's
own graceful shutdown). Uses procrastinate's public API only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import procrastinate

started: dict[int, float] = {}


POOL_CAP = 25  # 2 workers x 25 connections stay within a default server's max_connections (100)


def pool_size(concurrency: int) -> int:
    """The worker's pool for ``concurrency``: one connection per job and two to spare, capped."""
    return min(concurrency + 2, POOL_CAP)


def make_app(dsn: str, max_size: int | None) -> procrastinate.App:
    """``max_size=None``: procrastinate's own default pool."""
    if max_size is None:
        connector = procrastinate.PsycopgConnector(conninfo=dsn)
    else:
        connector = procrastinate.PsycopgConnector(conninfo=dsn, min_size=1, max_size=max_size)
    app = procrastinate.App(connector=connector)

    @app.task(name="noop", pass_context=True)
    async def noop(context: procrastinate.JobContext, i: int = 0) -> None:
        assert context.job is not None
        started[int(context.job.id or 0)] = time.time()

    return app


async def main(dsn: str, concurrency: int | None, dump: str) -> None:
    """Without --concurrency: procrastinate's defaults (its concurrency, its pool)."""
    app = make_app(dsn, None if concurrency is None else pool_size(concurrency))
    options: dict[str, Any] = {} if concurrency is None else {"concurrency": concurrency}
    try:
        async with app.open_async():
            await app.run_worker_async(wait=True, install_signal_handlers=True, **options)
    finally:
        with open(dump, "w") as f:
            json.dump(started, f)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--dump", required=True)
    args = parser.parse_args()
    asyncio.run(main(args.dsn, args.concurrency, args.dump))
