"""Workflows for the concurrency-key tests. Every run appends its start and end to a
ledger file of its process (in the directory ORCHWF_TEST_KEY_LEDGER), so the intervals
show how many steps of a key ran at any instant, a killed run's start included. A file,
not a table: 40 steps at once write 3,000 lines a second, which a database round trip
each would slow down (and the test would measure the ledger)."""

from __future__ import annotations

import os
import time
import uuid

from orchwf import StepBuilder, WorkflowBuilder

LEDGER_DIR = os.environ.get("ORCHWF_TEST_KEY_LEDGER", "")
_fd: tuple[int, int] | None = None


def _ledger(*fields: object) -> None:
    """One O_APPEND file per worker process: each line is one write(2), whole."""
    global _fd
    if not LEDGER_DIR:
        return
    if _fd is None or _fd[0] != os.getpid():
        _fd = (os.getpid(), os.open(os.path.join(LEDGER_DIR, f"{os.getpid()}.log"),
                                    os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644))
    os.write(_fd[1], (" ".join(str(f) for f in fields) + "\n").encode())


def read_ledger(directory: str) -> list[tuple[str, float, float | None]]:
    """(key, started, finished or None) of every run in the directory's files."""
    runs: dict[str, list] = {}
    for name in os.listdir(directory):
        with open(os.path.join(directory, name)) as f:
            for line in f:
                kind, run, key, at = line.split()
                if kind == "start":
                    runs[run] = [key, float(at), None]
                else:
                    runs[run][2] = float(at)
    return [(k, s, f) for k, s, f in runs.values()]


def timed(ctx, data):
    """Sleeps data["ms"] (the ledger holds its interval), or until data["gate"] exists."""
    run = uuid.uuid4().hex
    _ledger("start", run, data.get("k"), time.time())
    gate = data.get("gate")
    if gate:
        while not os.path.exists(gate):
            time.sleep(0.01)
    else:
        time.sleep(float(data.get("ms", 10)) / 1000)
    _ledger("end", run, data.get("k"), time.time())
    return {}


keyed = (
    WorkflowBuilder("keyed", "One keyed step")
    .add_step(StepBuilder("work", "Work", timed).with_concurrency("k:{k}", 2).build())
    .build()
)

# A keyed step after an unkeyed one, and a third unkeyed: keys apply per step.
keyed_chain = (
    WorkflowBuilder("keyed_chain", "Keyed middle step")
    .add_step(StepBuilder("a", "A", timed).build())
    .add_step(StepBuilder("b", "B", timed).with_dependencies("a").with_concurrency("chain:{k}", 1).build())
    .add_step(StepBuilder("c", "C", timed).with_dependencies("b").build())
    .build()
)

# Workflow-level: at most one running instance per key.
keyed_instances = (
    WorkflowBuilder("keyed_instances", "One instance per key at a time")
    .with_concurrency("inst:{k}", 1)
    .add_step(StepBuilder("first", "First", timed).build())
    .add_step(StepBuilder("second", "Second", timed).with_dependencies("first").build())
    .build()
)

unkeyed = (
    WorkflowBuilder("unkeyed", "No key")
    .add_step(StepBuilder("work", "Work", timed).build())
    .build()
)
