"""A throwaway PostgreSQL cluster with production settings, for the benchmark's own use.

``python -m bench`` benchmarks this cluster unless ``--dsn`` names an existing server:
the host's PostgreSQL 15 binaries (``initdb``, ``pg_ctl``), a fresh data directory, a
free port on 127.0.0.1, trust authentication for local connections, autovacuum ON and
the settings below. It is stopped and deleted at the end unless ``--keep-cluster``.

Running as root: Postgres refuses to run as root, so the cluster runs as the system
user ``orchwf-bench`` (created with ``useradd --system`` when missing, as
``orchwf.db.embedded`` does for the embedded server), and its data directory lives
under ``/var/lib/orchwf-bench`` (never inside a home directory, whose permissions are
never touched).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

from .common import host_settings, log, one, sysctl_path

RUN_AS_USER = "orchwf-bench"
BASE_DIR = Path("/var/lib/orchwf-bench")
HOST = "127.0.0.1"

# What a production server for a job system would run with on this machine (2 cores,
# 24 GiB, SSD). Every value is passed to the server with -c at start.
SETTINGS: dict[str, str] = {
    # Memory. A quarter of RAM is the usual start; 1 GB here keeps the benchmark's hot
    # tables and indexes (hundreds of MB after a soak) in Postgres's own cache, as a
    # sized production server would, while leaving room for the workers on this machine.
    "shared_buffers": "1GB",
    # What the planner may assume the OS caches besides shared_buffers (planner only).
    "effective_cache_size": "8GB",
    # Per sort/hash node; the queue queries sort little, 16 MB covers the report queries.
    "work_mem": "16MB",
    # VACUUM and CREATE INDEX: autovacuum remembers more dead tuples per pass with more
    # (fewer index scans per vacuum of a large table).
    "maintenance_work_mem": "512MB",
    "autovacuum_work_mem": "512MB",
    # SSD storage: random reads cost nearly what sequential ones do.
    "random_page_cost": "1.1",
    "effective_io_concurrency": "200",
    # WAL and checkpoints. Defaults (1 GB, 5 min) checkpoint every few minutes under a
    # queue's write rate, and each checkpoint makes the next write of every page a
    # full-page image; production servers space them out. min_wal_size = max_wal_size:
    # the segments of a checkpoint interval are kept and recycled, not deleted when the
    # load pauses and created again (zero-filled, 16 MB at a time, while commits wait on
    # the WAL write lock) when it returns. See also WARM_WAL below.
    "max_wal_size": "4GB",
    "min_wal_size": "4GB",
    "checkpoint_timeout": "15min",
    "checkpoint_completion_target": "0.9",
    "wal_buffers": "16MB",
    # Durability as in production: every commit waits for its WAL flush; fsync on.
    "synchronous_commit": "on",
    "fsync": "on",
    "full_page_writes": "on",
    "wal_level": "replica",
    # Connections: the systems' worker pools (procrastinate at concurrency 50 opens up
    # to 2 x 25), the harness's own and the web-enqueue pools.
    "max_connections": "200",
    # Autovacuum ON, as every production server runs it. A 10 s naptime (default 1 min)
    # lets it keep up with tables that churn thousands of rows per second; a raised cost
    # limit (default 200) lets each run finish instead of sleeping most of the time;
    # 3 workers (the default) so that one long vacuum of a large table does not hold up
    # the small queue tables.
    "autovacuum": "on",
    "autovacuum_naptime": "10s",
    "autovacuum_vacuum_cost_limit": "2000",
    "autovacuum_vacuum_cost_delay": "2ms",
    "autovacuum_max_workers": "3",
    # Every autovacuum run is logged with its elapsed time: the soak parses these lines.
    "log_autovacuum_min_duration": "0",
    "log_line_prefix": "%m [%p] ",
    "log_timezone": "UTC",
    # I/O timings in pg_stat_* and in the autovacuum log lines.
    "track_io_timing": "on",
    # Checkpoints in the log, to tell a checkpoint from a vacuum when latency spikes.
    "log_checkpoints": "on",
    # Bind to loopback only; the socket directory is the cluster's own.
    "listen_addresses": HOST,
}


# The host's page cache, as a database host at this write rate runs it (docs/operations.md,
# "The host's page cache"). The kernel's default starts background writeback at 10% of
# RAM (2.4 GB here) and otherwise writes a file's dirty pages 30 s after it was first
# dirtied: history grows by ~7 MB/s at 4,000 workflows/s through writes that no
# *_flush_after covers, so ~200 MB was written in one burst every ~31 s, and the commits'
# WAL flushes queued behind it (p99 queue wait 250-400 ms in those seconds). At 32 MB
# the kernel writes a few seconds' worth at a time. Applied by Cluster.start when we may
# (root), restored by Cluster.stop.
HOST_SETTINGS: dict[str, str] = {"vm.dirty_background_bytes": str(32 * 1024 * 1024)}


def _apply_host_settings() -> dict[str, str]:
    """Set HOST_SETTINGS; return what restores the host (empty when we may not set them).
    Setting a ``*_bytes`` zeroes its ``*_ratio`` twin and the other way round, so the one
    that was in force is what gets written back."""
    if os.geteuid() != 0:
        log(f"host: page-cache writeback left as it is (not root): {host_settings()}")
        return {}
    restore = {}
    for name, value in HOST_SETTINGS.items():
        old = sysctl_path(name).read_text().strip()
        if name.endswith("_bytes") and old == "0":
            twin = name.removesuffix("_bytes") + "_ratio"
            restore[twin] = sysctl_path(twin).read_text().strip()
        else:
            restore[name] = old
        try:
            sysctl_path(name).write_text(value)
        except OSError as exc:  # a container with /proc/sys read-only
            log(f"host: could not set {name} ({exc}); left as it is: {host_settings()}")
            return {}
    log(f"host: page-cache writeback for the run: {host_settings()}")
    return restore


def _restore_host_settings(restore: dict[str, str]) -> None:
    for name, value in restore.items():
        with contextlib.suppress(OSError):
            sysctl_path(name).write_text(value)


# A server that has run a queue for a while has its WAL segments made and recycles them;
# a fresh cluster makes each one (16 MB of zeros written while commits wait) until its
# first checkpoints: the soak's p99 spiked for ~35 s around the first one (docs/
# benchmarks.md, "The first checkpoint of a fresh cluster"). Cluster.start writes and
# checkpoints this much WAL first, so a run measures the steady state a user runs in.
WARM_WAL_SEGMENTS = 256  # x 16 MB = max_wal_size


def default_pg_bin() -> str:
    """The host's PostgreSQL 15 binaries, else the newest installed."""
    if Path("/usr/lib/postgresql/15/bin/pg_ctl").exists():
        return "/usr/lib/postgresql/15/bin"
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise SystemExit("no PostgreSQL server binaries in /usr/lib/postgresql/*/bin "
                         "(apt-get install postgresql-15), or pass --dsn")
    return str(Path(found[-1]).parent)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _service_user() -> pwd.struct_passwd | None:
    """``None`` (ourselves) unless we are root; as root, the system user RUN_AS_USER."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(RUN_AS_USER)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    subprocess.run([useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                    "--shell", "/usr/sbin/nologin", RUN_AS_USER], capture_output=True, text=True, timeout=60)
    try:
        return pwd.getpwnam(RUN_AS_USER)
    except KeyError:
        raise SystemExit(f"running as root, the benchmark's cluster needs a system user {RUN_AS_USER!r} "
                         "and useradd could not create it; create it, or pass --dsn") from None


class Cluster:
    """initdb + pg_ctl start of a fresh cluster; ``stop()`` stops it and deletes it."""

    def __init__(self, pg_bin: str | None = None, base_dir: Path = BASE_DIR,
                 settings: dict[str, str] | None = None, host_settings: bool = True) -> None:
        self.pg_bin = pg_bin or default_pg_bin()
        self.base_dir = base_dir
        self.settings = dict(SETTINGS if settings is None else settings)
        self.user = _service_user()
        self.workdir: Path | None = None
        self.port = 0
        self._host_restore: dict[str, str] = {}
        self._apply_host = host_settings

    @property
    def data_dir(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "data"

    @property
    def log_file(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "server.log"

    @property
    def dsn(self) -> str:
        """The admin (``postgres``) database of the cluster."""
        return f"postgresql://postgres@{HOST}:{self.port}/postgres"

    def _run(self, args: list[str]) -> subprocess.CompletedProcess[str]:
        uid = self.user.pw_uid if self.user else None
        gid = self.user.pw_gid if self.user else None
        return subprocess.run(args, user=uid, group=gid, capture_output=True, text=True, timeout=300,
                              cwd=str(self.workdir))

    def start(self) -> str:
        """Create and start the cluster; return the DSN of its ``postgres`` database."""
        self.base_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        if self._apply_host:
            self._host_restore = _apply_host_settings()
        self.workdir = Path(tempfile.mkdtemp(prefix="cluster-", dir=self.base_dir))
        if self.user is not None:
            os.chown(self.workdir, self.user.pw_uid, self.user.pw_gid)
        os.chmod(self.workdir, 0o755)  # our own directory: the harness reads the log
        init = self._run([f"{self.pg_bin}/initdb", "-D", str(self.data_dir), "-U", "postgres",
                          "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8"])
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stdout}\n{init.stderr}")
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write("\n# python -m bench (bench/cluster.py SETTINGS)\n")
            for name, value in self.settings.items():
                conf.write(f"{name} = '{value}'\n")
            conf.write(f"unix_socket_directories = '{self.workdir}'\n")
        for _attempt in range(3):
            self.port = _free_port()
            started = self._run([f"{self.pg_bin}/pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file),
                                 "-w", "-t", "60", "-o", f"-p {self.port}", "start"])
            if started.returncode == 0:
                break
            if "could not bind" not in self.log_tail():
                raise RuntimeError(f"pg_ctl start failed: {started.stdout}\n{started.stderr}\n{self.log_tail()}")
        else:
            raise RuntimeError(f"pg_ctl start failed: {self.log_tail()}")
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            version = one(conn, "SELECT current_setting('server_version') AS v")["v"]
            self._warm_wal(conn)
        log(f"own cluster: PostgreSQL {version} in {self.workdir}, port {self.port}, "
            f"running as {self.user.pw_name if self.user else 'me'}")
        return self.dsn

    def _warm_wal(self, conn: psycopg.Connection[object]) -> None:
        """Make the WAL segments a steady load cycles through (WARM_WAL_SEGMENTS), then
        checkpoint so that they are recycled from the start."""
        started = time.monotonic()
        # No checkpoint meanwhile (each would recycle the segments made so far, and the
        # next ones would reuse them instead of adding to them).
        conn.execute("ALTER SYSTEM SET max_wal_size = '64GB'")
        conn.execute("SELECT pg_reload_conf()")
        time.sleep(0.5)
        conn.execute("CREATE TABLE bench_warm_wal (n int)")
        for n in range(WARM_WAL_SEGMENTS):
            conn.execute("INSERT INTO bench_warm_wal VALUES (%s)", (n,))
            conn.execute("SELECT pg_switch_wal()")
        conn.execute("DROP TABLE bench_warm_wal")
        conn.execute("ALTER SYSTEM RESET max_wal_size")
        conn.execute("SELECT pg_reload_conf()")
        time.sleep(0.5)
        conn.execute("CHECKPOINT")  # recycles them as the segments to come, up to min_wal_size
        segments = one(conn, "SELECT count(*) AS n FROM pg_ls_waldir()")["n"]
        log(f"own cluster: WAL warmed, {segments} segments ready ({time.monotonic() - started:.1f}s)")

    def log_tail(self, n: int = 20) -> str:
        with contextlib.suppress(OSError, AssertionError):
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-n:])
        return ""

    def pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError, AssertionError):
            return int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        return None

    def stop(self, keep: bool = False) -> None:
        """Fast shutdown; delete the directory unless ``keep``; the host's settings restored."""
        _restore_host_settings(self._host_restore)
        self._host_restore = {}
        if self.workdir is None:
            return
        result = self._run([f"{self.pg_bin}/pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60",
                            "stop"])
        if result.returncode != 0:
            pid = self.pid()
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGQUIT)
                time.sleep(2)
        if keep:
            owner = (self.user or pwd.getpwuid(os.getuid())).pw_name
            log(f"own cluster kept (stopped) in {self.workdir}; start it with: "
                f"sudo -u {owner} {self.pg_bin}/pg_ctl -D {self.data_dir} -l {self.log_file} start")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)
            log(f"own cluster stopped and deleted ({self.workdir})")
        self.workdir = None


@contextlib.contextmanager
def running(pg_bin: str | None = None, keep: bool = False, base_dir: Path = BASE_DIR,
            overrides: dict[str, str] | None = None, host_settings: bool = True) -> Iterator[Cluster]:
    """A started cluster with SETTINGS, ``overrides`` replacing or adding some, and
    HOST_SETTINGS unless ``host_settings`` is false (experiments)."""
    cluster = Cluster(pg_bin, base_dir=base_dir, settings={**SETTINGS, **(overrides or {})},
                      host_settings=host_settings)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop(keep=keep)
