"""The interface every benchmarked system implements."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg

from ..common import Proc, percentile, table_stats, vacuum_analyze


class System:
    """One system under benchmark, set up in its own fresh database.

    ``concurrency`` is the one knob the drain compares: orchwf's ``--concurrency``,
    pgqueuer's ``batch_size``, procrastinate's ``concurrency``; ``None`` runs the system
    at its own default (no flag, no argument).

    ``runtime_tables``: the tables a running system churns (queue, claims, live state);
    they must stay bounded in a soak. ``history_tables``: where finished work stays
    until retention removes it. Both are properties of the system, not of the harness.
    """

    name = "?"
    knob = "concurrency"  # what ``concurrency`` is called in this system
    runtime_tables: tuple[str, ...] = ()
    history_tables: tuple[str, ...] = ()

    def __init__(self, concurrency: int | None = None, workers: int = 2) -> None:
        self.concurrency = concurrency
        self.workers = workers
        self.dsn = ""
        self.conn: Any = None
        self.settings: dict[str, str] = {}

    # -- description ------------------------------------------------------------------------

    def default_concurrency(self) -> int | None:
        """The system's own default for ``knob`` (read from its code), if known."""
        return None

    def knob_label(self) -> str:
        if self.concurrency is not None:
            return f"{self.knob}={self.concurrency}"
        default = self.default_concurrency()
        return f"default {self.knob} ({default if default is not None else '?'})"

    # -- setup ------------------------------------------------------------------------------

    def setup(self, server_dsn: str, dbname: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    # -- enqueue ----------------------------------------------------------------------------

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

    def web_enqueue(self, n: int) -> float:
        """Enqueue ``n`` jobs as a web handler does: each its own transaction on a
        connection taken from a pool and given back; return the seconds it took."""
        raise NotImplementedError

    # -- workers ----------------------------------------------------------------------------

    def launch(self, logdir: Path) -> Proc:
        """Start the worker process(es) and return at once (no waiting for readiness)."""
        raise NotImplementedError

    def wait_ready(self, proc: Proc) -> None:
        """Wait until the launched workers are connected and listening."""
        raise NotImplementedError

    def start_workers(self, logdir: Path) -> Proc:
        proc = self.launch(logdir)
        try:
            self.wait_ready(proc)
        except BaseException:
            proc.stop()
            raise
        return proc

    def process_roles(self, proc: Proc) -> dict[str, list[int]]:
        raise NotImplementedError

    # -- observation ------------------------------------------------------------------------

    def remaining(self) -> int:
        """Jobs not finished yet (queued or running)."""
        raise NotImplementedError

    def backlog(self) -> int:
        """Jobs ready to run that no worker has taken yet."""
        raise NotImplementedError

    def failed(self) -> int:
        return 0

    def first_start(self, since: float, proc: Proc | None = None) -> float:
        """Wall time the first job started at or after ``since`` (after the workers stopped)."""
        raise NotImplementedError

    def last_completion(self, since: float) -> float:
        """Wall time of the last job completion recorded at or after ``since``."""
        raise NotImplementedError

    def completions_per_second(self, since: float, seconds: int) -> list[int]:
        """Jobs completed in each second [since + i, since + i + 1) for i < ``seconds``."""
        raise NotImplementedError

    def start_times(self, ids: list[Any], proc: Proc | None = None) -> dict[str, float]:
        raise NotImplementedError

    def queue_waits(self, t0: float, bucket: float, samples: list[tuple[list[Any], float]],
                    proc: Proc | None = None) -> list[dict[str, float]]:
        """The queue wait (ready -> started) of the jobs that became ready at or after
        ``t0``, per ``bucket`` seconds: [{bucket, n, p50, p99}] (ms). This default uses
        the sampled batches (ids, commit time) and the start times the jobs recorded;
        systems that record both times in the database compute it there, for every job."""
        per_bucket: dict[int, list[float]] = {}
        for ids, t_commit in samples:
            if t_commit < t0:
                continue
            starts = self.start_times(ids, proc)
            for k in ids:
                if str(k) in starts:
                    per_bucket.setdefault(int((t_commit - t0) // bucket), []).append((starts[str(k)] - t_commit) * 1e3)
        return [{"bucket": b, "n": len(v), "p50": percentile(v, 50), "p99": percentile(v, 99)}
                for b, v in sorted(per_bucket.items())]

    def tables(self) -> list[str]:
        """Runtime and history tables, each once."""
        return list(dict.fromkeys([*self.runtime_tables, *self.history_tables]))

    def table_stats(self) -> dict[str, dict[str, int]]:
        return table_stats(self.dsn, self.tables())

    def housekeeping(self) -> float:
        """VACUUM (ANALYZE) of every table of the system, then a CHECKPOINT (so that the
        drain that follows does not pay for the writes before it: a seed's gigabytes, the
        vacuum's freezing); return the seconds it took."""
        t0 = time.perf_counter()
        vacuum_analyze(self.dsn, self.tables())
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
        return time.perf_counter() - t0

    def seed_history(self, n: int) -> float:
        """Put ``n`` finished jobs into the history tables; return the seconds it took."""
        raise NotImplementedError(f"{self.name} has no seed_history")
