"""Scenario 10: several hosts on one database, and a fleet behind PgBouncer (transaction pooling)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from harness import PROFILE, connect, free_port, record_figures, wait_for, wait_until_done
from ledger import check_ledger
from psycopg.conninfo import conninfo_to_dict, make_conninfo

pytestmark = [pytest.mark.slow, pytest.mark.timeout(PROFILE.timeout)]


def _workers_by_host(dsn: str) -> dict[str, set[int]]:
    with connect(dsn) as conn:
        rows = conn.execute("SELECT host, pid FROM orchwf_workers WHERE role = 'worker'").fetchall()
    out: dict[str, set[int]] = {}
    for host, pid in rows:
        out.setdefault(host, set()).add(pid)
    return out


def _run_two_hosts(chaos, n: int, b_dsn: str | None, b_args: tuple[str, ...], scenario: str,
                   extra: dict | None = None) -> None:
    ids = chaos.enqueue("dag5", n, {"sleep": 0.01})
    a = chaos.start("--workers", "2", "--concurrency", "4", "--hostname", "hostA", name="hostA")
    b = chaos.start("--workers", "2", "--concurrency", "4", "--hostname", "hostB", *b_args, dsn=b_dsn, name="hostB")
    seen: dict[str, set[int]] = {}

    def watch() -> None:
        for host, pids in _workers_by_host(chaos.dsn).items():
            seen.setdefault(host, set()).update(pids)

    elapsed = wait_until_done(chaos.dsn, ids, timeout=PROFILE.timeout - 60, daemons=[a, b], during=watch)
    assert a.alive() and b.alive()
    with connect(chaos.dsn) as conn:
        per_pid = dict(conn.execute("SELECT pid, count(*) FROM orchwf_chaos_exec GROUP BY pid").fetchall())
    ran_by = {host: sum(per_pid.get(p, 0) for p in seen.get(host, ())) for host in ("hostA", "hostB")}
    a.stop()
    b.stop()
    led = check_ledger(chaos.dsn, ids)  # includes: no step ran twice at once
    assert led.instance_status == {"completed": n}
    assert led.max_executions_per_step == 1, "a step was claimed twice without any crash"
    assert ran_by["hostA"] and ran_by["hostB"], f"both hosts must have worked: {ran_by}"
    record_figures(scenario, {"workflows": n, "seconds": round(elapsed, 1),
                              "executions_by_host": ran_by,
                              **(extra or {}), **led.figures()})


def test_two_hosts_share_one_database(chaos) -> None:
    """10a. Two supervisors with distinct identities (hostA, hostB), one database."""
    _run_two_hosts(chaos, PROFILE.fleet_workflows, None, (), "10a two hosts")


# --------------------------------------------------------------------------- PgBouncer


def _pgbouncer_binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.path.exists(p)), None)


@pytest.fixture
def pgbouncer(chaos_db: str) -> Iterator[tuple[str, str]]:
    """PgBouncer in transaction-pooling mode in front of the test's server, on a free port.
    Yields (DSN through PgBouncer, DSN of its admin console)."""
    binary = _pgbouncer_binary()
    if binary is None:
        pytest.skip("pgbouncer is not installed (Debian: apt-get install pgbouncer; .ci/run installs it)")
    server = conninfo_to_dict(chaos_db)
    host, port = server.get("host") or "127.0.0.1", int(server.get("port") or 5432)
    if host.startswith("/"):
        pytest.skip(f"the test server listens on a Unix socket ({host}); PgBouncer needs TCP here")
    user = server.get("user") or "postgres"
    listen = free_port()
    work = Path(tempfile.mkdtemp(prefix="orchwf-chaos-pgbouncer-"))
    work.chmod(0o755)  # PgBouncer refuses to run as root: it drops to an unprivileged user
    (work / "users.txt").write_text(f'"{user}" ""\n')
    ini = work / "pgbouncer.ini"
    ini.write_text(
        "[databases]\n"
        f"* = host={host} port={port}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {listen}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {work / 'users.txt'}\n"
        f"admin_users = {user}\n"
        "pool_mode = transaction\nmax_client_conn = 500\ndefault_pool_size = 12\n"
        "server_reset_query =\nignore_startup_parameters = extra_float_digits,options\n"
        f"logfile = {work / 'pgbouncer.log'}\npidfile = {work / 'pgbouncer.pid'}\n"
    )
    argv = [binary, str(ini)]
    if os.geteuid() == 0:
        import pwd

        run_as = "postgres" if _user_exists("postgres") else "nobody"
        entry = pwd.getpwnam(run_as)
        os.chown(work, entry.pw_uid, entry.pw_gid)  # its log and pid files
        argv = [binary, "-u", run_as, str(ini)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    through = make_conninfo(chaos_db, host="127.0.0.1", port=str(listen))
    admin = make_conninfo(through, dbname="pgbouncer")
    try:
        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"pgbouncer exited: {proc.stdout.read().decode(errors='replace') if proc.stdout else ''}"
                                     f"\n{(work / 'pgbouncer.log').read_text(errors='replace') if (work / 'pgbouncer.log').exists() else ''}")
            try:
                with psycopg.connect(through, connect_timeout=2, prepare_threshold=None) as c:
                    c.execute("SELECT 1")
                return True
            except psycopg.OperationalError:
                return False

        wait_for(up, timeout=15, what="pgbouncer to accept connections", poll=0.1)
        yield through, admin
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _bouncer_transactions(admin: str) -> int:
    with psycopg.connect(admin, autocommit=True, prepare_threshold=None) as conn:
        cur = conn.execute("SHOW STATS")
        cols = [c.name for c in cur.description]
        total = 0
        for row in cur.fetchall():
            rec = dict(zip(cols, row, strict=True))
            total += int(rec.get("total_xact_count") or 0)
    return total


def test_fleet_behind_pgbouncer_transaction_pooling(chaos, pgbouncer) -> None:
    """10b. hostA connects directly (with LISTEN); hostB's whole fleet goes through PgBouncer in
    transaction-pooling mode with --no-listen. Same database, the same ledger."""
    through, admin = pgbouncer
    before = _bouncer_transactions(admin)
    t0 = time.monotonic()
    _run_two_hosts(chaos, PROFILE.fleet_workflows, through, ("--no-listen", "--poll-interval", "0.2"),
                   "10b PgBouncer (transaction pooling)")
    carried = _bouncer_transactions(admin) - before
    assert carried > 100, f"PgBouncer carried only {carried} transactions"
    record_figures("10b PgBouncer traffic", {"transactions_through_pgbouncer": carried,
                                             "seconds": round(time.monotonic() - t0, 1)})
