-- orchwf API: the claim (SELECT ... FOR UPDATE SKIP LOCKED on the ready queue).

CREATE OR REPLACE FUNCTION orchwf_claim_steps(
    p_worker        text,
    p_queues        text[],
    p_workflows     text[],
    p_limit         integer,
    p_lease_seconds double precision,
    p_suspects      boolean,  -- a quarantine worker: suspects only (see above)
    p_versions      text[]    -- the definition versions (hashes) the worker's code has; NULL: any
) RETURNS TABLE (
    step_inst_id     uuid,
    workflow_inst_id uuid,
    workflow_id      text,
    step_id          text,
    lease_token      bigint,
    attempt          integer,
    retry_count      integer,
    workflow_input   jsonb,
    metadata         jsonb,
    trace_id         text,
    completed        jsonb,
    step_input       jsonb
)
LANGUAGE plpgsql
SET search_path FROM CURRENT
-- Key lookups only. The ready and running lists are emptied and refilled thousands of
-- times between two autovacuum runs, so their statistics lag: a stale estimate must not
-- turn a lookup by key into a sequential scan over dead rows.
SET enable_seqscan = off
-- The ready queue is read in its index's order, a few entries per claim. Without this, a
-- table whose statistics lag (a backlog enqueued since the last ANALYZE) gets a bitmap
-- scan of every ready step of the queue and a sort of them all, on every claim: a claim
-- cost that grew with the backlog (the slow start of docs/benchmarks.md, "The ramp").
SET enable_bitmapscan = off
-- No JIT: enable_seqscan = off prices a scan it cannot avoid at 1e10, which would make
-- every call compile its plan (milliseconds) for a few key lookups.
SET jit = off
-- One plan, made once per connection: every join below is a key lookup whatever the
-- estimates, so the generic plan is as good as a custom one and costs no planning.
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    RETURN QUERY
    WITH picked AS MATERIALIZED (
        -- MATERIALIZED: the planner must not re-run this per row of the update (Oban's lesson).
        -- One ordered index scan per queue (LATERAL): "queue = ANY(...)" would defeat the
        -- index order and sort the whole ready table.
        -- Suspects (steps that were running in a process that died) are left to the
        -- quarantine worker, which takes them from their own partial index, one by one.
        SELECT x.ctid, x.step_inst_id
        -- Queue controls, for the workers of every release (sql/api/queues.sql): a paused
        -- queue claims nothing; a rate-limited one at most n, taken from its token bucket.
        FROM (SELECT u.name, CASE WHEN c.rate_per_second IS NULL THEN p_limit
                                  ELSE orchwf_take_starts(u.name, p_workflows, p_limit, p_suspects) END
              FROM unnest(p_queues) AS u(name) LEFT JOIN orchwf_queues c ON c.name = u.name
              WHERE c.paused IS NOT TRUE) AS q(name, n)
        CROSS JOIN LATERAL (
            SELECT * FROM (
                SELECT r.ctid, r.step_inst_id, r.priority, r.ready_at, r.workflow_inst_id
                FROM orchwf_ready_steps r
                WHERE NOT p_suspects AND r.queue = q.name AND r.workflow_id = ANY (p_workflows)
                  AND r.ready_at <= now() AND NOT r.suspect
                  AND (p_versions IS NULL OR r.definition_hash IS NULL OR r.definition_hash = ANY (p_versions))
                ORDER BY r.priority DESC, r.ready_at, r.workflow_inst_id, r.step_inst_id
                LIMIT q.n
                FOR UPDATE SKIP LOCKED) ordinary
            UNION ALL
            SELECT * FROM (
                SELECT r.ctid, r.step_inst_id, r.priority, r.ready_at, r.workflow_inst_id
                FROM orchwf_ready_steps r
                WHERE p_suspects AND r.suspect AND r.queue = q.name AND r.workflow_id = ANY (p_workflows)
                  AND r.ready_at <= now()
                  AND (p_versions IS NULL OR r.definition_hash IS NULL OR r.definition_hash = ANY (p_versions))
                ORDER BY r.priority DESC, r.ready_at, r.workflow_inst_id, r.step_inst_id
                LIMIT q.n
                FOR UPDATE SKIP LOCKED) suspects) x
        ORDER BY x.priority DESC, x.ready_at, x.workflow_inst_id, x.step_inst_id
        LIMIT p_limit),
    -- By the rows' addresses (a TID scan; the rows are locked, so they cannot move):
    -- "step_inst_id = ANY" let statistics that saw the queue empty pick the claim index,
    -- whose fourth column the IDs are, and read the whole backlog on every claim.
    gone AS (
        DELETE FROM orchwf_ready_steps r
        WHERE r.ctid = ANY (ARRAY(SELECT p.ctid FROM picked p))
        RETURNING r.step_inst_id, r.ready_at),
    waited AS (
        -- How long they waited in the queue: one row per claim, for the dashboard's trend
        -- (rolled up per minute and deleted by maintenance: sql/api/stats.sql).
        INSERT INTO orchwf_wait_samples (waits_ms)
        SELECT array_agg((extract(epoch FROM now() - g.ready_at) * 1000)::real) FROM gone g
        HAVING count(*) > 0
        RETURNING 1),
    claimed AS (
        UPDATE orchwf_live_steps s
        SET status = 'running',
            attempts = s.attempts + 1,
            lease_owner = p_worker,
            lease_token = nextval('orchwf_lease_token_seq'),
            lease_expires_at = now() + p_lease_seconds * interval '1 second',
            deadline_at = CASE WHEN s.timeout_seconds > 0 THEN now() + s.timeout_seconds * interval '1 second' END,
            started_at = coalesce(s.started_at, now()),
            updated_at = now()
        WHERE s.id = ANY (ARRAY(SELECT g.step_inst_id FROM gone g)) AND s.status IN ('pending', 'retrying')
        RETURNING s.id, s.workflow_inst_id, s.step_id, s.lease_token, s.attempts,
                  s.retry_count, s.input),
    leased AS (
        INSERT INTO orchwf_running_steps (step_inst_id, workflow_inst_id, lease_owner, lease_token)
        SELECT c.id, c.workflow_inst_id, p_worker, c.lease_token FROM claimed c
        ON CONFLICT ON CONSTRAINT orchwf_running_steps_pkey DO UPDATE
            SET lease_owner = EXCLUDED.lease_owner, lease_token = EXCLUDED.lease_token
        RETURNING 1),
    events AS (
        -- The compensation pseudo-step writes no step events of its own: its compensators
        -- write theirs, as in the in-process engine (lifecycle.py).
        INSERT INTO orchwf_event_history (id, workflow_inst_id, step_inst_id, event_type, event_data,
                                          instance_created_at)
        SELECT orchwf_uuid7(), c.workflow_inst_id, c.id,
               CASE WHEN c.attempts = 1 THEN 'step.started' ELSE 'step.retry' END,
               CASE WHEN c.attempts = 1 THEN jsonb_build_object('step_id', c.step_id)
                    ELSE jsonb_build_object('attempt', c.attempts) END,
               i.created_at
        FROM claimed c
        JOIN orchwf_live_instances i ON i.id = c.workflow_inst_id
        -- "= ANY (ARRAY(...))" too: as a plain join, the generic plan hashed the claimed
        -- steps and read every live instance (the backlog) to find a few created_at.
        WHERE c.step_id <> '$compensate' AND i.id = ANY (ARRAY(SELECT x.workflow_inst_id FROM claimed x))
        RETURNING 1)
    -- Empty documents come back as NULL (the worker reads NULL as empty): nothing to
    -- decode for the metadata, inputs and predecessors a step often does not have.
    SELECT c.id, c.workflow_inst_id, i.workflow_id, c.step_id, c.lease_token, c.attempts,
           c.retry_count, nullif(i.input, '{}'::jsonb), nullif(i.metadata, '{}'::jsonb), i.trace_id,
           (SELECT jsonb_agg(jsonb_build_array(p.step_id, p.output) ORDER BY p.completed_at, p.execution_order)
            FROM orchwf_live_steps p
            WHERE p.workflow_inst_id = c.workflow_inst_id AND p.status = 'completed'),
           nullif(c.input, '{}'::jsonb)
    FROM claimed c
    JOIN orchwf_live_instances i ON i.id = c.workflow_inst_id
    WHERE i.id = ANY (ARRAY(SELECT x.workflow_inst_id FROM claimed x));
END;
$$;

-- The claim of release 3's workers, which know no versions: any version of their
-- workflows (docs/signals.md, "Versions": deploy the release with versions first).
CREATE OR REPLACE FUNCTION orchwf_claim_steps(
    p_worker        text,
    p_queues        text[],
    p_workflows     text[],
    p_limit         integer,
    p_lease_seconds double precision,
    p_suspects      boolean
) RETURNS TABLE (
    step_inst_id     uuid,
    workflow_inst_id uuid,
    workflow_id      text,
    step_id          text,
    lease_token      bigint,
    attempt          integer,
    retry_count      integer,
    workflow_input   jsonb,
    metadata         jsonb,
    trace_id         text,
    completed        jsonb,
    step_input       jsonb
)
LANGUAGE sql
SET search_path FROM CURRENT
AS $$
    SELECT * FROM orchwf_claim_steps(p_worker, p_queues, p_workflows, p_limit, p_lease_seconds, p_suspects, NULL)
$$;
