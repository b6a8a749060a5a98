-- orchwf 012: queue controls. A row per queue an operator has set something on: pause
-- (orchwf_pause_queue / orchwf_resume_queue) and a rate limit (orchwf_set_queue_rate_limit,
-- sql/api/queues.sql). The claim reads it by
-- key; a queue without a row runs as before. New table only: nothing to lock, nothing
-- to move, and the workers of release 3 go on through the new function bodies.

CREATE TABLE orchwf_queues (
    name            text PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 255),
    paused          boolean NOT NULL DEFAULT false,   -- the claim takes nothing from a paused queue
    paused_at       timestamptz,                      -- when it was paused; NULL while it runs
    -- A rate limit: a token bucket of `burst` starts, refilled at rate_per_second, taken
    -- by the claims of this queue under this row's lock (orchwf_take_starts). NULL: none.
    rate_per_second double precision CHECK (rate_per_second > 0 AND rate_per_second <= 1000000),
    burst           integer CHECK (burst BETWEEN 1 AND 1000000),
    tokens          double precision NOT NULL DEFAULT 0,     -- starts allowed as of tokens_at
    tokens_at       timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT orchwf_queues_rate_limit_check CHECK ((rate_per_second IS NULL) = (burst IS NULL))
) WITH (
    -- A few rows, read by every claim; the row of a rate-limited queue is updated by each
    -- of its claims: room for HOT updates on the page, dead rows vacuumed early.
    fillfactor = 50,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);

-- The claim reads this table, and a rate-limited claim updates its row: a role that could
-- claim before (UPDATE on orchwf_ready_steps, for the claim's row locks) gets what it
-- needs here, so the runtime role of a least-privilege setup (docs/reliability.md) goes
-- on claiming once 012 is in, without a grant by hand first.
DO $$
DECLARE
    v_grantee text;
BEGIN
    FOR v_grantee IN
        SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END
        FROM pg_class c
        CROSS JOIN LATERAL aclexplode(c.relacl) a
        LEFT JOIN pg_roles r ON r.oid = a.grantee
        WHERE c.oid = 'orchwf_ready_steps'::regclass AND a.privilege_type = 'UPDATE' AND a.grantee <> c.relowner
    LOOP
        EXECUTE format('GRANT SELECT, INSERT, UPDATE ON orchwf_queues TO %s', v_grantee);
    END LOOP;
END;
$$;
