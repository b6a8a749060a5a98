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

import procrastinate

started: dict[int, float] = {}


def make_app(dsn: str, pool_size: int) -> procrastinate.App:
    connector = procrastinate.PsycopgConnector(conninfo=dsn, min_size=1, max_size=pool_size)
    app = procrastinate.App(connector=connector)

    @app.task(name="noop", pass_context=True)
    async def noop(context: procrastinate.JobContext, i: int = 0) -> None:
        assert context.job is not None
        started[int(context.job.id or 0)] = time.time()

    return app


async def main(dsn: str, concurrency: int, dump: str) -> None:
    app = make_app(dsn, concurrency + 2)
    try:
        async with app.open_async():
            await app.run_worker_async(concurrency=concurrency, wait=True, install_signal_handlers=True)
    finally:
        with open(dump, "w") as f:
            json.dump(started, f)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--dump", required=True)
    args = parser.parse_args()
    asyncio.run(main(args.dsn, args.concurrency, args.dump))
