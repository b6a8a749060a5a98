"""Pausing and resuming a queue (issue 15, part 4): the SQL API, the Client, the CLI, the
stats and metrics, and real daemons on two "hosts" that stop starting a paused queue's
steps while the steps they run finish."""

from __future__ import annotations

import json
import select
import time
import uuid

import psycopg
import pytest
from click.testing import CliRunner
from opskit import query, run_one, total, wait_for

from orchwf import Client, ValidationError
from orchwf.cli.main import cli
from orchwf.daemon.metrics import DatabaseCollector


@pytest.fixture
def orchwf(ops_db: str, monkeypatch):
    monkeypatch.delenv("ORCHWF_SCHEMA", raising=False)
    runner = CliRunner(env={"ORCHWF_DSN": ops_db})

    def invoke(*args: str):
        return runner.invoke(cli, list(args), catch_exceptions=False)

    return invoke


def controls(dsn: str) -> list[tuple[str, bool]]:
    return [tuple(r) for r in query(dsn, "SELECT name, paused FROM orchwf_queues ORDER BY name")]  # type: ignore[misc]


# -- the SQL API ---------------------------------------------------------------------------------


def test_a_paused_queue_claims_nothing_and_enqueue_still_works(ops_db: str) -> None:
    with Client(ops_db) as client:
        client.enqueue("ops_chain", {})
        other = client.enqueue("ops_chain", {}, queue="other")
        assert client.pause_queue("default") is True
        assert client.pause_queue("default") is False  # paused already: nothing changes
        waiting = client.enqueue("ops_chain", {})  # an enqueue into a paused queue works
    assert run_one(ops_db, "completed") is None  # a worker of 'default' gets nothing
    assert run_one(ops_db, "completed", queues=("default", "other")) == (other, "a")  # other queues run
    assert query(ops_db, "SELECT count(*) FROM orchwf_ready_steps WHERE queue = 'default'") == [(2,)]
    [(paused_at,)] = query(ops_db, "SELECT paused_at FROM orchwf_queues WHERE name = 'default'")
    assert paused_at is not None

    with Client(ops_db) as client:
        assert client.resume_queue("default") is True
        assert client.resume_queue("default") is False  # not paused: nothing changes
    claimed = {run_one(ops_db, "completed"), run_one(ops_db, "completed")}
    assert {c[1] for c in claimed if c} == {"a"} and waiting in {c[0] for c in claimed if c}
    assert query(ops_db, "SELECT paused, paused_at FROM orchwf_queues") == [(False, None)]


def test_resume_notifies_the_workers_and_pause_does_not(ops_db: str) -> None:
    """Resume wakes workers as an enqueue does (the supervisors' LISTEN), at its commit."""
    with psycopg.connect(ops_db, autocommit=True) as listener:
        listener.execute("LISTEN orchwf_ready")
        with Client(ops_db) as client:
            client.pause_queue("bulk")
            assert list(listener.notifies(timeout=0.5)) == []
            client.resume_queue("bulk")
        select.select([listener.fileno()], [], [], 5)
        notes = []
        for note in listener.notifies(timeout=1):
            notes.append((note.channel, note.payload))
            break
    assert notes == [("orchwf_ready", "bulk")]


@pytest.mark.parametrize("name", ["", "x" * 256])
def test_a_bad_queue_name_is_refused_everywhere_with_nothing_stored(ops_db: str, orchwf, name: str) -> None:
    with Client(ops_db) as client:
        for call in (client.pause_queue, client.resume_queue):
            with pytest.raises(ValidationError, match="queue must be a string of 1 to 255 characters"):
                call(name)
    for sql_function in ("orchwf_pause_queue", "orchwf_resume_queue"):
        with pytest.raises(psycopg.Error, match="queue name must be 1 to 255 characters") as caught:
            query(ops_db, f"SELECT {sql_function}(%s)", (name,))
        assert caught.value.sqlstate == "OW400"
    with pytest.raises(psycopg.Error, match="queue name must be 1 to 255 characters"):
        query(ops_db, "SELECT orchwf_pause_queue(NULL)")
    for command in ("pause", "resume"):
        result = orchwf("queue", command, name)
        assert result.exit_code == 2 and "queue must be a string of 1 to 255 characters" in result.stderr
    assert controls(ops_db) == []


def test_the_sql_error_is_translated_for_a_caller_without_python_checks(ops_db: str) -> None:
    """The Python check and the SQL check agree: SQL's error reaches Python as ValidationError."""
    from orchwf.db.errors import translate_errors
    from orchwf.db.queries import Queries

    with psycopg.connect(ops_db) as conn, pytest.raises(ValidationError, match="1 to 255"):
        with translate_errors():
            Queries.of("public").pause_queue(conn, "")
    assert controls(ops_db) == []


def test_suspects_of_a_paused_queue_start_no_quarantine_worker(ops_db: str) -> None:
    """A paused queue's suspects wait for the resume: the maintenance round does not ask
    for a quarantine worker that could claim nothing."""
    with Client(ops_db) as client:
        client.enqueue("ops_chain", {})
        client.pause_queue("default")
    query(ops_db, "UPDATE orchwf_ready_steps SET suspect = true")
    maintain = "SELECT suspects FROM orchwf_maintain('sup', false, '{default}', '{ops_chain}')"
    waiting = ("SELECT EXISTS (SELECT 1 FROM orchwf_ready_steps r WHERE r.suspect AND r.queue = ANY ('{default}') "
               "AND NOT EXISTS (SELECT 1 FROM orchwf_queues c WHERE c.name = r.queue AND c.paused))")
    from orchwf.db.queries import Queries

    with psycopg.connect(ops_db) as conn:
        assert Queries.of("public").suspects_waiting(conn, ["default"], ["ops_chain"]) is False
    assert query(ops_db, maintain) == [(False,)] and query(ops_db, waiting) == [(False,)]
    with psycopg.connect(ops_db, autocommit=True) as conn:
        assert conn.execute("SELECT step_inst_id FROM orchwf_claim_steps('q:1:1', '{default}', '{ops_chain}', 1, 30,"
                            " true)").fetchall() == []
    with Client(ops_db) as client:
        client.resume_queue("default")
    assert query(ops_db, maintain) == [(True,)]


# -- the CLI, stats and metrics ------------------------------------------------------------------


def test_cli_pause_resume_and_stats_show_the_state(ops_db: str, orchwf) -> None:
    with Client(ops_db) as client:
        client.enqueue_many("ops_chain", [{}] * 2, queue="bulk")
    result = orchwf("queue", "pause", "bulk")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "queue bulk: paused"
    assert orchwf("queue", "pause", "bulk").stdout.strip() == "queue bulk: paused (it was paused already)"
    assert json.loads(orchwf("queue", "pause", "idle", "--json").stdout) == {
        "queue": "idle", "paused": True, "changed": True}
    doc = json.loads(orchwf("stats", "--json").stdout)
    queues = {q["queue"]: (q["ready"], q["paused"]) for q in doc["queues"]}
    assert queues == {"bulk": (2, True), "idle": (0, True)}  # a paused queue with nothing ready is listed
    text = orchwf("stats").stdout.splitlines()
    assert text[0].split() == ["QUEUE", "READY", "OLDEST", "READY", "STATE", "RATE", "LIMIT"]
    assert [line.split()[0:1] + line.split()[-2:] for line in text[1:3]] == [["bulk", "paused", "-"],
                                                                              ["idle", "paused", "-"]]

    result = orchwf("queue", "resume", "bulk")
    assert result.exit_code == 0 and result.stdout.strip() == "queue bulk: running"
    assert orchwf("queue", "resume", "bulk").stdout.strip() == "queue bulk: running (it was not paused)"
    doc = json.loads(orchwf("stats", "--json").stdout)
    assert {q["queue"]: q["paused"] for q in doc["queues"]} == {"bulk": False, "idle": True}
    assert controls(ops_db) == [("bulk", False), ("idle", True)]


def test_the_metrics_show_paused_queues_and_rate_limits(ops_db: str) -> None:
    with Client(ops_db) as client:
        client.pause_queue("bulk")
        client.pause_queue("other")
        client.resume_queue("other")
        client.set_queue_rate_limit("limited", 2.5)
    with psycopg.connect(ops_db, autocommit=True) as conn:
        collector = DatabaseCollector("public", lambda: conn, queues=["default", "bulk"], ttl=0)
        families = {m.name: m for m in collector.collect()}
    paused = {s.labels["queue"]: s.value for s in families["orchwf_queue_paused"].samples}
    assert paused == {"bulk": 1.0, "other": 0.0, "limited": 0.0, "default": 0.0}
    limits = {s.labels["queue"]: s.value for s in families["orchwf_queue_rate_limit_per_second"].samples}
    assert limits == {"limited": 2.5}


# -- real daemons ----------------------------------------------------------------------------------


def _started_since(dsn: str, since: object) -> int:
    return query(dsn, "SELECT count(*) FROM orchwf_step_instances WHERE started_at > %s", (since,))[0][0]


def test_two_daemons_stop_starting_a_paused_queue_and_running_steps_finish(ops_db: str, daemon) -> None:
    """Two supervisors (two "hosts"), 2 slots each, busy with slow steps. Pause: the steps
    they run finish, nothing else starts (not their dependents, not new instances) on
    either; the default poll is 30 s, so only the resume's notification can make the
    waiting work start within seconds of the resume."""
    hosts = [daemon("--workers", "1", "--concurrency", "2", "--hostname", f"host{i}") for i in (1, 2)]
    for d in hosts:
        d.wait_ready()
    with Client(ops_db) as client:
        first = client.enqueue_many("ops_slow", [{"sleep": 1.5}] * 4)
        wait_for(lambda: query(ops_db, "SELECT count(*) FROM orchwf_running_steps")[0][0] == 4, 20,
                 "4 running steps")
        owners = query(ops_db, "SELECT DISTINCT split_part(lease_owner, ':', 1) FROM orchwf_running_steps")
        assert {o[0] for o in owners} == {"host1", "host2"}, owners  # both hosts run some
        assert client.pause_queue("default")
        [(paused_at,)] = query(ops_db, "SELECT now()")  # after the pause's commit
        later = client.enqueue_many("ops_slow", [{"sleep": 0}] * 3)  # enqueued while paused

    # The running steps finish normally; their dependents wait, as do the new instances.
    wait_for(lambda: query(ops_db, "SELECT count(*) FROM orchwf_step_instances WHERE step_id = 'nap'"
                                   " AND status = 'completed'")[0][0] == 4, 20, "the running steps to finish")
    time.sleep(2.0)
    for d in hosts:
        d.check_alive()
    assert _started_since(ops_db, paused_at) == 0
    assert query(ops_db, "SELECT count(*) FROM orchwf_running_steps") == [(0,)]
    assert query(ops_db, "SELECT count(*) FROM orchwf_ready_steps WHERE queue = 'default'") == [(4 + 3,)]

    with Client(ops_db) as client:
        resumed = time.monotonic()
        client.resume_queue("default")
        for iid in first + later:
            assert client.wait(iid, timeout=20).status == "completed"
    took = time.monotonic() - resumed
    assert took < 10, f"the paused work took {took:.1f}s to finish after the resume (a poll, not the notification?)"


# -- the migration ---------------------------------------------------------------------------------


def test_rollback_of_012_takes_the_filter_out_and_refuses_an_unknown_body(ops_db: str) -> None:
    """After 012 down, the claim and the round of the previous release's API run without
    orchwf_queues; a claim body that lacks 012's lines stops the rollback, changing nothing."""
    from orchwf.db.migrations import migrate, rollback
    from orchwf.db.sqlfiles import MigrationError

    query(ops_db, "SELECT orchwf_pause_queue('default')")
    assert rollback(ops_db, steps=6) == ["018", "017", "016", "015", "014", "013"]  # the later ones first (013's own test: tests/daemon/test_concurrency_keys.py)
    claim_src = "SELECT prosrc FROM pg_proc WHERE proname = 'orchwf_claim_steps' AND pronargs = 7"  # the body
    [(original,)] = query(ops_db, claim_src)
    query(ops_db, "UPDATE pg_proc SET prosrc = replace(prosrc, 'c.paused IS NOT TRUE)', 'c.paused IS NOT TRUE AND true)')"
                  " WHERE proname = 'orchwf_claim_steps' AND pronargs = 7")
    with pytest.raises(MigrationError, match="does not hold the lines 012 added"):
        rollback(ops_db)
    assert controls(ops_db) == [("default", True)]  # nothing was changed
    query(ops_db, "UPDATE pg_proc SET prosrc = %s WHERE proname = 'orchwf_claim_steps' AND pronargs = 7", (original,))

    assert rollback(ops_db) == ["012"]
    assert query(ops_db, "SELECT to_regclass('orchwf_queues')") == [(None,)]
    assert query(ops_db, "SELECT count(*) FROM pg_proc WHERE prosrc LIKE '%orchwf_queues%'") == [(0,)]
    # the claim's queue list and limits are release 3's again
    [(body,)] = query(ops_db, claim_src)
    assert "        FROM unnest(p_queues) AS q(name)\n        CROSS JOIN LATERAL" in body
    assert body.count("LIMIT p_limit") == 3 and "LIMIT q.n" not in body
    with Client(ops_db) as client:
        iid = client.enqueue("ops_chain", {})
    assert run_one(ops_db, "completed") == (iid, "a")  # the claim runs without the table
    assert query(ops_db, "SELECT suspects FROM orchwf_maintain('sup', true, '{default}', '{ops_chain}')") == [(False,)]
    assert migrate(ops_db) == ["012", "013", "014", "015", "016", "017", "018"]
    assert controls(ops_db) == []


# -- rate limits ---------------------------------------------------------------------------------


def claim(dsn: str, limit: int, queues: tuple[str, ...] = ("default",)) -> int:
    """Steps one claim gets (they stay running)."""
    return len(query(dsn, "SELECT step_inst_id FROM orchwf_claim_steps('t:1:1', %s, '{ops_chain}', %s, 30, false)",
                     (list(queues), limit)))


def test_a_rate_limited_claim_takes_its_starts_from_the_bucket(ops_db: str) -> None:
    with Client(ops_db) as client:
        client.enqueue_many("ops_chain", [{}] * 30)
        client.enqueue_many("ops_chain", [{}] * 5, queue="free")
        client.set_queue_rate_limit("default", 10, burst=3)
        [control] = [c for c in client.list_queue_controls() if c.name == "default"]
    assert (control.rate_per_second, control.burst, control.paused) == (10.0, 3, False)
    assert claim(ops_db, 20) == 3  # a full bucket: the burst
    assert claim(ops_db, 20) == 0  # empty
    refilled = "UPDATE orchwf_queues SET tokens = 0, tokens_at = now() - %s * interval '1 second'"
    query(ops_db, refilled, (0.22,))  # 2.2 tokens (and a few more ms' worth)
    assert claim(ops_db, 20) == 2
    assert claim(ops_db, 20, ("free",)) == 5  # a queue without a limit: as before
    query(ops_db, refilled, (1.05,))  # 10.5 tokens, capped at the burst
    assert claim(ops_db, 20) == 3

    with Client(ops_db) as client:
        client.remove_queue_rate_limit("default")
        client.remove_queue_rate_limit("never-limited")  # a no-op
    assert claim(ops_db, 20) == 20
    assert query(ops_db, "SELECT name, rate_per_second, burst FROM orchwf_queues") == [("default", None, None)]


def test_polling_a_short_or_empty_queue_does_not_spend_the_bucket(ops_db: str) -> None:
    """Only the steps a claim can start are charged: a worker polling an empty queue must
    not leave the next burst without tokens."""
    with Client(ops_db) as client:
        client.set_queue_rate_limit("default", 1, burst=4)
    for _ in range(5):
        assert claim(ops_db, 10) == 0
    with Client(ops_db) as client:
        client.enqueue_many("ops_chain", [{}] * 2)
    assert claim(ops_db, 10) == 2
    with Client(ops_db) as client:
        client.enqueue_many("ops_chain", [{}] * 5)
    assert claim(ops_db, 10) == 2  # the 2 tokens left
    [(tokens,)] = query(ops_db, "SELECT tokens FROM orchwf_queues")
    assert 0 <= tokens < 0.5


def test_the_default_burst_is_one_seconds_worth_and_a_change_keeps_the_tokens(ops_db: str) -> None:
    with Client(ops_db) as client:
        client.set_queue_rate_limit("a", 7.5)
        client.set_queue_rate_limit("b", 0.1)
        client.set_queue_rate_limit("a", 7.5, burst=2)  # fewer tokens than before: cut to the new burst
    assert query(ops_db, "SELECT name, rate_per_second, burst, tokens FROM orchwf_queues ORDER BY name") == [
        ("a", 7.5, 2, 2.0), ("b", 0.1, 1, 1.0)]


@pytest.mark.parametrize("per_second, burst, message", [
    (0, None, "rate must be more than 0"),
    (-5, None, "rate must be more than 0"),
    (float("nan"), None, "rate must be more than 0"),
    (float("inf"), None, "rate must be more than 0"),
    (True, None, "rate must be a number"),
    ("10", None, "rate must be a number"),
    (10, 0, "burst must be an int from 1"),
    (10, 2.5, "burst must be an int from 1"),
])
def test_a_bad_rate_limit_is_refused_with_nothing_stored(ops_db: str, per_second: object, burst: object,
                                                         message: str) -> None:
    with Client(ops_db) as client, pytest.raises(ValidationError, match=message):
        client.set_queue_rate_limit("default", per_second, burst=burst)  # type: ignore[arg-type]
    assert controls(ops_db) == []


def test_the_sql_api_refuses_a_bad_rate_limit(ops_db: str) -> None:
    for args, message in ((("default", 0.0, None), "rate must be more than 0"),
                          (("default", -1.0, None), "rate must be more than 0"),
                          (("default", float("nan"), None), "rate must be more than 0"),
                          (("default", 5.0, 0), "burst must be 1 to 1000000"),
                          (("default", None, 3), "a burst needs a rate"),
                          (("", 5.0, None), "queue name must be 1 to 255 characters")):
        with pytest.raises(psycopg.Error, match=message) as caught:
            query(ops_db, "SELECT orchwf_set_queue_rate_limit(%s, %s, %s)", args)
        assert caught.value.sqlstate == "OW400"
    assert controls(ops_db) == []


def test_cli_rate_limit_and_stats(ops_db: str, orchwf) -> None:
    result = orchwf("queue", "rate-limit", "bulk", "--per-second", "20", "--burst", "5")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "queue bulk: at most 20/s, burst 5"
    assert orchwf("queue", "rate-limit", "slow", "--per-minute", "30").stdout.strip() == (
        "queue slow: at most 0.5/s (30/min), burst 1")
    doc = json.loads(orchwf("stats", "--json").stdout)
    assert {q["queue"]: (q["rate_per_second"], q["burst"]) for q in doc["queues"]} == {
        "bulk": (20.0, 5), "slow": (0.5, 1)}
    assert "0.5/s (30/min), burst 1" in orchwf("stats").stdout
    assert json.loads(orchwf("queue", "rate-limit", "bulk", "--off", "--json").stdout) == {
        "queue": "bulk", "rate_per_second": None, "burst": None}

    for args, message in ((["--per-second", "0"], "rate must be more than 0"),
                          (["--per-second", "-3"], "rate must be more than 0"),
                          (["--per-minute", "0"], "rate must be more than 0"),
                          (["--per-second", "5", "--burst", "0"], "burst must be an int from 1"),
                          ([], "give one of --per-second, --per-minute or --off"),
                          (["--per-second", "5", "--per-minute", "5"], "give one of"),
                          (["--off", "--burst", "3"], "--burst goes with a rate")):
        result = orchwf("queue", "rate-limit", "other", *args)
        assert result.exit_code == 2 and message in result.stderr, (args, result.stderr)
    assert controls(ops_db) == [("bulk", False), ("slow", False)]


def _max_in_window(times: list[float], width: float) -> int:
    """The most starts in any closed window of ``width`` seconds (windows start at a start)."""
    best, j = 0, 0
    for i, start in enumerate(times):
        j = max(j, i)
        while j + 1 < len(times) and times[j + 1] <= start + width:
            j += 1
        best = max(best, j - i + 1)
    return best


def test_two_daemons_never_start_more_than_the_rate_limit_allows(ops_db: str, daemon) -> None:
    """10 starts/s, burst 3, on two supervisors with 8 slots each and 120 steps ready:
    in every window of T seconds at most 3 + 10 T steps start (started_at, from the
    database's clock), and the limit is used: at least 90% of it over the run."""
    rate, burst = 10, 3
    with Client(ops_db) as client:
        client.set_queue_rate_limit("default", rate, burst=burst)
        ids = client.enqueue_many("ops_chain", [{}] * 40)  # a, then b and c: 120 starts
    hosts = [daemon("--workers", "1", "--concurrency", "8", "--hostname", f"host{i}") for i in (1, 2)]
    with Client(ops_db) as client:
        for iid in ids:
            assert client.wait(iid, timeout=60).status == "completed"
    for d in hosts:
        d.check_alive()
    rows = query(ops_db, "SELECT extract(epoch FROM started_at)::float8 FROM orchwf_step_instances"
                         " WHERE workflow_inst_id = ANY(%s::uuid[]) ORDER BY 1", (ids,))
    times = [r[0] for r in rows]
    assert len(times) == 120
    for width in (0.1, 0.5, 1.0, 2.0, 5.0):
        assert _max_in_window(times, width) <= int(burst + rate * width + 1e-9), width
    span = times[-1] - times[0]
    assert (len(times) - burst) / span >= 0.9 * rate, f"{len(times)} starts in {span:.2f}s"
    claimed = [total(d.scrape(), "orchwf_steps_claimed_total") for d in hosts]
    assert sum(claimed) == 120 and min(claimed) > 0, claimed  # both hosts started steps


@pytest.mark.slow
def test_a_limit_of_100_per_second_is_held_over_30_seconds_across_two_supervisors(ops_db: str, daemon) -> None:
    """The issue's figure: 100 starts/s (burst 100) on two supervisors of two workers with
    20 slots each, 3,300 steps ready: every window within burst + rate x T, and beyond the
    first burst between 90 and 100 starts a second over the run (+0 / -10%)."""
    rate, burst = 100, 100
    with Client(ops_db) as client:
        client.set_queue_rate_limit("default", rate, burst=burst)
        ids = client.enqueue_many("ops_chain", [{}] * 1100)
    hosts = [daemon("--workers", "2", "--concurrency", "20", "--hostname", f"host{i}") for i in (1, 2)]
    with Client(ops_db) as client:
        for iid in ids:
            assert client.wait(iid, timeout=120).status == "completed"
    for d in hosts:
        d.check_alive()
    times = [r[0] for r in query(ops_db, "SELECT extract(epoch FROM started_at)::float8 FROM orchwf_step_instances"
                                         " ORDER BY 1")]
    assert len(times) == 3300
    for width in (0.1, 1.0, 5.0, 30.0):
        assert _max_in_window(times, width) <= int(burst + rate * width + 1e-9), width
    # beyond the first burst, the rate held: never above it (the bucket's bound over the
    # whole run), at least 90% of it over the run and in the first 30 s after the burst
    span = times[-1] - times[0]
    assert 0.9 * rate <= (len(times) - burst) / span <= rate, f"{(len(times) - burst) / span:.1f} starts/s"
    after_burst = times[0] + burst / rate
    steady = [t for t in times if after_burst <= t < after_burst + 30]
    assert len(steady) >= 0.9 * rate * 30, f"{len(steady) / 30:.1f} starts/s"


def test_migration_012_gives_the_roles_that_could_claim_the_queue_controls(empty_db_dsn: str) -> None:
    """A least-privilege runtime role of release 3 goes on claiming after 012: the claim now
    reads orchwf_queues, and 012 grants it to whoever could lock ready steps."""
    from orchwf.db.migrations import migrate

    role = f"orchwf_rt_{uuid.uuid4().hex[:10]}"
    migrate(empty_db_dsn, target="006")
    query(empty_db_dsn, f"CREATE ROLE {role}")
    try:
        query(empty_db_dsn, f"GRANT SELECT, UPDATE, DELETE ON orchwf_ready_steps TO {role}")
        migrate(empty_db_dsn)
        granted = query(empty_db_dsn, "SELECT p, has_table_privilege(%s, 'orchwf_queues', p) FROM"
                                      " unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE']) p", (role,))
        assert dict(granted) == {"SELECT": True, "INSERT": True, "UPDATE": True, "DELETE": False}
    finally:
        query(empty_db_dsn, f"DROP OWNED BY {role}")
        query(empty_db_dsn, f"DROP ROLE {role}")
