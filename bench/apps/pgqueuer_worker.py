"""One pgqueuer worker process for the benchmark (``python -m bench.apps.pgqueuer_worker``).

A no-op entrypoint that records when each job started (wall clock, keyed by job id);
the map is written to ``--dump`` as JSON when the process is stopped with SIGTERM.
Uses pgqueuer's public API only: QueueManager(Queries(AsyncpgDriver(connection))).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time
from typing import Any

import asyncpg
from pgqueuer import AsyncpgDriver, Queries, QueueManager
from pgqueuer.models import Job


async def main(dsn: str, batch_size: int | None, dump: str) -> None:
    conn = await asyncpg.connect(dsn)
    qm = QueueManager(Queries(AsyncpgDriver(conn)))
    started: dict[int, float] = {}

    @qm.entrypoint("noop")
    async def noop(job: Job) -> None:
        started[int(job.id)] = time.time()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, qm.shutdown.set)
    try:
        # Without --batch-size: QueueManager.run's own defaults, nothing passed.
        options: dict[str, Any] = {} if batch_size is None else {"batch_size": batch_size}
        await qm.run(**options)
    finally:
        with open(dump, "w") as f:
            json.dump(started, f)
        await conn.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--dump", required=True)
    args = parser.parse_args()
    asyncio.run(main(args.dsn, args.batch_size, args.dump))
