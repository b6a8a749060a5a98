-- orchwf 016: the stats rollup counts each finish and each queue wait once
-- (docs/benchmarks.md, "The stats rollup, counted once").
--
-- The orchwf_roll_up_stats before 016 recounted every open minute from history and sorted
-- all of its queue waits every 10 s: at 3,000 finishes/s, 0.2-0.5 s of a core a run, and
-- about 40% of the soak's remaining p99 spikes on a 2-core host. Now (sql/api/stats.sql):
--   * finishes are counted from where the last run stopped (counted_to, kept on the minute
--     rows); those of the last p_lag_seconds, which a late commit could still add to, are
--     counted provisionally (unsettled_*) and again by the next run;
--   * each claim's wait sample is taken (deleted) and added, once, to a histogram of its
--     minute (orchwf_wait_buckets: 16 buckets per doubling, so p50 and p99 are read within one bucket, 4.4%);
--     a minute's buckets are deleted when it closes, its percentiles final.
-- New columns with constant defaults (no rewrite) and a new table: the workers of earlier
-- releases run on; their supervisors call the same function, whose new body the API installs.

ALTER TABLE orchwf_stats_minutes
    ADD COLUMN unsettled_completed bigint NOT NULL DEFAULT 0,
    ADD COLUMN unsettled_failed    bigint NOT NULL DEFAULT 0,
    ADD COLUMN unsettled_cancelled bigint NOT NULL DEFAULT 0,
    ADD COLUMN counted_to          timestamptz;

-- The queue waits of each open minute, as a histogram: bucket b holds waits w (ms) with
-- floor(16 * log2(w + 1)) = b. Rows of a minute live until it closes (a minute or so).
CREATE TABLE orchwf_wait_buckets (
    minute timestamptz NOT NULL,
    bucket smallint NOT NULL,
    n      bigint NOT NULL,
    PRIMARY KEY (minute, bucket)
) WITH (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0,
    vacuum_truncate = false
);

-- Roles that run the daemon (those that may insert into the ready queue) get the new
-- table's privileges, as 007 did for its tables (docs/reliability.md, "Least privilege").
DO $$
DECLARE
    v_role name;
BEGIN
    FOR v_role IN
        SELECT DISTINCT r.rolname FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
        JOIN pg_roles r ON r.oid = a.grantee
        WHERE c.oid = 'orchwf_ready_steps'::regclass AND a.privilege_type = 'INSERT' AND a.grantee <> c.relowner
    LOOP
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON orchwf_wait_buckets TO %I', v_role);
    END LOOP;
END;
$$;
