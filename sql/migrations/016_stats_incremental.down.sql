-- orchwf 016 down: the histogram and the counting marks go, and the rollup before 016,
-- which recounts the open minutes each run, comes back (below, as sql/api/stats.sql
-- held it with migrations up to 015). The open minutes' samples were taken by 016's rollup: their wait
-- counts start again from the samples that come in.

DROP TABLE IF EXISTS orchwf_wait_buckets;
ALTER TABLE orchwf_stats_minutes
    DROP COLUMN IF EXISTS unsettled_completed,
    DROP COLUMN IF EXISTS unsettled_failed,
    DROP COLUMN IF EXISTS unsettled_cancelled,
    DROP COLUMN IF EXISTS counted_to;

-- Recompute the open minutes (and close those p_lag_seconds old) from their sources:
--   finishes and failures: history's BRIN index on completed_at (one range per partition
--     kept, and only the rows of those minutes: the cost is the throughput of a minute
--     or two, not the size of history);
--   queue waits: the claims' samples, deleted once their minute is closed;
--   backlog: each queue's ready steps now (orchwf_queue_stats): the current minute keeps
--     the most it has seen.
-- A minute is open until p_lag_seconds after its end, which covers a finish that
-- committed a little after its completed_at (a transaction's start time). After an
-- outage, only the last hour is filled in (see v_end). Rows older than p_keep are deleted.
-- Returns the minutes written. One caller at a time; the others return 0 at once. With
-- p_if_older_than, nothing is done if the current minute was rolled up less than that
-- many seconds ago (the dashboard's call, for a database that no daemon maintains).
CREATE OR REPLACE FUNCTION orchwf_roll_up_stats(
    p_lag_seconds double precision DEFAULT 10,
    p_keep        interval DEFAULT '2 days',
    p_depth_cap   integer DEFAULT 100000,
    p_if_older_than double precision DEFAULT 0
) RETURNS integer
LANGUAGE plpgsql
SET search_path FROM CURRENT
-- History by its BRIN index and the samples by their own small table, whatever the
-- statistics say; no JIT for a few small aggregates.
SET enable_seqscan = off
SET jit = off
AS $$
DECLARE
    v_now    timestamptz := now();
    v_to     timestamptz := date_trunc('minute', now(), 'UTC') + interval '1 minute';
    v_closed timestamptz := date_trunc('minute', now() - p_lag_seconds * interval '1 second', 'UTC');
    v_from   timestamptz;
    v_end    timestamptz;
    v_n      integer;
BEGIN
    IF p_lag_seconds IS NULL OR p_lag_seconds < 0 OR p_lag_seconds > 3600 THEN
        RAISE EXCEPTION 'p_lag_seconds must be between 0 and 3600, got %', p_lag_seconds
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_keep IS NULL OR p_keep < interval '1 hour' THEN
        RAISE EXCEPTION 'p_keep must be at least 1 hour, got %', p_keep USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_if_older_than > 0 AND EXISTS (
            SELECT 1 FROM orchwf_stats_minutes s
            WHERE s.minute = v_to - interval '1 minute' AND s.rolled_at > v_now - p_if_older_than * interval '1 second') THEN
        RETURN 0;  -- fresh enough
    END IF;
    IF NOT pg_try_advisory_xact_lock(hashtextextended('orchwf_stats:' || current_schema(), 0)) THEN
        RETURN 0;  -- another supervisor is at it
    END IF;

    INSERT INTO orchwf_queue_minutes AS m (minute, queue, ready)
    SELECT v_to - interval '1 minute', q.queue, q.ready FROM orchwf_queue_stats(p_depth_cap) q
    ON CONFLICT (minute, queue) DO UPDATE SET ready = greatest(m.ready, EXCLUDED.ready);

    -- Minutes left open by an outage longer than the hour are closed as they are.
    UPDATE orchwf_stats_minutes s SET closed = true WHERE NOT s.closed AND s.minute < v_to - interval '1 hour';
    -- From the first open minute (else the one after the last closed), at most an hour
    -- back. Ten minutes a call: catching up after an outage never holds the maintenance
    -- round long. The first run (an empty table: a new or upgraded database) does the
    -- whole hour at once, so that the overview starts with the hour's history.
    v_from := greatest(
        coalesce((SELECT min(s.minute) FROM orchwf_stats_minutes s WHERE NOT s.closed),
                 (SELECT max(s.minute) + interval '1 minute' FROM orchwf_stats_minutes s),
                 v_to - interval '1 hour'),
        v_to - interval '1 hour');
    v_end := CASE WHEN EXISTS (SELECT 1 FROM orchwf_stats_minutes) THEN least(v_to, v_from + interval '10 minutes')
                  ELSE v_to END;

    -- The samples of the minutes closed now are taken (deleted) by the statement that
    -- counts them: a claim that commits meanwhile is counted or left for the next run,
    -- never deleted uncounted. (Those before v_from, an outage's, go uncounted.)
    WITH taken AS (
        DELETE FROM orchwf_wait_samples s WHERE s.claimed_at < least(v_closed, v_end)
        RETURNING s.claimed_at, s.waits_ms),
    samples AS (
        SELECT t.claimed_at, t.waits_ms FROM taken t
        UNION ALL
        SELECT s.claimed_at, s.waits_ms FROM orchwf_wait_samples s
        WHERE s.claimed_at >= least(v_closed, v_end) AND s.claimed_at < v_end)
    INSERT INTO orchwf_stats_minutes AS t (minute, completed, failed, cancelled, started, wait_p50_ms,
                                           wait_p99_ms, closed, rolled_at)
    SELECT m.minute, coalesce(f.completed, 0), coalesce(f.failed, 0), coalesce(f.cancelled, 0),
           coalesce(w.started, 0), w.p50, w.p99, m.minute < v_closed, v_now
    FROM generate_series(v_from, v_end - interval '1 minute', interval '1 minute') AS m(minute)
    LEFT JOIN (
        SELECT date_trunc('minute', h.completed_at, 'UTC') AS minute,
               count(*) FILTER (WHERE h.status = 'completed') AS completed,
               count(*) FILTER (WHERE h.status = 'failed') AS failed,
               count(*) FILTER (WHERE h.status = 'cancelled') AS cancelled
        FROM orchwf_instance_history h
        WHERE h.completed_at >= v_from AND h.completed_at < v_end
        GROUP BY 1) f ON f.minute = m.minute
    LEFT JOIN (
        SELECT date_trunc('minute', s.claimed_at, 'UTC') AS minute, count(*) AS started,
               percentile_cont(0.5) WITHIN GROUP (ORDER BY x.ms)::real AS p50,
               percentile_cont(0.99) WITHIN GROUP (ORDER BY x.ms)::real AS p99
        FROM samples s CROSS JOIN LATERAL unnest(s.waits_ms) AS x(ms)
        WHERE s.claimed_at >= v_from AND s.claimed_at < v_end
        GROUP BY 1) w ON w.minute = m.minute
    ON CONFLICT (minute) DO UPDATE
        SET completed = EXCLUDED.completed, failed = EXCLUDED.failed, cancelled = EXCLUDED.cancelled,
            started = EXCLUDED.started, wait_p50_ms = EXCLUDED.wait_p50_ms,
            wait_p99_ms = EXCLUDED.wait_p99_ms, closed = EXCLUDED.closed, rolled_at = EXCLUDED.rolled_at
        WHERE NOT t.closed;
    GET DIAGNOSTICS v_n = ROW_COUNT;

    DELETE FROM orchwf_stats_minutes s WHERE s.minute < v_now - p_keep;
    DELETE FROM orchwf_queue_minutes q WHERE q.minute < v_now - p_keep;
    RETURN v_n;
END;
$$;
