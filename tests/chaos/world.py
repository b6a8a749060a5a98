"""The world of one chaos test: its database, its daemons, a client; and orchwf installed
the documented least-privilege way. (A module of its own, not conftest.py: several test
directories have a conftest module, and only one of them can be imported as ``conftest``.)"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import chaosapp
import psycopg
from harness import Daemon

from orchwf import Client

HERE = Path(__file__).resolve().parent


def prepare(dsn: str, schema: str = "public") -> None:
    """Side table (in public) and workflow definitions (in ``schema``) in a migrated database."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(chaosapp.SIDE_TABLE)
    with Client(dsn, schema=schema) as client:
        for definition in chaosapp.ALL:
            client.register_workflow(definition)


class Chaos:
    """One test's world: its database, its daemons, and a client."""

    def __init__(self, dsn: str, log_dir: Path, side_dsn: str | None = None, schema: str = "public") -> None:
        self.dsn = dsn  # the test's own (superuser) DSN; with a schema, its search_path
        self.side_dsn = side_dsn or dsn
        self.schema = schema
        self.log_dir = log_dir
        self.daemons: list[Daemon] = []
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.dsn, schema=self.schema)
        return self._client

    def start(self, *args: str, dsn: str | None = None, metrics: bool = False, name: str = "daemon",
              env: dict[str, str] | None = None) -> Daemon:
        log_path = self.log_dir / f"{name}-{len(self.daemons)}.log"
        if self.schema != "public":
            args = ("--schema", self.schema, *args)
        d = Daemon(self.dsn if dsn is None else dsn, args, side_dsn=self.side_dsn, log_path=log_path, metrics=metrics, env=env)
        self.daemons.append(d)
        return d

    def enqueue(self, workflow_id: str, n: int, input: dict[str, Any] | None = None, **options: Any) -> list[str]:
        ids: list[str] = []
        for start in range(0, n, 500):
            ids += self.client.enqueue_many(workflow_id, [dict(input or {}) for _ in range(min(500, n - start))],
                                            **options)
        return ids

    def close(self) -> None:
        for d in self.daemons:
            if d.alive():
                try:
                    d.stop(signal.SIGTERM, timeout=15)
                except AssertionError:
                    pass
            d.close()  # nothing of a test's daemons survives it
        if self._client is not None:
            self._client.close()
            self._client = None


# --------------------------------------------------------------------------- roles

DOCS = HERE.parent.parent / "docs" / "reliability.md"


def documented_grants() -> list[str]:
    """The SQL statements of the runtime-grants block of docs/reliability.md."""
    text = DOCS.read_text()
    block = text.split("<!-- runtime-grants:begin -->", 1)[1].split("<!-- runtime-grants:end -->", 1)[0]
    body = "\n".join(line for line in block.splitlines()
                     if not line.strip().startswith(("```", "--")))
    return [stmt.strip() for stmt in body.split(";") if stmt.strip()]


class LeastPrivilege:
    """orchwf installed the documented way: a migrator role owns schema ``orchwf`` and
    migrated it; a runtime role got exactly the documented grants."""

    def __init__(self, server_dsn_db: str, token: str) -> None:
        import re

        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        self.migrator = f"orchwf_migrator_{token}"
        self.runtime = f"orchwf_runtime_{token}"
        self.admin_dsn = server_dsn_db
        self.dbname = conninfo_to_dict(server_dsn_db)["dbname"]
        statements = [re.sub(r"\borchwf_migrator\b", self.migrator,
                             re.sub(r"\borchwf_runtime\b", self.runtime, s)) for s in documented_grants()]
        self.setup = [s for s in statements if s.upper().startswith("CREATE ")]
        self.grants = [s for s in statements if not s.upper().startswith("CREATE ")]
        self.migrator_dsn = make_conninfo(server_dsn_db, user=self.migrator)
        self.runtime_dsn = make_conninfo(server_dsn_db, user=self.runtime)
        # the test's own view: superuser, orchwf's schema first, the side table in public
        self.test_dsn = make_conninfo(server_dsn_db, options="-c search_path=orchwf,public")

    def install(self) -> None:
        from orchwf.db.migrations import migrate

        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            for stmt in self.setup:
                conn.execute(stmt)  # the documented statements, verbatim but for role names
        migrate(self.migrator_dsn, schema="orchwf")
        with psycopg.connect(self.migrator_dsn, autocommit=True) as conn:
            for stmt in self.grants:
                conn.execute(stmt)

    def remove(self) -> None:
        from psycopg import sql

        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ANY(%s)",
                         ([self.migrator, self.runtime],))
            for role in (self.runtime, self.migrator):
                if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                    conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(role)))
                    conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
