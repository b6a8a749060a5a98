"""``python -m bench sqlcost``: what the SQL hot path costs, in instructions.

CPU time on a shared machine moves by 10-20% between two runs of the same code, which
hides the 2-5% a single change to the SQL is worth. Instruction counts do not move:
this starts a throwaway PostgreSQL server under ``valgrind --tool=callgrind`` (in a
temporary directory, on its own port), loads N workflows (single-step, or the DAG)
through one connection, then claims and finishes their steps in batches of B on a
fresh connection: the daemon's loop without the daemon (``orchwf_claim_steps`` once,
then ``orchwf_finish_and_claim`` until the queue is empty). The figure is that
backend's instruction count divided by the number of steps: the same to 0.1% from run
to run, whatever else the machine does.

``--workflow bench_keyed_noop`` gives every step a concurrency key as ``python -m bench
keys`` does (limit 5, 20 steps per key, so 15 of each key's 20 wait for a slot at first;
one key per 20 workflows).

``--enqueue`` counts the instructions of ``enqueue_many`` instead, per instance.
``--setup-sql`` runs after the migrations (before the load): an ablation, e.g.
``--setup-sql "DROP INDEX orchwf_wi_status_idx"``, or a changed function to compare.
Needs valgrind and the server binaries (``--pg-bin``, default: the newest
/usr/lib/postgresql/*/bin). 4,000 single-step workflows take about 30 s.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from .common import log
from .systems.orchwf_sys import CLAIM_SQL as CLAIM
from .systems.orchwf_sys import FINISH_AND_CLAIM_SQL as FINISH_AND_CLAIM

KEYED = "bench_keyed_noop"
STEPS_PER_KEY = 20  # bench keys: 20,000 steps on 1,000 keys


def default_pg_bin() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(p.split("/")[4]))
    return str(Path(found[-1]).parent) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def callgrind_server(pg_bin: str) -> Iterator[tuple[str, Path]]:
    """A fresh cluster under callgrind; yields (admin DSN, directory of callgrind files).
    As root, the server runs as the ``postgres`` user (initdb refuses root), and its
    directory is outside any home directory."""
    work = Path(tempfile.mkdtemp(prefix="orchwf-sqlcost-", dir="/var/tmp"))
    user = None
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(work, user.pw_uid, user.pw_gid)

    def as_user(args: list[str], **kw: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(args, user=user.pw_uid if user else None,  # type: ignore[call-overload]
                                group=user.pw_gid if user else None, **kw)

    data, cg = work / "data", work / "cg"
    cg.mkdir()
    if user:
        os.chown(cg, user.pw_uid, user.pw_gid)
    if as_user([f"{pg_bin}/initdb", "-D", str(data), "-A", "trust", "-U", "postgres"],
               stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT).wait() != 0:
        raise SystemExit("initdb failed")
    port = _free_port()
    server = as_user(["valgrind", "--tool=callgrind", f"--callgrind-out-file={cg}/cg.%p",
                      f"{pg_bin}/postgres", "-D", str(data), "-p", str(port), "-k", str(work),
                      "-c", "listen_addresses=127.0.0.1", "-c", "autovacuum=off", "-c", "fsync=off"],
                     stdout=open(work / "server.log", "wb"), stderr=subprocess.STDOUT)
    dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    try:
        deadline = time.monotonic() + 120
        while True:  # valgrind makes start-up slow
            try:
                psycopg.connect(dsn, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the callgrind server did not start; see {work / 'server.log'}") from None
                time.sleep(0.5)
        yield dsn, cg
    finally:
        server.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(60)
        if server.poll() is None:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)


def _instructions(cg: Path, pid: int, keep: str = "") -> int:
    path = cg / f"cg.{pid}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # written when the backend exits
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith(("totals:", "summary:")):
                    if keep:  # for callgrind_annotate --inclusive=yes
                        shutil.copy(path, keep)
                    return int(line.split()[1])
        time.sleep(0.2)
    raise SystemExit(f"no callgrind totals for backend {pid}")


def _fresh_database(admin_dsn: str, setup_sql: str) -> str:
    """A migrated database with the bench app's workflows registered; its DSN."""
    from orchwf.client import register_workflow
    from orchwf.db.migrations import migrate

    from .apps import orchwf_keys_app

    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS sqlcost")
        conn.execute("CREATE DATABASE sqlcost")
    dsn = admin_dsn.rsplit("/", 1)[0] + "/sqlcost"
    migrate(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        if setup_sql:
            conn.execute(setup_sql)  # the operator's own ablation SQL (a CLI option)
        for definition in orchwf_keys_app.DEFINITIONS:  # the bench app's, and the keyed ones
            register_workflow(conn, definition)
    return dsn


def _inputs(workflow: str, start: int, n: int, instances: int) -> list[dict[str, Any]]:
    """A keyed workflow's inputs name one key per STEPS_PER_KEY workflows (as bench keys)."""
    if workflow != KEYED:
        return [{} for _ in range(n)]
    keys = max(1, instances // STEPS_PER_KEY)
    return [{"k": j % keys} for j in range(start, start + n)]


def measure(admin_dsn: str, cg: Path, instances: int, batch: int, setup_sql: str, workflow: str,
            keep: str = "") -> dict[str, float]:
    from orchwf.client import enqueue_many

    dsn = _fresh_database(admin_dsn, setup_sql)
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.transaction():
            for i in range(0, instances, 1000):
                enqueue_many(conn, workflow, _inputs(workflow, i, min(1000, instances - i), instances))
        conn.execute("ANALYZE")
    claim_args = ("sqlcost:1:1", ["default"], [workflow], batch, 30.0)
    done = calls = 0
    with psycopg.connect(dsn, autocommit=True) as conn:  # a fresh backend: only the loop is counted
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        rows = conn.execute(CLAIM, claim_args, binary=True).fetchall()
        while rows:
            n = len(rows)
            outputs = [Jsonb({"t_" + r[3]: time.time()}) for r in rows]  # as the bench app's steps return
            args = ([r[0] for r in rows], [r[4] for r in rows], ["completed"] * n, outputs, [None] * n,
                    [0] * n, [0.0] * n, [Jsonb({})] * n, *claim_args)
            out = conn.execute(FINISH_AND_CLAIM, args, binary=True).fetchall()
            done += n
            calls += 1
            rows = [(r[0], *r[2:]) for r in out if r[1] is None]
    total = _instructions(cg, pid, keep)
    return {"steps": done, "calls": calls, "instructions": total, "per_step": total / max(1, done)}


def measure_enqueue(admin_dsn: str, cg: Path, instances: int, batch: int, setup_sql: str,
                    workflow: str) -> dict[str, float]:
    """Instructions per instance of ``enqueue_many`` in batches, on a fresh connection."""
    from orchwf.client import enqueue_many

    dsn = _fresh_database(admin_dsn, setup_sql)
    calls = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        for i in range(0, instances, batch):
            with conn.transaction():
                enqueue_many(conn, workflow, _inputs(workflow, i, min(batch, instances - i), instances))
            calls += 1
    total = _instructions(cg, pid)
    return {"instances": instances, "calls": calls, "instructions": total, "per_instance": total / max(1, instances)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench sqlcost", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--instances", type=int, default=4000, help="workflows to load [4000]")
    p.add_argument("--batch", type=int, default=50,
                   help="steps per claim and per finish, or instances per enqueue call [50]")
    p.add_argument("--workflow", default="bench_noop", choices=["bench_noop", "bench_dag", KEYED])
    p.add_argument("--setup-sql", default="", help="SQL run after the migrations (an ablation)")
    p.add_argument("--enqueue", action="store_true",
                   help="measure enqueue_many instead (instructions per instance, batches of --batch)")
    p.add_argument("--pg-bin", default=default_pg_bin())
    p.add_argument("--keep", default="", metavar="FILE",
                   help="copy the measured backend's callgrind file here (the claim/finish loop only)")
    a = p.parse_args(argv)
    if not a.pg_bin or not shutil.which("valgrind"):
        print("needs valgrind and the PostgreSQL server binaries (--pg-bin)", file=sys.stderr)
        return 2
    with callgrind_server(a.pg_bin) as (dsn, cg):
        log(f"callgrind server up; {a.instances:,} x {a.workflow}, batches of {a.batch}")
        if a.enqueue:
            e = measure_enqueue(dsn, cg, a.instances, a.batch, a.setup_sql, a.workflow)
            print(f"{e['instances']:,} instances in {e['calls']} calls: {e['per_instance'] / 1000:,.1f}k"
                  f" instructions per enqueued instance ({e['instructions'] / 1e9:.2f} G in all)")
            return 0
        r = measure(dsn, cg, a.instances, a.batch, a.setup_sql, a.workflow, a.keep)
    print(f"{r['steps']:,} steps in {r['calls']} calls: {r['per_step'] / 1000:,.1f}k instructions per step "
          f"({r['instructions'] / 1e9:.2f} G in all)")
    return 0
