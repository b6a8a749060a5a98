"""``orchwf schedules`` (add, list, pause, resume, remove) and ``orchwf signal``: bad input
is one error line and stores nothing."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from orchwf.cli.main import cli


@pytest.fixture
def orchwf(ops_db: str, monkeypatch):
    monkeypatch.delenv("ORCHWF_SCHEMA", raising=False)
    runner = CliRunner(env={"ORCHWF_DSN": ops_db})
    return lambda *args: runner.invoke(cli, list(args), catch_exceptions=False)


def _listed(orchwf) -> list[dict]:
    result = orchwf("schedules", "list", "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_add_list_pause_resume_remove(orchwf) -> None:
    added = orchwf("schedules", "add", "ops_chain", "0 6 * * mon-fri", "--timezone", "Europe/Berlin",
                   "--input", '{"report": "daily"}', "--misfire", "skip", "--name", "morning")
    assert added.exit_code == 0 and "schedule 'morning': next run 20" in added.stdout, added.stderr
    [row] = _listed(orchwf)
    assert (row["name"], row["workflow_id"], row["cron"], row["timezone"], row["input"], row["misfire"],
            row["paused"]) == ("morning", "ops_chain", "0 6 * * mon-fri", "Europe/Berlin", {"report": "daily"},
                               "skip", False)
    assert orchwf("schedules", "pause", "morning").stdout == "schedule 'morning': paused\n"
    table = orchwf("schedules", "list").stdout
    assert "morning" in table and "paused" in table and "Europe/Berlin" in table
    assert orchwf("schedules", "resume", "morning").exit_code == 0
    assert _listed(orchwf)[0]["paused"] is False
    assert orchwf("schedules", "remove", "morning").stdout == "schedule 'morning': removed\n"
    assert _listed(orchwf) == [] and orchwf("schedules", "list").stdout == "no schedules\n"


@pytest.mark.parametrize(("args", "message"), [
    (("ops_chain", "0 25 * * *"), "error: cron hour field: 25 is out of range 0-23"),
    (("ops_chain", "@daily", "--timezone", "Atlantis/Capital"), "error: unknown time zone 'Atlantis/Capital'"),
    (("unknown_workflow", "@daily"), "error: workflow not found: unknown_workflow"),
    (("ops_chain", "@daily", "--input", "[1]"), "must be a JSON object"),
])
def test_bad_input_is_refused_with_nothing_stored(orchwf, args: tuple[str, ...], message: str) -> None:
    result = orchwf("schedules", "add", *args)
    assert result.exit_code in (1, 2) and message in result.stderr and "Traceback" not in result.stderr
    assert _listed(orchwf) == []


def test_an_unknown_name_is_one_error_line(orchwf) -> None:
    for action in ("remove", "pause", "resume"):
        result = orchwf("schedules", action, "nobody")
        assert result.exit_code == 1 and result.stderr == "error: schedule not found: nobody\n"


def test_signal_from_the_cli(orchwf, ops_db: str) -> None:
    """``orchwf signal``: a root step that waits for "go" completes in the signal's own
    transaction, with the payload as its output; bad input is one line."""
    import psycopg

    from orchwf import Client, WorkflowBuilder, wait_for_signal

    with Client(ops_db) as client:
        client.register_workflow(WorkflowBuilder("cli_wait", "Waits").add_step(wait_for_signal("w", "go").build()).build())
        instance = client.enqueue("cli_wait", {})
    with psycopg.connect(ops_db) as conn:
        assert conn.execute("SELECT count(*) FROM orchwf_ready_steps").fetchone()[0] == 0  # it waits
    sent = orchwf("signal", instance, "go", "--payload", '{"ok": true}')
    assert sent.exit_code == 0 and sent.stdout.startswith(f"signal 'go' sent to {instance} (id "), sent.stderr
    with psycopg.connect(ops_db) as conn:
        assert conn.execute("SELECT count(*) FROM orchwf_ready_steps").fetchone()[0] == 0
        row = conn.execute("SELECT status, output FROM orchwf_workflow_instances WHERE id = %s",
                           (instance,)).fetchone()
        assert row == ("completed", {"ok": True})
    unknown = orchwf("signal", "00000000-0000-7000-8000-000000000000", "go")
    assert unknown.exit_code == 1 and unknown.stderr.startswith("error: workflow not found")
    finished = orchwf("signal", instance, "go")
    assert finished.exit_code == 1 and "has finished: it receives no signals" in finished.stderr
    with Client(ops_db) as client:
        waiting = client.enqueue("cli_wait", {})
    bad = orchwf("signal", waiting, "stop")
    assert bad.exit_code == 1 and "waits for a signal named 'stop'" in bad.stderr
