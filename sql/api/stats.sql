-- orchwf API: the dashboard's trends, rolled up per minute by the supervisors'
-- maintenance (orchwf/daemon/maintenance/stats.py), so that the overview reads a few
-- small rows instead of history.

-- Count what happened since the last run into the minutes it happened in (016):
--   finishes and failures: history's BRIN index on completed_at, from where the last run
--     stopped (the newest minute's counted_to). Those older than p_lag_seconds are counted
--     for good; the newer ones (a finish may commit a little after its completed_at, a
--     transaction's start time) provisionally, as unsettled_*, and again next run. Each
--     finish is read about twice, whatever the throughput: a run costs ~2 x p_lag_seconds
--     of finishes, not the minutes it covers.
--   queue waits: each claim's sample is taken (deleted) and added to its minute's
--     histogram (orchwf_wait_buckets), once; p50 and p99 are read off the histogram
--     (within one bucket: 4.4%).
--   backlog: each queue's ready steps now (orchwf_queue_stats): the current minute keeps
--     the most it has seen.
-- A minute closes when the settled count passes its end; later samples for it are
-- dropped, and its buckets deleted. No counted_to (a new or upgraded database, or a table
-- emptied by hand): the last hour's open minutes are counted afresh. After an outage,
-- only the last hour is filled in, ten minutes of it a call. Rows older than p_keep are
-- deleted. Returns the minutes written. One caller at a time; the others return 0 at
-- once. With p_if_older_than, nothing is done if the current minute was rolled up less
-- than that many seconds ago (the dashboard's call, for a database no daemon maintains).
CREATE OR REPLACE FUNCTION orchwf_roll_up_stats(
    p_lag_seconds double precision DEFAULT 10,
    p_keep        interval DEFAULT '2 days',
    p_depth_cap   integer DEFAULT 100000,
    p_if_older_than double precision DEFAULT 0
) RETURNS integer
LANGUAGE plpgsql
SET search_path FROM CURRENT
-- History by its BRIN index and the small tables by their keys, whatever the statistics
-- say; no JIT for a few small aggregates.
SET enable_seqscan = off
SET jit = off
AS $$
DECLARE
    v_now     timestamptz := now();
    v_to      timestamptz := date_trunc('minute', now(), 'UTC') + interval '1 minute';
    v_hour    timestamptz := date_trunc('minute', now(), 'UTC') + interval '1 minute' - interval '1 hour';
    v_settled timestamptz := now() - p_lag_seconds * interval '1 second';
    v_mark    timestamptz;
    v_from    timestamptz;  -- finishes from here on are not yet counted for good
    v_first   timestamptz;  -- the minute v_from falls in: rows from it on are written
    v_upto    timestamptz;  -- ... and those before this are, after this run
    v_read_to timestamptz;  -- read up to here: past v_upto (provisionally) once caught up
    v_touched timestamptz[];
    v_counted timestamptz[];  -- minutes counted afresh: their p50/p99 are read off again
    v_n       integer;
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
    UPDATE orchwf_stats_minutes s SET closed = true WHERE NOT s.closed AND s.minute < v_hour;

    SELECT s.counted_to INTO v_mark FROM orchwf_stats_minutes s ORDER BY s.minute DESC LIMIT 1;
    IF v_mark > v_now THEN  -- the clock stepped back: the rows ahead of it go, the hour is counted afresh
        DELETE FROM orchwf_stats_minutes s WHERE s.minute >= v_to;
        DELETE FROM orchwf_wait_buckets b WHERE b.minute >= v_to;
        v_mark := NULL;
    END IF;
    v_from := greatest(coalesce(v_mark, v_hour), v_hour);
    -- Ten minutes a call when catching up: an outage never holds the maintenance round long.
    v_upto := greatest(v_from, least(v_settled, CASE WHEN v_mark IS NULL THEN v_settled
                                                     ELSE v_from + interval '10 minutes' END));
    v_read_to := CASE WHEN v_upto >= v_settled THEN 'infinity'::timestamptz ELSE v_upto END;
    v_first := date_trunc('minute', v_from, 'UTC');

    -- Every minute from the first uncounted one on has a row (a quiet minute charts as 0).
    INSERT INTO orchwf_stats_minutes (minute)
    SELECT generate_series(v_first, v_to - interval '1 minute', interval '1 minute')
    ON CONFLICT (minute) DO NOTHING;
    IF v_mark IS NULL THEN
        -- Count the hour's open minutes' finishes afresh. Their waits are the samples
        -- already in their histograms (none after an upgrade: the rollup before 016 left
        -- the open minutes' samples in orchwf_wait_samples, taken below).
        UPDATE orchwf_stats_minutes s
        SET completed = 0, failed = 0, cancelled = 0, unsettled_completed = 0, unsettled_failed = 0,
            unsettled_cancelled = 0, wait_p50_ms = NULL, wait_p99_ms = NULL,
            started = coalesce((SELECT sum(b.n) FROM orchwf_wait_buckets b WHERE b.minute = s.minute), 0)
        WHERE s.minute >= v_hour AND NOT s.closed;
        SELECT array_agg(DISTINCT b.minute) INTO v_counted FROM orchwf_wait_buckets b WHERE b.minute >= v_hour;
    END IF;

    UPDATE orchwf_stats_minutes t
    SET completed = t.completed - t.unsettled_completed + coalesce(f.completed, 0),
        failed = t.failed - t.unsettled_failed + coalesce(f.failed, 0),
        cancelled = t.cancelled - t.unsettled_cancelled + coalesce(f.cancelled, 0),
        unsettled_completed = coalesce(f.unsettled_completed, 0),
        unsettled_failed = coalesce(f.unsettled_failed, 0),
        unsettled_cancelled = coalesce(f.unsettled_cancelled, 0),
        counted_to = v_upto, rolled_at = v_now
    FROM generate_series(v_first, v_to - interval '1 minute', interval '1 minute') AS m(minute)
    LEFT JOIN (
        SELECT date_trunc('minute', h.completed_at, 'UTC') AS minute,
               count(*) FILTER (WHERE h.status = 'completed') AS completed,
               count(*) FILTER (WHERE h.status = 'failed') AS failed,
               count(*) FILTER (WHERE h.status = 'cancelled') AS cancelled,
               count(*) FILTER (WHERE h.status = 'completed' AND h.completed_at >= v_upto) AS unsettled_completed,
               count(*) FILTER (WHERE h.status = 'failed' AND h.completed_at >= v_upto) AS unsettled_failed,
               count(*) FILTER (WHERE h.status = 'cancelled' AND h.completed_at >= v_upto) AS unsettled_cancelled
        FROM orchwf_instance_history h
        WHERE h.completed_at >= v_from AND h.completed_at < v_read_to
        GROUP BY 1) f ON f.minute = m.minute
    WHERE t.minute = m.minute AND NOT t.closed;
    GET DIAGNOSTICS v_n = ROW_COUNT;

    -- The samples committed by now (those of a minute not begun when this run did stay for
    -- the next, and, catching up, those past the minutes counted): each is deleted by the
    -- statement that counts it, so a claim committing meanwhile is counted next time,
    -- never lost or counted twice. A wait (ms) is clamped to [0, 1e9]: a NaN or an
    -- infinity in a sample written by hand never stops the rollup.
    WITH taken AS (
        DELETE FROM orchwf_wait_samples s
        WHERE s.claimed_at < least(v_to, date_trunc('minute', v_upto, 'UTC') + interval '2 minutes')
        RETURNING date_trunc('minute', s.claimed_at, 'UTC') AS minute, s.waits_ms),
    counted AS (
        SELECT t.minute, floor(16 * ln(least(greatest(x.ms, 0), 1e9)::float8 + 1) / ln(2))::smallint AS bucket,
               count(*) AS n
        FROM taken t CROSS JOIN LATERAL unnest(t.waits_ms) AS x(ms)
        WHERE t.minute >= v_hour
          AND EXISTS (SELECT 1 FROM orchwf_stats_minutes s WHERE s.minute = t.minute AND NOT s.closed)
        GROUP BY 1, 2),
    started AS (
        UPDATE orchwf_stats_minutes s SET started = s.started + c.n
        FROM (SELECT c.minute, sum(c.n) AS n FROM counted c GROUP BY 1) c
        WHERE s.minute = c.minute),
    added AS (
        INSERT INTO orchwf_wait_buckets AS b (minute, bucket, n)
        SELECT c.minute, c.bucket, c.n FROM counted c
        ON CONFLICT (minute, bucket) DO UPDATE SET n = b.n + EXCLUDED.n
        RETURNING b.minute)
    SELECT array_agg(DISTINCT a.minute) INTO v_touched FROM added a;
    v_touched := v_touched || v_counted;

    -- p50 and p99 of the minutes that got samples: the bucket where the rank (q x the
    -- count) falls, interpolated within it, as Prometheus's histogram_quantile does (a
    -- minute of few claims gets a sample's bucket, where percentile_cont interpolated
    -- between samples).
    IF v_touched IS NOT NULL THEN
        WITH b AS (
            SELECT b.minute, b.bucket, b.n, sum(b.n) OVER (PARTITION BY b.minute ORDER BY b.bucket) AS upto,
                   sum(b.n) OVER (PARTITION BY b.minute) AS total
            FROM orchwf_wait_buckets b WHERE b.minute = ANY (v_touched)),
        q AS (
            SELECT DISTINCT ON (b.minute, p.q) b.minute, p.q,
                   power(2::float8, b.bucket / 16.0::float8) - 1
                   + (power(2::float8, (b.bucket + 1) / 16.0::float8) - power(2::float8, b.bucket / 16.0::float8))
                     * least(1, greatest(0, (p.q * b.total - (b.upto - b.n)) / b.n)) AS ms
            FROM b CROSS JOIN (VALUES (0.5::float8), (0.99::float8)) AS p(q)
            WHERE b.upto >= p.q * b.total
            ORDER BY b.minute, p.q, b.bucket)
        UPDATE orchwf_stats_minutes t
        SET wait_p50_ms = x.p50, wait_p99_ms = x.p99
        FROM (SELECT q.minute, max(q.ms) FILTER (WHERE q.q = 0.5)::real AS p50,
                     max(q.ms) FILTER (WHERE q.q = 0.99)::real AS p99
              FROM q GROUP BY 1) x
        WHERE t.minute = x.minute;
    END IF;

    -- Minutes the settled count has passed are final: their buckets go.
    UPDATE orchwf_stats_minutes s SET closed = true
    WHERE NOT s.closed AND s.minute >= v_hour AND s.minute + interval '1 minute' <= v_upto;
    DELETE FROM orchwf_wait_buckets b WHERE b.minute < date_trunc('minute', v_upto, 'UTC');

    DELETE FROM orchwf_stats_minutes s WHERE s.minute < v_now - p_keep;
    DELETE FROM orchwf_queue_minutes q WHERE q.minute < v_now - p_keep;
    RETURN v_n;
END;
$$;
