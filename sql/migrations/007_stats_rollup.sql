-- orchwf 007: the dashboard's trends, rolled up per minute by maintenance.
--
-- The claim records how long the steps it takes waited (orchwf_wait_samples); the
-- supervisors' maintenance rolls each minute up (orchwf_roll_up_stats, sql/api/stats.sql):
-- finishes and failures from history's BRIN index, queue wait p50/p99 from the samples,
-- and each queue's backlog. The dashboard's overview reads these small tables, never
-- history. New tables only: workers of release 3 keep running (their claim is the
-- function sql/api defines, so they record samples too).

-- How long the steps each claim took had waited in the ready queue: one row per claim
-- (sql/api/claim.sql), read and deleted by the rollup below within a minute or so.
-- Insert/delete churn like the ready queue; no index (the rollup reads it whole).
CREATE TABLE orchwf_wait_samples (
    claimed_at timestamptz NOT NULL DEFAULT now(),
    waits_ms   real[] NOT NULL
) WITH (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);

-- The dashboard's trends, one row per minute (UTC), kept two days: the instances that
-- finished in it (from history's BRIN index on completed_at) and the queue waits of
-- the steps claimed in it. Rolled up by the supervisors' maintenance (orchwf_roll_up_stats);
-- a minute stays open (recomputed) until it is p_lag_seconds old.
CREATE TABLE orchwf_stats_minutes (
    minute      timestamptz PRIMARY KEY,
    completed   bigint NOT NULL DEFAULT 0,
    failed      bigint NOT NULL DEFAULT 0,
    cancelled   bigint NOT NULL DEFAULT 0,
    started     bigint NOT NULL DEFAULT 0,   -- step attempts claimed
    wait_p50_ms real,                        -- NULL: nothing claimed in that minute
    wait_p99_ms real,
    closed      boolean NOT NULL DEFAULT false,
    rolled_at   timestamptz NOT NULL DEFAULT now()
);

-- Each queue's backlog (ready steps), sampled by the same rollup: the most seen in the minute.
CREATE TABLE orchwf_queue_minutes (
    minute timestamptz NOT NULL,
    queue  text NOT NULL,
    ready  bigint NOT NULL,
    PRIMARY KEY (minute, queue)
);

-- Roles that run the daemon on an existing install (those that may insert into the ready
-- queue) get the new tables' privileges, so a least-privilege runtime role keeps working
-- after this migration (docs/reliability.md, "Least privilege").
DO $$
DECLARE
    v_role name;
BEGIN
    FOR v_role IN
        SELECT DISTINCT r.rolname FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
        JOIN pg_roles r ON r.oid = a.grantee
        WHERE c.oid = 'orchwf_ready_steps'::regclass AND a.privilege_type = 'INSERT' AND a.grantee <> c.relowner
    LOOP
        EXECUTE format('GRANT SELECT, INSERT, DELETE ON orchwf_wait_samples TO %I', v_role);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON orchwf_stats_minutes, orchwf_queue_minutes TO %I', v_role);
    END LOOP;
END;
$$;
