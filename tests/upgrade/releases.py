"""Earlier releases of orchwf, as shipped, for the upgrade tests.

``release-1.tar.gz`` holds the SQL of the first release (migrations 001-003, commit
2a5776b); ``release-2.tar.gz`` the package and SQL of release 2 (001-004, commit
a4b8e38); ``release-3.tar.gz`` those of the previous release (001-006 and sql/api,
commit 9bfbb0a). The workers of releases 2 and 3 must keep running beside the new ones
during a rolling upgrade. They are archives of exactly what those commits shipped
(``git archive``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import psycopg

HERE = Path(__file__).parent

SIDE_TABLE_SQL = """
CREATE TABLE IF NOT EXISTS upgrade_exec (
    id bigserial PRIMARY KEY, instance_id uuid, step_id text, attempt int, release text, pid int,
    at timestamptz DEFAULT clock_timestamp())
"""


def extract(release: str, into: Path) -> Path:
    """Unpack ``release`` ("release-1", "release-2", "release-3") under ``into``; return its root."""
    with tarfile.open(HERE / f"{release}.tar.gz") as tar:
        tar.extractall(into, filter="data")
    return into / release


def install_release(dsn: str, root: Path) -> None:
    """Migrate ``dsn`` with the release's own migrations (its SQL as it shipped).

    The release's own migrator runs them in a subprocess, with its package first on the
    path when it has one (release 2), else the files run through today's migrator, which
    applies a directory of NNN_name.sql files the same way (release 1 ships SQL only).
    """
    if (root / "orchwf").is_dir():
        code = "import sys; from orchwf.db.migrations import migrate; migrate(sys.argv[1])"
        env = dict(os.environ, PYTHONPATH=str(root))
        subprocess.run([sys.executable, "-c", code, dsn], env=env, cwd=root, check=True, timeout=120)
    else:
        from orchwf.db.migrations import migrate

        migrate(dsn, migrations_dir=root / "sql")


CATALOG = {
    "columns": """
        SELECT c.relname, a.attnum::int - (SELECT count(*) FROM pg_attribute d
                                           WHERE d.attrelid = a.attrelid AND d.attisdropped
                                             AND d.attnum < a.attnum)::int AS position,
               a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, a.attidentity,
               pg_get_expr(ad.adbin, ad.adrelid),
               nullif(a.attstattarget, -1) AS statistics_target  -- PG 17+: NULL for the default
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
        WHERE c.relnamespace = %(schema)s::regnamespace AND c.relkind IN ('r', 'p', 'v')
          AND NOT c.relispartition AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY 1, 2""",
    "relations": """
        SELECT c.relname, c.relkind, coalesce(c.reloptions, '{}'), c.relpersistence
        FROM pg_class c WHERE c.relnamespace = %(schema)s::regnamespace AND c.relkind IN ('r', 'p', 'v', 'S', 'i', 'I')
          AND NOT c.relispartition
        ORDER BY 1""",
    "indexes": """
        SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid)
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE c.relnamespace = %(schema)s::regnamespace AND NOT c.relispartition ORDER BY 1""",
    "constraints": """
        SELECT n.conrelid::regclass::text, n.conname, pg_get_constraintdef(n.oid)
        FROM pg_constraint n LEFT JOIN pg_class c ON c.oid = n.conrelid
        WHERE n.connamespace = %(schema)s::regnamespace AND NOT coalesce(c.relispartition, false)
        ORDER BY 1, 2""",
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid), md5(pg_get_functiondef(p.oid))
        FROM pg_proc p WHERE p.pronamespace = %(schema)s::regnamespace ORDER BY 1, 2""",
    "triggers": """
        SELECT tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        WHERE c.relnamespace = %(schema)s::regnamespace AND NOT t.tgisinternal AND NOT c.relispartition
        ORDER BY 1""",
    "views": """
        SELECT c.relname, pg_get_viewdef(c.oid) FROM pg_class c
        WHERE c.relnamespace = %(schema)s::regnamespace AND c.relkind = 'v' ORDER BY 1""",
    "partitions": """
        SELECT c.relname, pg_get_partkeydef(c.oid) FROM pg_class c
        WHERE c.relnamespace = %(schema)s::regnamespace AND c.relkind = 'p' ORDER BY 1""",
}


def catalog(dsn: str, schema: str = "public") -> dict[str, list[tuple[Any, ...]]]:
    """Every table, column, index, constraint, function, trigger and view of ``schema``."""
    with psycopg.connect(dsn) as conn:
        return {name: conn.execute(query, {"schema": schema}).fetchall() for name, query in CATALOG.items()}
