"""StatsRollup: the dashboard's per-minute trends, from the claims' wait samples, the
finishes in history and the ready queue; each finish and sample counted once; one caller
at a time; closed minutes are final."""

from __future__ import annotations

import psycopg
import pytest
from maintkit import SCHEMA, Q, claim, connection, finish, worker_id

from orchwf import Client
from orchwf.daemon.maintenance import stats
from orchwf.daemon.maintenance.stats import StatsResult, StatsRollup
from orchwf.lifecycle import Outcome


def _totals(conn: psycopg.Connection) -> dict[str, float]:
    """The rollup's sums over the last hour (a test may cross a minute boundary)."""
    trend, _ = Q.dashboard_trend(conn, 60)
    return {k: sum(r[k] for r in trend) for k in ("completed", "failed", "started")}


def _samples(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM orchwf_wait_samples").fetchone()[0]


def _buckets(conn: psycopg.Connection) -> int:
    return conn.execute("SELECT count(*) FROM orchwf_wait_buckets").fetchone()[0]


#: p50 and p99 come from a histogram of 16 buckets per doubling: within one bucket's width.
HISTOGRAM_ERROR = 2 ** (1 / 16) - 1  # 4.4%


def _finish_all(client: Client, conn: psycopg.Connection, n: int, outcome: Outcome = Outcome.COMPLETED) -> None:
    for _ in range(n):
        client.enqueue("single", {})
    steps = claim(conn, worker_id(), limit=n)
    assert len(steps) == n
    for step in steps:
        assert finish(conn, step, outcome)


def test_a_run_counts_finishes_claims_and_the_backlog(client: Client, app_db: str) -> None:
    for _ in range(5):
        client.enqueue("single", {})
    rollup = StatsRollup(SCHEMA)
    with connection(app_db) as conn:
        steps = claim(conn, worker_id(), limit=3)
        assert len(steps) == 3 and _samples(conn) == 1  # one sample row per claim
        assert finish(conn, steps[0], Outcome.COMPLETED) and finish(conn, steps[1], Outcome.COMPLETED)
        assert finish(conn, steps[2], Outcome.FAILED, error="boom")

        result = rollup.run_once(conn, now=100.0)

        assert result.minutes >= 1
        assert _totals(conn) == {"completed": 2, "failed": 1, "started": 3}
        trend, backlog = Q.dashboard_trend(conn, 60)
        [latest] = [r for r in trend if r["started"]]
        assert 0 <= latest["wait_p50_ms"] <= latest["wait_p99_ms"] < 60_000
        assert backlog and backlog[-1]["queue"] == "default" and backlog[-1]["ready"] == 2
        assert not rollup.due(105.0) and rollup.due(100.0 + stats.EVERY)


def test_a_closed_minute_is_final_and_its_samples_are_gone(client: Client, app_db: str) -> None:
    """Samples of a minute that ended more than the lag ago are counted once, then
    deleted; a sample arriving later for that minute changes nothing."""
    with connection(app_db) as conn:
        Q.roll_up_stats(conn, 0.0, 86400.0)  # the last ten minutes exist, all but this one closed
        conn.execute("INSERT INTO orchwf_wait_samples (claimed_at, waits_ms)"
                     " VALUES (date_trunc('minute', now() - interval '2 minutes'), '{5, 15, 25}')")
        conn.execute("INSERT INTO orchwf_stats_minutes (minute) VALUES (date_trunc('minute', now() - interval '2 minutes'))"
                     " ON CONFLICT (minute) DO UPDATE SET closed = false")  # reopen it
        Q.roll_up_stats(conn, 0.0, 86400.0)
        [row] = [r for r in Q.dashboard_trend(conn, 60)[0] if r["started"]]
        assert (row["started"], row["closed"]) == (3, True)
        assert row["wait_p50_ms"] == pytest.approx(15.0, rel=HISTOGRAM_ERROR)
        assert _samples(conn) == 0 and _buckets(conn) == 0  # a closed minute's histogram goes

        conn.execute("INSERT INTO orchwf_wait_samples (claimed_at, waits_ms) VALUES (%s, '{1000}')", (row["minute"],))
        Q.roll_up_stats(conn, 0.0, 86400.0)
        [again] = [r for r in Q.dashboard_trend(conn, 60)[0] if r["started"]]
        assert (again["started"], again["wait_p50_ms"]) == (3, row["wait_p50_ms"])
        assert _samples(conn) == 0


def test_one_caller_at_a_time(client: Client, app_db: str) -> None:
    """Every host's supervisor runs the rollup; while one holds it, another returns at once."""
    with connection(app_db) as first, connection(app_db) as second:
        with first.transaction():
            assert Q.roll_up_stats(first, 10.0, 86400.0) > 0
            assert StatsRollup(SCHEMA).run_once(second) == StatsResult(0)
        assert StatsRollup(SCHEMA).run_once(second).minutes >= 1  # the open minute, again


def test_a_fresh_rollup_is_not_redone_for_the_dashboard(client: Client, app_db: str) -> None:
    with connection(app_db) as conn:
        assert Q.roll_up_stats(conn, 10.0, 86400.0, if_older_than=15.0) == 60  # never rolled up: the last hour
        assert Q.roll_up_stats(conn, 10.0, 86400.0, if_older_than=15.0) == 0   # the daemon's, seconds ago
        assert Q.roll_up_stats(conn, 10.0, 86400.0) >= 1                    # the daemon's own call


def test_rows_older_than_kept_are_deleted(client: Client, app_db: str) -> None:
    with connection(app_db) as conn:
        conn.execute("INSERT INTO orchwf_stats_minutes (minute, closed) VALUES (now() - interval '3 days', true)")
        conn.execute("INSERT INTO orchwf_queue_minutes (minute, queue, ready) VALUES (now() - interval '3 days', 'q', 1)")
        Q.roll_up_stats(conn, 10.0, 2 * 86400.0)
        assert conn.execute("SELECT count(*) FROM orchwf_stats_minutes WHERE minute < now() - interval '2 days'"
                            ).fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM orchwf_queue_minutes").fetchone()[0] == 0


@pytest.mark.parametrize(("lag", "keep"), [(-1.0, 86400.0), (7200.0, 86400.0), (10.0, 60.0)])
def test_bad_parameters_are_refused_and_change_nothing(client: Client, app_db: str, lag: float, keep: float) -> None:
    with connection(app_db) as conn:
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            Q.roll_up_stats(conn, lag, keep)
        assert conn.execute("SELECT count(*) FROM orchwf_stats_minutes").fetchone()[0] == 0


def test_each_finish_is_counted_once_over_many_runs(client: Client, app_db: str) -> None:
    """Finishes of the last lag seconds are counted provisionally and again by the next run:
    the totals never count one twice, however often the rollup runs."""
    with connection(app_db) as conn:
        _finish_all(client, conn, 4)
        for _ in range(3):
            Q.roll_up_stats(conn, 10.0, 86400.0)
            assert _totals(conn)["completed"] == 4
        unsettled = conn.execute("SELECT sum(unsettled_completed) FROM orchwf_stats_minutes").fetchone()[0]
        assert unsettled == 4  # all within the lag: counted, and to be counted again
        _finish_all(client, conn, 2, Outcome.FAILED)
        Q.roll_up_stats(conn, 10.0, 86400.0)
        assert _totals(conn) == {"completed": 4, "failed": 2, "started": 6}
        Q.roll_up_stats(conn, 0.0, 86400.0)  # no lag: everything settles
        assert _totals(conn) == {"completed": 4, "failed": 2, "started": 6}
        assert conn.execute("SELECT sum(unsettled_completed + unsettled_failed) FROM orchwf_stats_minutes"
                            ).fetchone()[0] == 0


def test_a_finish_committed_after_a_run_is_counted_by_the_next(client: Client, app_db: str) -> None:
    """A finish's completed_at is its transaction's start: one that commits after a run
    has passed that time is still within the lag, and the next run counts it."""
    client.enqueue("single", {})
    with connection(app_db) as conn, connection(app_db) as late:
        [step] = claim(conn, worker_id())
        Q.roll_up_stats(conn, 10.0, 86400.0)
        with late.transaction():
            late.execute("SELECT pg_sleep(0.05)")  # its completed_at: before the run below
            assert finish(late, step, Outcome.COMPLETED)
            Q.roll_up_stats(conn, 10.0, 86400.0)   # the finish is not yet committed
            assert _totals(conn)["completed"] == 0
        Q.roll_up_stats(conn, 10.0, 86400.0)
        assert _totals(conn)["completed"] == 1


def test_percentiles_from_the_histogram_match_the_samples(client: Client, app_db: str) -> None:
    """Samples added over several runs give the p50 and p99 of all of them, within a bucket."""
    waits = [float(w) for w in range(1, 2001)]  # 1..2000 ms
    with connection(app_db) as conn:
        minute = conn.execute("SELECT date_trunc('minute', now(), 'UTC')").fetchone()[0]
        for part in (waits[0::3], waits[1::3], waits[2::3]):
            conn.execute("INSERT INTO orchwf_wait_samples (claimed_at, waits_ms) VALUES (%s, %s)", (minute, part))
            Q.roll_up_stats(conn, 10.0, 86400.0)
            assert _samples(conn) == 0
        [row] = [r for r in Q.dashboard_trend(conn, 60)[0] if r["minute"] == minute]
        exact = conn.execute("SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY w),"
                             " percentile_cont(0.99) WITHIN GROUP (ORDER BY w) FROM unnest(%s::real[]) w",
                             (waits,)).fetchone()
        assert row["started"] == len(waits)
        assert row["wait_p50_ms"] == pytest.approx(exact[0], rel=HISTOGRAM_ERROR)
        assert row["wait_p99_ms"] == pytest.approx(exact[1], rel=HISTOGRAM_ERROR)
        assert 0 < _buckets(conn) <= 16 * 11 + 1  # the open minute's histogram: log2(2001) doublings


def test_an_upgraded_table_is_counted_afresh_not_twice(client: Client, app_db: str) -> None:
    """Rows written by the rollup before 016 have no counted_to and hold whole recounts of
    their minutes: the first run after the upgrade counts the open minutes afresh."""
    with connection(app_db) as conn:
        _finish_all(client, conn, 3)
        Q.roll_up_stats(conn, 10.0, 86400.0)
        before = {r["minute"]: r for r in Q.dashboard_trend(conn, 60)[0] if r["started"]}
        conn.execute("UPDATE orchwf_stats_minutes SET counted_to = NULL, unsettled_completed = 0")
        Q.roll_up_stats(conn, 10.0, 86400.0)
        assert _totals(conn) == {"completed": 3, "failed": 0, "started": 3}  # the waits: their histograms
        after = {r["minute"]: r for r in Q.dashboard_trend(conn, 60)[0] if r["started"]}
        assert {m: r["wait_p99_ms"] for m, r in after.items()} == {m: r["wait_p99_ms"] for m, r in before.items()}


def test_a_clock_stepped_back_counts_the_hour_afresh(client: Client, app_db: str) -> None:
    """Rows and a mark ahead of the database's clock (it stepped back) are dropped, and the
    hour's open minutes counted again: nothing twice, nothing stuck until the clock
    catches up."""
    with connection(app_db) as conn:
        _finish_all(client, conn, 2)
        Q.roll_up_stats(conn, 10.0, 86400.0)
        conn.execute("INSERT INTO orchwf_stats_minutes (minute, counted_to)"
                     " VALUES (date_trunc('minute', now()) + interval '5 minutes', now() + interval '5 minutes')")
        Q.roll_up_stats(conn, 10.0, 86400.0)
        assert _totals(conn)["completed"] == 2
        assert conn.execute("SELECT count(*) FROM orchwf_stats_minutes WHERE minute > now()").fetchone()[0] == 0
        _finish_all(client, conn, 1)
        Q.roll_up_stats(conn, 10.0, 86400.0)
        assert _totals(conn)["completed"] == 3


def test_a_sample_of_nan_or_infinity_does_not_stop_the_rollup(client: Client, app_db: str) -> None:
    with connection(app_db) as conn:
        conn.execute("INSERT INTO orchwf_wait_samples (waits_ms) VALUES ('{NaN, Infinity, -Infinity, 5}')")
        Q.roll_up_stats(conn, 10.0, 86400.0)
        assert _totals(conn)["started"] == 4 and _samples(conn) == 0
        [row] = [r for r in Q.dashboard_trend(conn, 60)[0] if r["started"]]
        assert 0 <= row["wait_p50_ms"] <= row["wait_p99_ms"] <= 1.1e9
