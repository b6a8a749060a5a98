-- orchwf 013: concurrency keys (StepBuilder.with_concurrency, WorkflowBuilder.with_concurrency).
-- Admission control per key: a keyed step enters the ready queue only while its key has
-- a free slot; otherwise it waits in orchwf_key_waits and holds no worker slot. The claim
-- is unchanged. New tables and nullable columns only (no rewrite, no lock held for long),
-- and the workers of release 3 go on through the new function bodies (sql/api/keys.sql).

-- The key each step (or instance, for a workflow-level key) was given at enqueue, the
-- template rendered from the instance's input, and its limit. NULL: none.
ALTER TABLE orchwf_live_steps
    ADD COLUMN concurrency_key   text,
    ADD COLUMN concurrency_limit integer CHECK (concurrency_limit >= 1);
ALTER TABLE orchwf_live_instances
    ADD COLUMN concurrency_key   text,
    ADD COLUMN concurrency_limit integer CHECK (concurrency_limit >= 1),
    -- Every key of the instance and its steps, sorted: the key rows a finish locks (after
    -- the instances, in key order). NULL: no key; the finish then does nothing more.
    ADD COLUMN concurrency_keys  text[];
-- The key to admit under (NULL for every unkeyed step): the admission trigger
-- (orchwf_admit_ready) runs only for rows that carry one.
ALTER TABLE orchwf_ready_steps ADD COLUMN concurrency_key text;

-- A row per key ever used: its limit and the slots held (steps ready or running under it).
CREATE TABLE orchwf_concurrency_keys (
    key               text PRIMARY KEY,
    concurrency_limit integer NOT NULL CHECK (concurrency_limit >= 1),
    held              integer NOT NULL DEFAULT 0 CHECK (held >= 0),
    updated_at        timestamptz NOT NULL DEFAULT now()
) WITH (
    -- Updated twice per keyed step (admit, release): HOT room on the page, early vacuum.
    fillfactor = 50,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);

-- The slots held: a step (step-level key) or an instance (workflow-level key) admitted
-- and not yet released. Inserted by the admission, deleted by the release.
CREATE TABLE orchwf_key_slots (
    holder           uuid PRIMARY KEY,   -- the step's ID, or the instance's for a workflow-level key
    key              text NOT NULL,
    workflow_inst_id uuid NOT NULL,
    admitted_at      timestamptz NOT NULL DEFAULT now()
) WITH (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);

-- Holders waiting for a slot of their key, with the steps to make ready once admitted.
CREATE TABLE orchwf_key_waits (
    holder           uuid PRIMARY KEY,
    key              text NOT NULL,
    workflow_inst_id uuid NOT NULL,
    priority         integer NOT NULL,
    step_ids         uuid[] NOT NULL,
    parked_at        timestamptz NOT NULL DEFAULT now()
) WITH (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);
-- The release admits the next waiters of a key: highest priority first, then oldest
-- (holder IDs are time-ordered).
CREATE INDEX orchwf_key_waits_next_idx ON orchwf_key_waits (key, priority DESC, holder);

-- Whoever inserts into the ready queue admits keyed steps (the trigger of sql/api/keys.sql
-- writes these tables): a role that could make steps ready before gets what it needs, so
-- the runtime role of a least-privilege setup (docs/reliability.md) goes on working once
-- 013 is in, without a grant by hand first.
DO $$
DECLARE
    v_grantee text;
BEGIN
    FOR v_grantee IN
        SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END
        FROM pg_class c
        CROSS JOIN LATERAL aclexplode(c.relacl) a
        LEFT JOIN pg_roles r ON r.oid = a.grantee
        WHERE c.oid = 'orchwf_ready_steps'::regclass AND a.privilege_type = 'INSERT' AND a.grantee <> c.relowner
    LOOP
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON orchwf_concurrency_keys, orchwf_key_slots, '
                       'orchwf_key_waits TO %s', v_grantee);
    END LOOP;
END;
$$;
