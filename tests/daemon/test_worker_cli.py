"""``orchwf worker`` refuses bad setups with one clear line, before forking anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def run_worker(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(HERE))
    return subprocess.run([sys.executable, "-m", "orchwf", "worker", "--metrics-port", "0", *args],
                          capture_output=True, text=True, timeout=60, env=env)


def test_unmigrated_database_is_refused(empty_db_dsn: str) -> None:
    done = run_worker("--app", "daemonapp", "--dsn", empty_db_dsn)
    assert done.returncode == 1
    assert "not migrated" in done.stderr and "orchwf migrate up" in done.stderr
    assert "Traceback" not in done.stderr


def test_unknown_module_is_refused(db_dsn: str) -> None:
    done = run_worker("--app", "no_such_module_xyz", "--dsn", db_dsn)
    assert done.returncode == 1
    assert "cannot import no_such_module_xyz" in done.stderr
    assert "Traceback" not in done.stderr


def test_attribute_that_is_not_a_definition_is_refused(db_dsn: str) -> None:
    done = run_worker("--app", "daemonapp:DSN", "--dsn", db_dsn)
    assert done.returncode == 1
    assert "expected an Orchestrator, a WorkflowDefinition or a list of them" in done.stderr


def test_bad_option_is_a_usage_error(db_dsn: str) -> None:
    done = run_worker("--app", "daemonapp", "--dsn", db_dsn, "--workers", "0")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
