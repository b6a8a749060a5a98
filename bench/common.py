"""Shared helpers: databases, processes, clocks, statistics, memory."""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
ROOT = Path(__file__).resolve().parent.parent
WORKERS = 2  # worker processes, the same for every system


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- databases


def rows(conn: psycopg.Connection[Any], query: str, params: Any = None) -> list[dict[str, Any]]:
    """The rows of ``query``, each a dict by column name."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params).fetchall()  # type: ignore[arg-type]


def one(conn: psycopg.Connection[Any], query: str, params: Any = None) -> dict[str, Any]:
    """The single row of ``query``, by column name."""
    result = rows(conn, query, params)
    if len(result) != 1:
        raise RuntimeError(f"expected one row, got {len(result)}: {query}")
    return result[0]


def dsn_for(server_dsn: str, dbname: str) -> str:
    return make_conninfo(server_dsn, dbname=dbname)


def fresh_database(server_dsn: str, name: str) -> str:
    """Drop and create ``name``; return its DSN."""
    drop_database(server_dsn, name)
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    return dsn_for(server_dsn, name)


def drop_database(server_dsn: str, name: str) -> None:
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


SERVER_SETTINGS = ("shared_buffers", "synchronous_commit", "fsync", "wal_level", "max_connections", "work_mem",
                   "maintenance_work_mem", "checkpoint_timeout", "max_wal_size", "autovacuum",
                   "autovacuum_naptime", "autovacuum_vacuum_cost_limit", "autovacuum_max_workers")


def server_info(server_dsn: str) -> dict[str, str]:
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        settings = rows(conn, "SELECT name, current_setting(name) AS value FROM unnest(%s::text[]) AS name",
                        (list(SERVER_SETTINGS),))
        info = {"version": str(one(conn, "SELECT version() AS version")["version"])}
    info.update({str(r["name"]): str(r["value"]) for r in settings})
    return info


def sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def host_settings() -> dict[str, str]:
    """The host's page-cache writeback settings (bench/cluster.py HOST_SETTINGS)."""
    out = {}
    for name in ("vm.dirty_background_bytes", "vm.dirty_background_ratio", "vm.dirty_expire_centisecs"):
        with contextlib.suppress(OSError):
            out[name] = sysctl_path(name).read_text().strip()
    return out


def python_loop_ns() -> float:
    """Nanoseconds per iteration of a plain Python loop (median of 5): how fast this
    machine's cores are while the run starts. The machines these figures come from are
    shared virtual machines whose speed varies by day and hour; this tells a slow machine
    from a slow orchwf when two runs are compared."""
    times = []
    for _ in range(5):
        started = time.perf_counter()
        total = 0
        for i in range(1_000_000):
            total += i
        times.append(time.perf_counter() - started)
    return sorted(times)[2] * 1000.0


def machine_info() -> dict[str, str]:
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "memory": mem,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "python_loop": f"{python_loop_ns():.0f} ns/iteration",
        "page_cache": ", ".join(f"{k}={v}" for k, v in host_settings().items()),
    }


def table_stats(dsn: str, tables: Sequence[str]) -> dict[str, dict[str, int]]:
    """Per table of ``tables`` (missing ones are skipped): live and dead tuples, sizes
    (``total``: heap + TOAST + indexes, ``pg_total_relation_size``; ``heap``:
    ``pg_relation_size``; ``indexes``: ``pg_indexes_size``), updates, HOT updates and
    autovacuum runs."""
    out: dict[str, dict[str, int]] = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        stats = rows(
            conn,
            # a partitioned table is the sum of its partitions
            "SELECT coalesce(p.relname, s.relname) AS relname, sum(s.n_live_tup) AS live, sum(s.n_dead_tup) AS dead,"
            " sum(pg_total_relation_size(s.relid)) AS total_bytes, sum(pg_relation_size(s.relid)) AS heap_bytes,"
            " sum(pg_indexes_size(s.relid)) AS index_bytes, sum(s.n_tup_upd) AS updates,"
            " sum(s.n_tup_hot_upd) AS hot_updates, sum(s.autovacuum_count) AS autovacuums"
            " FROM pg_stat_user_tables s LEFT JOIN pg_inherits i ON i.inhrelid = s.relid"
            " LEFT JOIN pg_class p ON p.oid = i.inhparent"
            " WHERE coalesce(p.relname, s.relname) = ANY(%s) GROUP BY 1", (list(tables),))
    for row in stats:
        name = row.pop("relname")
        out[name] = {k: int(v) for k, v in row.items()}
    return out


def wal_lsn(conn: psycopg.Connection[Any]) -> int:
    """The server's current WAL position, in bytes since its start (cluster-wide)."""
    return int(one(conn, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint AS lsn")["lsn"])


def vacuum_analyze(dsn: str, tables: Sequence[str]) -> None:
    """``VACUUM (ANALYZE)`` of ``tables``: the same housekeeping before every measured drain."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in tables:
            conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(name)))


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    """A worker process group started by the harness."""

    name: str
    popen: subprocess.Popen[bytes]
    logfile: Path
    extra: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def all(self) -> list[subprocess.Popen[bytes]]:
        return [self.popen, *self.extra]

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.all)

    def stop(self, timeout: float = 30.0) -> None:
        for p in self.all:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in self.all:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)

    def tail(self, n: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-n:])
        return ""


def spawn(args: list[str], logfile: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    logfile.parent.mkdir(parents=True, exist_ok=True)
    fh = open(logfile, "ab")  # noqa: SIM115 - owned by the child
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [full_env.get("PYTHONPATH"), str(ROOT)]))
    full_env.pop("NOTIFY_SOCKET", None)
    if env:
        full_env.update(env)
    try:
        return subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=full_env,
                                start_new_session=True, cwd=str(logfile.parent))
    finally:
        fh.close()


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(entry))
    return sorted(out)


def memory_of(pid: int) -> dict[str, float]:
    """RSS and PSS (proportional: shared pages split among sharers) in MiB."""
    out = {"rss_mib": float("nan"), "pss_mib": float("nan")}
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                out["rss_mib"] = int(line.split()[1]) / 1024
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                out["pss_mib"] = int(line.split()[1]) / 1024
    return out


def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of a process (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def backend_pids(dsn: str) -> list[int]:
    dbname = conninfo_to_dict(dsn).get("dbname")
    with psycopg.connect(dsn, autocommit=True) as conn:
        return [int(r["pid"]) for r in rows(
            conn, "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,))]


def wait_until(pred: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what or pred}")
        time.sleep(interval)


@contextlib.contextmanager
def stopping(proc: Proc) -> Iterator[Proc]:
    try:
        yield proc
    finally:
        proc.stop()


def steady_ticks(rate: float, count: int) -> Iterator[int]:
    """Yield 0..count-1 at a steady ``rate`` per second (absolute schedule, no drift)."""
    t0 = time.perf_counter()
    for i in range(count):
        target = t0 + i / rate
        delay = target - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        yield i
