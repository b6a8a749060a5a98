"""What autovacuum did during a run: its runs parsed from the server log (own cluster),
or counted from ``pg_stat_user_tables`` (a ``--dsn`` server, whose log we cannot read);
and, as an explicit opt-in for servers running with ``autovacuum = off``, an emulation."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from .common import one, rows

# PostgreSQL 15, log_line_prefix '%m [%p] ':
#   2026-12-02 18:42:37.123 UTC [123] LOG:  automatic vacuum of table "db.public.t": index scans: 1
#   ...
#   	system usage: CPU: user: 0.01 s, system: 0.00 s, elapsed: 0.05 s
_HEADER = re.compile(
    r'^(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) \S+ \[\d+\] LOG:  automatic (?:aggressive )?'
    r'vacuum (?:to prevent wraparound )?of table "(?P<db>[^".]+)\.(?P<schema>[^".]+)\.(?P<table>[^"]+)"')
_ELAPSED = re.compile(r"elapsed: (?P<s>[0-9.]+) s")


@dataclass
class VacuumRun:
    at: float  # epoch seconds (the log line's time: when the run ended)
    database: str
    table: str
    elapsed: float

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at, "database": self.database, "table": self.table, "elapsed": self.elapsed}


def parse_log(text: str) -> list[VacuumRun]:
    """Every ``automatic vacuum of table`` entry of a server log, with its elapsed time."""
    runs: list[VacuumRun] = []
    pending: tuple[float, str, str] | None = None
    for line in text.splitlines():
        m = _HEADER.match(line)
        if m:
            ts = datetime.strptime(m["ts"], "%Y-%m-%d %H:%M:%S.%f" if "." in m["ts"] else "%Y-%m-%d %H:%M:%S")
            pending = (ts.replace(tzinfo=timezone.utc).timestamp(), m["db"], m["table"])
            continue
        if pending is not None:
            e = _ELAPSED.search(line)
            if e:
                runs.append(VacuumRun(pending[0], pending[1], pending[2], float(e["s"])))
                pending = None
            elif not line.startswith((" ", "\t")):
                pending = None  # the entry ended without an elapsed time
    return runs


class LogWatcher:
    """The autovacuum runs a server log records for one database after ``start()``."""

    def __init__(self, log_file: Path, database: str) -> None:
        self.log_file, self.database = log_file, database
        self.offset = 0

    def start(self) -> None:
        self.offset = self.log_file.stat().st_size

    def runs(self) -> list[VacuumRun]:
        with open(self.log_file, errors="replace") as f:
            f.seek(self.offset)
            text = f.read()
        return [r for r in parse_log(text) if r.database == self.database]


def autovacuum_counts(dsn: str, tables: Sequence[str]) -> dict[str, int]:
    """``pg_stat_user_tables.autovacuum_count`` of ``tables``."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        counts = rows(conn, "SELECT relname, autovacuum_count FROM pg_stat_user_tables WHERE relname = ANY(%s)",
                      (list(tables),))
    return {str(r["relname"]): int(r["autovacuum_count"]) for r in counts}


def autovacuum_setting(dsn: str) -> tuple[bool, float]:
    """(autovacuum on?, autovacuum_naptime in seconds) of the server."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = one(conn, "SELECT current_setting('autovacuum') = 'on' AS on,"
                  " (SELECT setting::float8 FROM pg_settings WHERE name = 'autovacuum_naptime') AS naptime")
    return bool(row["on"]), float(row["naptime"])


class AutovacuumEmulation:
    """For a server running with ``autovacuum = off`` (this machine's CI server), opted
    into with ``--vacuum-naptime``: VACUUM (ANALYZE) each of ``tables`` whenever its dead
    rows pass the threshold autovacuum would use (the table's reloptions, else the
    server's defaults), checked every ``naptime`` seconds, throttled by the table's
    autovacuum cost delay like the real thing."""

    def __init__(self, dsn: str, tables: Sequence[str], naptime: float) -> None:
        self.dsn, self.tables, self.naptime = dsn, list(tables), naptime
        self.stop_event = threading.Event()
        self.runs: list[VacuumRun] = []
        self.thread = threading.Thread(target=self._run, name="autovacuum-emulation", daemon=True)

    def __enter__(self) -> AutovacuumEmulation:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(60)

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            defaults: dict[str, float] = {}
            for name in ("autovacuum_vacuum_threshold", "autovacuum_vacuum_scale_factor",
                         "autovacuum_vacuum_cost_delay"):
                defaults[name] = float(one(conn, "SELECT setting::float8 AS value FROM pg_settings WHERE name = %s",
                                           (name,))["value"])
            database = conn.info.dbname
            while not self.stop_event.wait(self.naptime):
                tables = rows(
                    conn, "SELECT c.relname, s.n_live_tup AS live, s.n_dead_tup AS dead,"
                    " coalesce(c.reloptions, '{}') AS reloptions"
                    " FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid WHERE c.relname = ANY(%s)",
                    (self.tables,))
                for t in tables:
                    name, live, dead = t["relname"], t["live"], t["dead"]
                    opts = dict(o.split("=", 1) for o in t["reloptions"])
                    threshold = (float(opts.get("autovacuum_vacuum_threshold", defaults["autovacuum_vacuum_threshold"]))
                                 + float(opts.get("autovacuum_vacuum_scale_factor",
                                                  defaults["autovacuum_vacuum_scale_factor"])) * live)
                    if dead <= threshold or self.stop_event.is_set():
                        continue
                    delay = float(opts.get("autovacuum_vacuum_cost_delay", defaults["autovacuum_vacuum_cost_delay"]))
                    conn.execute(sql.SQL("SET vacuum_cost_delay = {}").format(sql.Literal(f"{delay}ms")))
                    t0 = time.monotonic()
                    conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(name)))
                    self.runs.append(VacuumRun(time.time(), database, name, time.monotonic() - t0))
