-- orchwf 011 down: workers claim any version again. The functions that take versions
-- go, the columns and the versions table go, and the functions 011 changed (each queues
-- steps with their version) come back as they were before it (below).
DROP FUNCTION IF EXISTS orchwf_claim_steps(text, text[], text[], integer, double precision, boolean, text[]);
DROP FUNCTION IF EXISTS orchwf_finish_and_claim(uuid[], bigint[], text[], jsonb[], text[], bigint[],
    double precision[], jsonb[], text, text[], text[], integer, double precision, boolean, text[]);
DROP TABLE IF EXISTS orchwf_workflow_versions;
DROP INDEX IF EXISTS orchwf_li_version_idx;
DROP FUNCTION IF EXISTS orchwf_unserved_versions(double precision, integer);
ALTER TABLE orchwf_workers DROP COLUMN IF EXISTS versions;
ALTER TABLE orchwf_ready_steps DROP COLUMN IF EXISTS definition_hash;

CREATE OR REPLACE FUNCTION orchwf_claim_steps(
    p_worker        text,
    p_queues        text[],
    p_workflows     text[],
    p_limit         integer,
    p_lease_seconds double precision,
    p_suspects      boolean   -- a quarantine worker: suspects only (see above)
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
        SELECT x.step_inst_id
        FROM unnest(p_queues) AS q(name)
        CROSS JOIN LATERAL (
            SELECT * FROM (
                SELECT r.step_inst_id, r.priority, r.ready_at, r.workflow_inst_id
                FROM orchwf_ready_steps r
                WHERE NOT p_suspects AND r.queue = q.name AND r.workflow_id = ANY (p_workflows)
                  AND r.ready_at <= now() AND NOT r.suspect
                ORDER BY r.priority DESC, r.ready_at, r.workflow_inst_id, r.step_inst_id
                LIMIT p_limit
                FOR UPDATE SKIP LOCKED) ordinary
            UNION ALL
            SELECT * FROM (
                SELECT r.step_inst_id, r.priority, r.ready_at, r.workflow_inst_id
                FROM orchwf_ready_steps r
                WHERE p_suspects AND r.suspect AND r.queue = q.name AND r.workflow_id = ANY (p_workflows)
                  AND r.ready_at <= now()
                ORDER BY r.priority DESC, r.ready_at, r.workflow_inst_id, r.step_inst_id
                LIMIT p_limit
                FOR UPDATE SKIP LOCKED) suspects) x
        ORDER BY x.priority DESC, x.ready_at, x.workflow_inst_id, x.step_inst_id
        LIMIT p_limit),
    -- "= ANY (ARRAY(...))", not a join: a key lookup per row in the generic plan too.
    gone AS (
        DELETE FROM orchwf_ready_steps r
        WHERE r.step_inst_id = ANY (ARRAY(SELECT p.step_inst_id FROM picked p))
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

CREATE OR REPLACE FUNCTION orchwf_enqueue_many(
    p_workflow_id      text,
    p_inputs           jsonb[],
    p_metadata         jsonb DEFAULT '{}',
    p_priority         integer DEFAULT NULL,
    p_idempotency_keys text[] DEFAULT NULL,
    p_queue            text DEFAULT NULL,
    p_run_after        timestamptz DEFAULT NULL
) RETURNS uuid[]
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_def      jsonb;
    v_hash     text;
    v_n        integer := coalesce(cardinality(p_inputs), 0);
    v_keys     text[];
    v_ids      uuid[];
    v_inserted uuid[];
    v_result   uuid[];
    v_created  timestamptz[];
    v_taken    text[];
    v_queue    text := coalesce(p_queue, 'default');
    v_priority integer := coalesce(p_priority, 0);
    v_meta     jsonb := coalesce(p_metadata, '{}');
BEGIN
    SELECT d.definition, d.version_hash INTO v_def, v_hash
    FROM orchwf_workflow_definitions d WHERE d.workflow_id = p_workflow_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'workflow not found: %', p_workflow_id USING ERRCODE = 'OW404';
    END IF;
    IF v_n = 0 THEN
        RETURN '{}';
    END IF;
    IF jsonb_typeof(v_meta) <> 'object' THEN
        RAISE EXCEPTION 'metadata must be a JSON object' USING ERRCODE = 'OW400';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(p_inputs) AS x(v) WHERE x.v IS NULL OR jsonb_typeof(x.v) <> 'object') THEN
        RAISE EXCEPTION 'input must be a JSON object' USING ERRCODE = 'OW400';
    END IF;
    IF length(v_queue) NOT BETWEEN 1 AND 255 THEN
        RAISE EXCEPTION 'queue name must be 1 to 255 characters' USING ERRCODE = 'OW400';
    END IF;
    -- Priorities are summed (instance + step, + 1000 for a compensation) in int4: keep
    -- each term well inside it.
    IF abs(v_priority) > 536870912 THEN
        RAISE EXCEPTION 'priority % is out of range (at most 536870912 either way)', v_priority USING ERRCODE = 'OW400';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(p_idempotency_keys) AS k(v) WHERE length(k.v) NOT BETWEEN 1 AND 255)
       OR length(v_meta->>'trace_id') > 255 OR length(v_meta->>'correlation_id') > 255
       OR length(v_meta->>'business_id') > 255 THEN
        RAISE EXCEPTION 'idempotency keys and trace, correlation and business IDs must be 1 to 255 characters'
            USING ERRCODE = 'OW400';
    END IF;
    v_keys := coalesce(p_idempotency_keys, array_fill(NULL::text, ARRAY[v_n]));
    IF cardinality(v_keys) <> v_n THEN
        RAISE EXCEPTION 'got % idempotency keys for % inputs', cardinality(v_keys), v_n USING ERRCODE = 'OW400';
    END IF;

    -- A new instance's partition of history must exist (it holds its events from now on):
    -- maintenance keeps partitions ahead of now, and this covers a maintenance that has
    -- been down for days.
    IF clock_timestamp() + interval '1 minute' >= (SELECT p.horizon FROM orchwf_partitioning p) THEN
        PERFORM orchwf_extend_partitions();
    END IF;

    -- Idempotency keys are unique per workflow among live and finished instances alike:
    -- producers of the same key serialise on a lock, then look in both.
    IF p_idempotency_keys IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('orchwf_key:' || p_workflow_id || ':' || k.key, 0))
        FROM (SELECT DISTINCT x.key FROM unnest(v_keys) AS x(key) WHERE x.key IS NOT NULL ORDER BY 1) k;
        SELECT array_agg(DISTINCT o.idempotency_key) INTO v_taken
        FROM orchwf_workflow_instances o
        WHERE o.workflow_id = p_workflow_id AND o.idempotency_key = ANY (v_keys);
    END IF;

    -- created_at is the time of the ID (orchwf_uuid7_time): a lookup by ID finds the
    -- instance's history partition from the ID alone.
    SELECT array_agg(orchwf_uuid7()) INTO v_ids FROM generate_series(1, v_n);

    WITH ins AS (
        INSERT INTO orchwf_live_instances AS i (
            id, workflow_id, status, input, metadata, trace_id, correlation_id, business_id,
            priority, queue, idempotency_key, run_mode, definition_hash, steps_remaining, created_at)
        SELECT x.id, p_workflow_id, 'pending', x.input, v_meta,
               coalesce(nullif(v_meta->>'trace_id', ''), orchwf_uuid7()::text),
               coalesce(nullif(v_meta->>'correlation_id', ''), orchwf_uuid7()::text),
               coalesce(v_meta->>'business_id', ''),
               v_priority, v_queue, x.key, 'daemon', v_hash, jsonb_array_length(v_def->'steps'),
               orchwf_uuid7_time(x.id)
        FROM unnest(v_ids, p_inputs, v_keys) AS x(id, input, key)
        WHERE x.key IS NULL OR v_taken IS NULL OR x.key <> ALL (v_taken)
        ON CONFLICT (workflow_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
        RETURNING i.id, i.created_at)
    SELECT coalesce(array_agg(ins.id), '{}'), coalesce(array_agg(ins.created_at), '{}')
    INTO v_inserted, v_created FROM ins;

    IF cardinality(v_inserted) > 0 THEN
        -- MATERIALIZED: the definition is read once per call. Inlined (a CTE used once
        -- is), it was parsed again for every instance: a fifth of enqueue's work.
        WITH defsteps AS MATERIALIZED (
            SELECT st.value->>'id' AS step_id,
                   (st.ord - 1)::integer AS ord,
                   coalesce((st.value->>'priority')::integer, 0) AS priority,
                   ARRAY(SELECT jsonb_array_elements_text(st.value->'dependencies')) AS deps,
                   ARRAY(SELECT jsonb_array_elements_text(coalesce(st.value->'dependents', '[]'))) AS dependents,
                   coalesce((st.value->'retry_policy'->>'max_attempts')::integer, 1) AS max_attempts,
                   (st.value->>'timeout')::double precision AS timeout,
                   coalesce((st.value->>'required')::boolean, true) AS required,
                   coalesce((st.value->>'crash_counts_as_attempt')::boolean, false) AS crash_counts,
                   coalesce((st.value->>'has_compensator')::boolean, false) AS has_compensator,
                   coalesce((st.value->>'delay')::double precision, 0) AS delay,
                   st.value->>'signal' AS signal,
                   (st.value->>'signal_timeout')::double precision AS signal_timeout
            FROM jsonb_array_elements(v_def->'steps') WITH ORDINALITY AS st(value, ord)),
        new_steps AS (
            INSERT INTO orchwf_live_steps AS s (
                id, step_id, workflow_inst_id, status, execution_order, priority, dependencies,
                dependents, pending_deps, run_after, max_attempts, timeout_seconds, required,
                crash_counts_as_attempt, has_compensator, delay_seconds, wait_signal, wait_timeout)
            SELECT orchwf_uuid7(), d.step_id, i.id, 'pending', d.ord, d.priority, d.deps,
                   d.dependents, cardinality(d.deps),
                   -- a first step waits for the start time, then its own delay (with_delay);
                   -- one that waits for a signal, until its timeout (a signal comes sooner)
                   CASE WHEN cardinality(d.deps) = 0 AND d.signal IS NOT NULL
                        THEN CASE WHEN d.signal_timeout > 0
                                  THEN greatest(p_run_after, now()) + d.signal_timeout * interval '1 second' END
                        WHEN cardinality(d.deps) = 0 AND (p_run_after > now() OR d.delay > 0)
                        THEN greatest(p_run_after, now()) + d.delay * interval '1 second' END,
                   d.max_attempts, d.timeout, d.required, d.crash_counts, d.has_compensator, d.delay, d.signal,
                   d.signal_timeout
            FROM unnest(v_inserted) AS i(id) CROSS JOIN defsteps d
            RETURNING s.id, s.workflow_inst_id, s.priority, s.pending_deps, s.run_after, s.wait_signal),
        new_ready AS (
            INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority)
            SELECT n.id, n.workflow_inst_id, p_workflow_id, v_queue, n.priority + v_priority
            FROM new_steps n WHERE n.pending_deps = 0 AND n.run_after IS NULL AND n.wait_signal IS NULL
            RETURNING 1)
        INSERT INTO orchwf_event_history (id, workflow_inst_id, event_type, event_data, instance_created_at)
        SELECT orchwf_uuid7(), i.id, 'workflow.started', jsonb_build_object('workflow_id', p_workflow_id), i.at
        FROM unnest(v_inserted, v_created) AS i(id, at);

        IF p_run_after IS NULL OR p_run_after <= now() THEN
            -- One notification per transaction and queue: Postgres folds identical payloads.
            PERFORM pg_notify('orchwf_ready', v_queue);
        END IF;
        IF p_run_after > now() OR v_def @? '$.steps[*] ? (@.delay > 0 || @.signal_timeout > 0)' THEN
            PERFORM pg_notify('orchwf_scheduled', '');  -- the scheduler learns the new due time
        END IF;
    END IF;

    IF p_idempotency_keys IS NULL THEN
        RETURN v_ids;  -- no keys, no conflicts: every instance was inserted, in input order
    END IF;
    -- The instance each key already had (or the first one of this call that took it).
    SELECT array_agg(coalesce(ins.id, old.id) ORDER BY x.ord) INTO v_result
    FROM unnest(v_ids, v_keys) WITH ORDINALITY AS x(id, key, ord)
    LEFT JOIN unnest(v_inserted) AS ins(id) ON ins.id = x.id
    LEFT JOIN LATERAL (SELECT o.id FROM orchwf_workflow_instances o
                       WHERE ins.id IS NULL AND o.workflow_id = p_workflow_id AND o.idempotency_key = x.key
                       LIMIT 1) old ON true;
    RETURN v_result;
END;
$$;

-- Cancel what is left of an instance and end it (or hand it to its compensation step).
-- The caller holds the instance's row lock.
CREATE OR REPLACE FUNCTION orchwf_end_instance(p_inst uuid, p_final text, p_error text)
RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_queue text;
BEGIN
    -- Its child workflows first (child_workflow_step), before this instance's own rows:
    -- a child that finishes meanwhile reports to a step this transaction has not locked.
    PERFORM orchwf_cancel_workflow(c.id) FROM orchwf_live_instances c
    WHERE c.metadata ? 'orchwf_parent' AND c.metadata->>'orchwf_parent' = p_inst::text
      AND c.status IN ('pending', 'running');
    DELETE FROM orchwf_ready_steps WHERE workflow_inst_id = p_inst;
    -- Running steps lose their lease here: whatever their workers return is discarded.
    DELETE FROM orchwf_running_steps WHERE workflow_inst_id = p_inst;
    UPDATE orchwf_live_steps
    SET status = 'cancelled', completed_at = now(), updated_at = now(), run_after = NULL,
        lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, deadline_at = NULL
    WHERE workflow_inst_id = p_inst AND status IN ('pending', 'running', 'retrying')
      AND step_id <> '$compensate';

    IF EXISTS (SELECT 1 FROM orchwf_live_steps
               WHERE workflow_inst_id = p_inst AND status = 'completed' AND has_compensator
                 AND step_id <> '$compensate') THEN
        -- Compensators are user code: a worker runs them as the '$compensate' step, which
        -- ends the instance with p_final when it finishes.
        INSERT INTO orchwf_live_steps AS s (
            id, step_id, workflow_inst_id, status, input, execution_order, max_attempts, required)
        VALUES (orchwf_uuid7(), '$compensate', p_inst, 'pending',
                jsonb_build_object('final_status', p_final, 'error', p_error), 1000000, 1, true)
        ON CONFLICT (workflow_inst_id, step_id) DO UPDATE
            SET status = 'pending', input = EXCLUDED.input, attempts = 0, retry_count = 0,
                crashes = 0, error = NULL, completed_at = NULL, updated_at = now();
        INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority)
        SELECT s.id, i.id, i.workflow_id, i.queue, i.priority + 1000
        FROM orchwf_live_steps s JOIN orchwf_live_instances i ON i.id = s.workflow_inst_id
        WHERE s.workflow_inst_id = p_inst AND s.step_id = '$compensate'
        ON CONFLICT DO NOTHING
        RETURNING queue INTO v_queue;
        UPDATE orchwf_live_instances
        SET error = p_error, steps_remaining = 1, updated_at = now() WHERE id = p_inst;
        PERFORM pg_notify('orchwf_ready', coalesce(v_queue, 'default'));
        RETURN;
    END IF;

    UPDATE orchwf_live_instances i
    SET status = p_final, error = p_error, completed_at = now(), updated_at = now(),
        steps_remaining = 0, current_step_id = NULL, output = d.output, context = d.context
    FROM orchwf_instance_documents(p_inst) d
    WHERE i.id = p_inst;
    PERFORM orchwf_record_event(p_inst, NULL, 'workflow.' || p_final,
                                CASE WHEN p_final = 'failed' THEN jsonb_build_object('error', p_error)
                                     ELSE '{}'::jsonb END);
    PERFORM orchwf_archive_instances(ARRAY[p_inst]);
    PERFORM pg_notify('orchwf_done', '');
END;
$$;

-- Record a batch of step results. Each row is fenced by its lease token: a result from
-- a worker that lost its lease matches no row and is reported back as not accepted.
-- Outcomes are orchwf.lifecycle.Outcome's:
--   completed | failed | skipped  (final)
--   retry     (a failed attempt; back to the queue after p_delays seconds)
--   requeue   (the worker died: back to the queue; counts as a crash)
--   release   (graceful shutdown: back to the queue, the attempt not counted)
CREATE OR REPLACE FUNCTION orchwf_finish_steps(
    p_ids       uuid[],
    p_tokens    bigint[],
    p_outcomes  text[],
    p_outputs   jsonb[],
    p_errors    text[],
    p_durations bigint[],
    p_delays    double precision[],
    p_inputs    jsonb[] DEFAULT NULL   -- the input each attempt saw, kept for operators
) RETURNS TABLE (step_inst_id uuid, accepted boolean)
LANGUAGE plpgsql
SET search_path FROM CURRENT
-- Key lookups only. The runtime tables are emptied and refilled thousands of times
-- between two autovacuum runs, so their statistics lag: a stale estimate must not turn a
-- lookup by key into a sequential scan over dead rows.
SET enable_seqscan = off
-- Nor into a bitmap scan of a whole index: with a table analyzed while empty, the soak's
-- finish read every live instance through the created_at index to find a few by ID.
SET enable_bitmapscan = off
-- No JIT: enable_seqscan = off prices a scan it cannot avoid at 1e10, which would make
-- every call compile its plan (milliseconds) for a few key lookups.
SET jit = off
AS $$
DECLARE
    v_accepted uuid[];
    v_insts    uuid[];
    v_ended    uuid[];
    v_row      record;
    v_released integer := 0;
    v_n        integer;
    v_requeued uuid[];   -- accepted attempts that go back to the queue
    v_parents  boolean;  -- an accepted step completed (or was skipped) and has dependents
    v_failed   boolean;  -- a required step failed for good
    v_comp     boolean;  -- a compensation step finished
    v_later    boolean;  -- a failed attempt waits for a backoff
    v_delayed  boolean;  -- a released dependent waits for its delay (with_delay)
BEGIN
    IF EXISTS (SELECT 1 FROM unnest(p_outcomes) o
               WHERE o NOT IN ('completed', 'failed', 'skipped', 'retry', 'requeue', 'release', 'wait')) THEN
        RAISE EXCEPTION 'unknown outcome in %', p_outcomes USING ERRCODE = 'OW400';
    END IF;

    -- Instances first, in id order (the global lock order).
    SELECT array_agg(DISTINCT s.workflow_inst_id) INTO v_insts
    FROM orchwf_live_steps s WHERE s.id = ANY (p_ids);
    -- NO KEY UPDATE, not UPDATE: the in-process store's step writes take KEY SHARE locks
    -- on these rows, and must not queue behind (or deadlock with) a finish.
    PERFORM 1 FROM orchwf_live_instances i WHERE i.id = ANY (v_insts) ORDER BY i.id FOR NO KEY UPDATE;

    WITH r AS (
        SELECT * FROM unnest(p_ids, p_tokens, p_outcomes, p_outputs, p_errors, p_durations, p_delays, p_inputs)
                 AS r(id, token, outcome, output, error, duration, delay, input)),
    done AS (
        UPDATE orchwf_live_steps s
        SET status = CASE r.outcome WHEN 'retry' THEN 'retrying' WHEN 'requeue' THEN 'retrying'
                                    WHEN 'release' THEN 'pending' WHEN 'wait' THEN 'pending' ELSE r.outcome END,
            -- 'wait': a child workflow started (child_workflow_step); the step waits for its
            -- report (orchwf_archive_instances), which is not an attempt.
            attempts = s.attempts - (r.outcome = 'wait')::integer,
            wait_signal = CASE WHEN r.outcome = 'wait' THEN 'orchwf:child:' || s.id || ':' || s.retry_count
                               ELSE s.wait_signal END,
            output = CASE WHEN r.outcome = 'completed' THEN coalesce(r.output, '{}') ELSE s.output END,
            input = coalesce(r.input, s.input),
            -- A completed step keeps no error of an earlier attempt (as in-process).
            error = CASE r.outcome WHEN 'completed' THEN NULL WHEN 'wait' THEN NULL WHEN 'release' THEN s.error
                                   ELSE r.error END,
            completed_at = CASE WHEN r.outcome IN ('completed', 'failed', 'skipped') THEN now() END,
            duration_ms = coalesce(r.duration, s.duration_ms),
            retry_count = s.retry_count + (r.outcome = 'retry')::integer,
            last_retry_at = CASE WHEN r.outcome IN ('retry', 'requeue') THEN now() ELSE s.last_retry_at END,
            run_after = CASE WHEN r.outcome = 'retry' AND r.delay > 0
                             THEN now() + r.delay * interval '1 second' END,
            lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, deadline_at = NULL,
            updated_at = now()
        FROM r
        WHERE s.id = r.id AND s.id = ANY (p_ids) AND s.lease_token = r.token AND s.status = 'running'
        RETURNING s.id, s.workflow_inst_id, s.step_id, s.status, r.outcome, r.error, r.output AS reported,
                  r.duration, r.delay,
                  s.retry_count, s.attempts, cardinality(s.dependents) > 0 AS has_dependents),
    events AS (
        -- One event per result, and a second one (step.skipped) for a skipped step. Only
        -- the document of the event written is built. The compensation pseudo-step
        -- writes none (lifecycle.py).
        INSERT INTO orchwf_event_history (id, workflow_inst_id, step_inst_id, event_type, event_data,
                                          instance_created_at)
        SELECT orchwf_uuid7(), d.workflow_inst_id, d.id, e.event_type, e.event_data, i.created_at
        FROM done d
        -- "AND i.id = ANY (v_insts)" on every join with the live instances: a key
        -- lookup whatever the statistics say. A churning table is often analyzed while
        -- every row is dead; its estimate is then one row at any size, and the planner
        -- may read all of it (the backlog) once per join (tests/storage/test_plans.py).
        JOIN orchwf_live_instances i ON i.id = d.workflow_inst_id AND i.id = ANY (v_insts)
        CROSS JOIN LATERAL (
            SELECT CASE d.outcome WHEN 'completed' THEN 'step.completed' WHEN 'retry' THEN 'step.attempt_failed'
                                  WHEN 'requeue' THEN 'step.rescued' WHEN 'release' THEN 'step.released'
                                  WHEN 'wait' THEN 'step.child_started' ELSE 'step.failed' END,
                   CASE d.outcome WHEN 'completed' THEN jsonb_build_object('duration_ms', d.duration)
                                  WHEN 'retry' THEN jsonb_build_object('error', d.error, 'attempt', d.attempts,
                                                                       'retry_in_seconds', d.delay)
                                  WHEN 'requeue' THEN jsonb_build_object('cause', d.error)
                                  WHEN 'release' THEN '{}'::jsonb
                                  WHEN 'wait' THEN jsonb_build_object('child_instance_id',
                                                                      d.reported->>'child_instance_id')
                                  ELSE jsonb_build_object('error', d.error, 'retries', d.retry_count) END
            UNION ALL
            SELECT 'step.skipped', jsonb_build_object('error', d.error) WHERE d.outcome = 'skipped'
        ) AS e(event_type, event_data)
        WHERE d.step_id <> '$compensate'
        RETURNING 1),
    unlisted AS (
        -- "= ANY (p_ids)": an index scan whatever the planner guesses for r; the running
        -- list churns, and a sequential scan would wade through its dead rows.
        DELETE FROM orchwf_running_steps x USING r
        WHERE x.step_inst_id = ANY (p_ids) AND x.step_inst_id = r.id AND x.lease_token = r.token
        RETURNING 1)
    SELECT coalesce(array_agg(d.id), '{}'),
           coalesce(array_agg(d.id) FILTER (WHERE d.outcome IN ('retry', 'requeue', 'release')), '{}'),
           coalesce(bool_or(d.status IN ('completed', 'skipped') AND d.has_dependents), false),
           coalesce(bool_or(d.status = 'failed' AND d.step_id <> '$compensate'), false),
           coalesce(bool_or(d.step_id = '$compensate' AND d.status IN ('completed', 'failed', 'skipped')), false),
           coalesce(bool_or(d.outcome = 'retry' AND d.delay > 0), false)
    INTO v_accepted, v_requeued, v_parents, v_failed, v_comp, v_later
    FROM done d;

    -- The statements below only run when the batch needs them: each costs a plan
    -- execution even when it matches nothing.

    -- Retries that wait for a backoff: tell the supervisors when to promote them.
    IF v_later THEN
        PERFORM pg_notify('orchwf_scheduled', '');
    END IF;

    -- Attempts that go straight back to the queue.
    IF cardinality(v_requeued) > 0 THEN
        -- A step that was running in a process that died is a suspect (docs/reliability.md).
        INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority, suspect)
        SELECT s.id, i.id, i.workflow_id, i.queue, s.priority + i.priority, s.crashes > 0
        FROM orchwf_live_steps s JOIN orchwf_live_instances i ON i.id = s.workflow_inst_id AND i.id = ANY (v_insts)
        WHERE s.id = ANY (v_requeued) AND s.status IN ('retrying', 'pending') AND s.run_after IS NULL
          AND i.status IN ('pending', 'running')
        ON CONFLICT DO NOTHING;
        GET DIAGNOSTICS v_n = ROW_COUNT;
        v_released := v_released + v_n;
    END IF;

    -- Release dependents: completed and skipped (optional, failed) steps satisfy them.
    IF v_parents THEN
        WITH dec AS (
            SELECT s.workflow_inst_id, c.child, count(*)::integer AS n
            FROM orchwf_live_steps s, unnest(s.dependents) AS c(child)
            WHERE s.id = ANY (v_accepted) AND s.status IN ('completed', 'skipped')
            GROUP BY 1, 2),
        released AS (
            -- A dependent with a delay (with_delay) waits in run_after for the scheduler; one
            -- that waits for a signal (wait_for_signal) is ready if a signal is there, else
            -- it waits for orchwf_signal, or its timeout in run_after. (orchwf_signal locks
            -- the instance first, as this function does: it sees this release, or this
            -- statement sees its signal.)
            UPDATE orchwf_live_steps s
            SET pending_deps = s.pending_deps - dec.n, updated_at = now(),
                run_after = CASE WHEN s.pending_deps - dec.n > 0 THEN s.run_after
                                 WHEN s.delay_seconds > 0 THEN now() + s.delay_seconds * interval '1 second'
                                 WHEN s.wait_signal IS NOT NULL AND s.wait_timeout > 0
                                      AND NOT orchwf_signal_waiting(s.workflow_inst_id, s.wait_signal)
                                 THEN now() + s.wait_timeout * interval '1 second'
                                 ELSE s.run_after END
            FROM dec
            WHERE s.workflow_inst_id = dec.workflow_inst_id AND s.workflow_inst_id = ANY (v_insts)
              AND s.step_id = dec.child AND s.status = 'pending'
            RETURNING s.id, s.workflow_inst_id, s.priority, s.pending_deps, s.run_after, s.wait_signal),
        ready AS (
            INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority)
            SELECT r.id, i.id, i.workflow_id, i.queue, r.priority + i.priority
            FROM released r JOIN orchwf_live_instances i ON i.id = r.workflow_inst_id AND i.id = ANY (v_insts)
            WHERE r.pending_deps = 0 AND r.run_after IS NULL AND i.status IN ('pending', 'running')
              AND (r.wait_signal IS NULL OR orchwf_signal_waiting(r.workflow_inst_id, r.wait_signal))
            ON CONFLICT DO NOTHING
            RETURNING 1)
        SELECT (SELECT count(*) FROM ready), EXISTS (SELECT 1 FROM released r WHERE r.run_after IS NOT NULL)
        INTO v_n, v_delayed;
        v_released := v_released + v_n;
        IF v_delayed THEN
            PERFORM pg_notify('orchwf_scheduled', '');
        END IF;
    END IF;

    -- Count finished steps against their instances and, in the same UPDATE (one new row
    -- version per instance, not two), complete the instances with nothing left to run:
    -- output is the flat merge of step outputs in completion order; context adds each
    -- output under its step ID. An instance with a required step that failed for good is
    -- not completed here: the failure handling below ends it.
    WITH f AS (
        SELECT s.workflow_inst_id AS inst, count(*)::integer AS n, bool_or(s.status = 'failed') AS failed
        FROM orchwf_live_steps s
        WHERE s.id = ANY (v_accepted) AND s.status IN ('completed', 'skipped', 'failed')
          AND s.step_id <> '$compensate'
        GROUP BY 1),
    c AS (
        SELECT f.inst, f.n, x.completing, m.output, m.context
        FROM f
        JOIN orchwf_live_instances i ON i.id = f.inst AND i.id = ANY (v_insts)
        CROSS JOIN LATERAL (SELECT i.steps_remaining - f.n <= 0 AND NOT f.failed
                                   AND i.status IN ('pending', 'running') AS completing) x
        LEFT JOIN LATERAL (SELECT d.output, d.context FROM orchwf_instance_documents(f.inst) d
                           WHERE x.completing) m ON true),
    counted AS (
        UPDATE orchwf_live_instances i
        SET steps_remaining = i.steps_remaining - c.n,
            status = CASE WHEN c.completing THEN 'completed'
                          WHEN i.status = 'pending' THEN 'running' ELSE i.status END,
            completed_at = CASE WHEN c.completing THEN now() ELSE i.completed_at END,
            current_step_id = CASE WHEN c.completing THEN NULL ELSE i.current_step_id END,
            output = CASE WHEN c.completing THEN c.output ELSE i.output END,
            context = CASE WHEN c.completing THEN c.context ELSE i.context END,
            updated_at = now()
        FROM c
        WHERE i.id = c.inst AND i.id = ANY (v_insts)
        RETURNING i.id, i.started_at, i.created_at, c.completing),
    completed AS (
        INSERT INTO orchwf_event_history (id, workflow_inst_id, event_type, event_data, instance_created_at)
        SELECT orchwf_uuid7(), f.id, 'workflow.completed',
               jsonb_build_object('duration_ms', (extract(epoch FROM now() - f.started_at) * 1000)::bigint),
               f.created_at
        FROM counted f
        WHERE f.completing
        RETURNING workflow_inst_id)
    SELECT array_agg(completed.workflow_inst_id) INTO v_ended FROM completed;
    IF v_ended IS NOT NULL THEN
        PERFORM orchwf_archive_instances(v_ended);
        PERFORM pg_notify('orchwf_done', '');
    END IF;

    -- A required step that failed for good ends its instance.
    IF v_failed THEN
        FOR v_row IN
            SELECT s.workflow_inst_id AS inst, min(s.step_id) AS step_id, min(s.error) AS error,
                   min(s.attempts) AS attempts
            FROM orchwf_live_steps s JOIN orchwf_live_instances i ON i.id = s.workflow_inst_id AND i.id = ANY (v_insts)
            WHERE s.id = ANY (v_accepted) AND s.status = 'failed' AND s.step_id <> '$compensate'
              AND i.status IN ('pending', 'running') AND NOT EXISTS (
                  SELECT 1 FROM orchwf_live_steps c
                  WHERE c.workflow_inst_id = s.workflow_inst_id AND c.step_id = '$compensate'
                    AND c.status IN ('pending', 'running', 'retrying'))
            GROUP BY s.workflow_inst_id
            ORDER BY s.workflow_inst_id
        LOOP
            PERFORM orchwf_end_instance(
                v_row.inst, 'failed',
                format('step %s failed after %s attempts: %s', v_row.step_id, v_row.attempts, v_row.error));
        END LOOP;
    END IF;

    -- A finished compensation step ends its instance with the status it was created for.
    IF v_comp THEN
        FOR v_row IN
            SELECT s.workflow_inst_id AS inst, s.input->>'final_status' AS final, s.input->>'error' AS error
            FROM orchwf_live_steps s
            WHERE s.id = ANY (v_accepted) AND s.step_id = '$compensate'
              AND s.status IN ('completed', 'failed', 'skipped')
            ORDER BY s.workflow_inst_id
        LOOP
            UPDATE orchwf_live_instances i
            SET status = v_row.final, completed_at = now(), updated_at = now(), steps_remaining = 0,
                output = d.output, context = d.context
            FROM orchwf_instance_documents(v_row.inst) d
            WHERE i.id = v_row.inst;
            PERFORM orchwf_record_event(v_row.inst, NULL, 'workflow.' || v_row.final,
                                        CASE WHEN v_row.final = 'failed' THEN jsonb_build_object('error', v_row.error)
                                             ELSE '{}'::jsonb END);
            PERFORM orchwf_archive_instances(ARRAY[v_row.inst]);
            PERFORM pg_notify('orchwf_done', '');
        END LOOP;
    END IF;

    IF v_released > 0 THEN
        PERFORM pg_notify('orchwf_ready', q.queue)
        FROM (SELECT DISTINCT i.queue FROM orchwf_live_instances i WHERE i.id = ANY (v_insts)) q;
    END IF;

    RETURN QUERY
    SELECT x.id, x.id = ANY (v_accepted) FROM unnest(p_ids) AS x(id);
END;
$$;

-- A worker's group commit and its next claim in ONE transaction and round trip: the
-- results are committed exactly as orchwf_finish_steps commits them, then steps are
-- claimed as orchwf_claim_steps claims them (dependents released by the finish can be
-- claimed at once). Rows with accepted NOT NULL answer the results, in p_ids order;
-- the other rows are the claimed steps. The claimed steps take the slots of the results
-- committed here, so a slot is still freed only when its result is durable.
CREATE OR REPLACE FUNCTION orchwf_finish_and_claim(
    p_ids           uuid[],
    p_tokens        bigint[],
    p_outcomes      text[],
    p_outputs       jsonb[],
    p_errors        text[],
    p_durations     bigint[],
    p_delays        double precision[],
    p_inputs        jsonb[],
    p_worker        text,
    p_queues        text[],
    p_workflows     text[],
    p_limit         integer,
    p_lease_seconds double precision,
    p_suspects      boolean
) RETURNS TABLE (
    step_inst_id     uuid,
    accepted         boolean,
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
AS $$
BEGIN
    RETURN QUERY
    SELECT f.step_inst_id, f.accepted, NULL::uuid, NULL::text, NULL::text, NULL::bigint, NULL::integer,
           NULL::integer, NULL::jsonb, NULL::jsonb, NULL::text, NULL::jsonb, NULL::jsonb
    FROM orchwf_finish_steps(p_ids, p_tokens, p_outcomes, p_outputs, p_errors, p_durations, p_delays, p_inputs) f;
    IF p_limit > 0 THEN
        RETURN QUERY
        SELECT c.step_inst_id, NULL::boolean, c.workflow_inst_id, c.workflow_id, c.step_id, c.lease_token,
               c.attempt, c.retry_count, c.workflow_input, c.metadata, c.trace_id, c.completed, c.step_input
        FROM orchwf_claim_steps(p_worker, p_queues, p_workflows, p_limit, p_lease_seconds, p_suspects) c;
    END IF;
END;
$$;

-- Move steps whose backoff or scheduled start is due into the ready queue.
CREATE OR REPLACE FUNCTION orchwf_promote_scheduled(p_limit integer DEFAULT 1000)
RETURNS integer
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET enable_bitmapscan = off  -- key lookups, whatever the statistics say (finish.sql)
AS $$
DECLARE
    v_insts uuid[];
    v_n integer;
BEGIN
    -- Due steps without locks, then their live instances in lock order (skipping any
    -- that a finish or cancel holds: they are promoted on the next round).
    -- "= ANY (ARRAY(...))": the instances by key whatever the statistics say (as a
    -- semi-join, a table analyzed while empty could be read whole, once per due step).
    SELECT array_agg(i.id ORDER BY i.id) INTO v_insts
    FROM (SELECT i.id FROM orchwf_live_instances i
          WHERE i.id = ANY (ARRAY(SELECT s.workflow_inst_id FROM orchwf_live_steps s
                                  WHERE s.run_after IS NOT NULL AND s.run_after <= now()
                                  ORDER BY s.run_after LIMIT p_limit))
            AND i.status IN ('pending', 'running')
          ORDER BY i.id
          FOR NO KEY UPDATE SKIP LOCKED) i;
    IF v_insts IS NULL THEN
        RETURN 0;
    END IF;
    WITH promoted AS (
        UPDATE orchwf_live_steps s SET run_after = NULL, updated_at = now()
        WHERE s.workflow_inst_id = ANY (v_insts) AND s.run_after IS NOT NULL AND s.run_after <= now()
          AND s.status IN ('pending', 'retrying')
        RETURNING s.id, s.workflow_inst_id, s.priority, s.crashes),
    ins AS (
        INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority, suspect)
        SELECT p.id, i.id, i.workflow_id, i.queue, p.priority + i.priority, p.crashes > 0
        FROM promoted p JOIN orchwf_live_instances i ON i.id = p.workflow_inst_id AND i.id = ANY (v_insts)
        ON CONFLICT DO NOTHING
        RETURNING queue)
    SELECT count(*) INTO v_n FROM ins;
    IF v_n > 0 THEN
        PERFORM pg_notify('orchwf_ready', 'scheduled');
    END IF;
    RETURN v_n;
END;
$$;

-- An instance about to run again: steps become ready by their dependencies, the
-- instance counts its steps again, and an event says why.
CREATE OR REPLACE FUNCTION orchwf_restart_instance(p_inst uuid, p_event jsonb)
RETURNS text
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
BEGIN
    UPDATE orchwf_live_steps s
    SET pending_deps = (SELECT count(*) FROM orchwf_live_steps d
                        WHERE d.workflow_inst_id = p_inst AND d.step_id = ANY (s.dependencies)
                          AND d.status NOT IN ('completed', 'skipped'))
    WHERE s.workflow_inst_id = p_inst AND s.status = 'pending';
    UPDATE orchwf_live_instances
    SET status = 'running', error = NULL, completed_at = NULL, retry_count = retry_count + 1,
        last_retry_at = now(), updated_at = now(),
        steps_remaining = (SELECT count(*) FROM orchwf_live_steps
                           WHERE workflow_inst_id = p_inst AND status = 'pending')
    WHERE id = p_inst;
    INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority)
    SELECT s.id, i.id, i.workflow_id, i.queue, s.priority + i.priority
    FROM orchwf_live_steps s JOIN orchwf_live_instances i ON i.id = s.workflow_inst_id
    WHERE s.workflow_inst_id = p_inst AND s.status = 'pending' AND s.pending_deps = 0
    ON CONFLICT DO NOTHING;
    PERFORM orchwf_record_event(p_inst, NULL, 'workflow.resumed', p_event);
    PERFORM pg_notify('orchwf_ready', (SELECT queue FROM orchwf_live_instances WHERE id = p_inst));
    RETURN 'running';
END;
$$;

-- Send a signal to an instance, in the caller's transaction: a rollback sends nothing.
-- The signal is kept until a step of the instance that waits for that name consumes it
-- (one signal per waiting step, oldest first, exactly once); a step already waiting is
-- made ready now. Refused, with nothing stored: an unknown instance (OW404), a finished
-- one (OW409), a name no step of the instance's workflow waits for, or a payload that
-- is not a JSON object (OW400). Returns the signal's id.
CREATE OR REPLACE FUNCTION orchwf_signal(p_inst uuid, p_name text, p_payload jsonb DEFAULT '{}')
RETURNS bigint
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_workflow text;
    v_queue    text;
    v_priority integer;
    v_id       bigint;
    v_woken    integer;
BEGIN
    IF p_name IS NULL OR length(p_name) NOT BETWEEN 1 AND 255 THEN
        RAISE EXCEPTION 'a signal name must be 1 to 255 characters' USING ERRCODE = 'OW400';
    END IF;
    IF p_payload IS NULL OR jsonb_typeof(p_payload) <> 'object' THEN
        RAISE EXCEPTION 'a signal payload must be a JSON object' USING ERRCODE = 'OW400';
    END IF;
    -- The instance first, as the finish locks it: a release of the waiting step and this
    -- signal are ordered (each sees the other).
    SELECT i.workflow_id, i.queue, i.priority INTO v_workflow, v_queue, v_priority
    FROM orchwf_live_instances i WHERE i.id = p_inst AND i.status IN ('pending', 'running')
    FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        IF EXISTS (SELECT 1 FROM orchwf_workflow_instances o WHERE o.id = p_inst) THEN
            RAISE EXCEPTION 'workflow instance % has finished: it receives no signals', p_inst
                USING ERRCODE = 'OW409';
        END IF;
        RAISE EXCEPTION 'workflow not found: %', p_inst USING ERRCODE = 'OW404';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM orchwf_live_steps s WHERE s.workflow_inst_id = p_inst AND s.wait_signal = p_name) THEN
        RAISE EXCEPTION 'no step of workflow % waits for a signal named %', v_workflow, quote_literal(p_name)
            USING ERRCODE = 'OW400';
    END IF;
    INSERT INTO orchwf_signals (workflow_inst_id, name, payload) VALUES (p_inst, p_name, p_payload)
    RETURNING id INTO v_id;
    -- A step waiting for it now (dependencies done, not queued) becomes ready.
    WITH woken AS (
        UPDATE orchwf_live_steps s SET run_after = NULL, updated_at = now()
        WHERE s.workflow_inst_id = p_inst AND s.wait_signal = p_name AND s.status = 'pending'
          AND s.pending_deps = 0
          AND NOT EXISTS (SELECT 1 FROM orchwf_ready_steps r WHERE r.step_inst_id = s.id)
        RETURNING s.id, s.priority)
    INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority)
    SELECT w.id, p_inst, v_workflow, v_queue, w.priority + v_priority FROM woken w
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS v_woken = ROW_COUNT;
    IF v_woken > 0 THEN
        PERFORM pg_notify('orchwf_ready', v_queue);
    END IF;
    RETURN v_id;
END;
$$;

-- Child workflows (child_workflow_step) that finished report to the step that started
-- them: a signal of the name that step waits for, with the child's status, output and
-- error, which makes it ready (as orchwf_signal does). A parent that is no longer live
-- gets nothing.
CREATE OR REPLACE FUNCTION orchwf_report_to_parents(p_reports jsonb) RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_queues text[];
BEGIN
    IF p_reports IS NULL OR jsonb_array_length(p_reports) = 0 THEN
        RETURN;
    END IF;
    WITH sent AS (
        INSERT INTO orchwf_signals (workflow_inst_id, name, payload)
        SELECT p.id, x.name, x.payload
        FROM jsonb_to_recordset(p_reports) AS x(parent text, name text, payload jsonb)
        JOIN orchwf_live_instances p ON p.id = x.parent::uuid
        RETURNING workflow_inst_id, name),
    woken AS (
        UPDATE orchwf_live_steps s SET run_after = NULL, updated_at = now()
        FROM sent g
        WHERE s.workflow_inst_id = g.workflow_inst_id AND s.wait_signal = g.name AND s.status = 'pending'
          AND s.pending_deps = 0
        RETURNING s.id, s.workflow_inst_id, s.priority),
    queued AS (
        INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority)
        SELECT w.id, p.id, p.workflow_id, p.queue, w.priority + p.priority
        FROM woken w JOIN orchwf_live_instances p ON p.id = w.workflow_inst_id
        ON CONFLICT DO NOTHING
        RETURNING queue)
    SELECT array_agg(DISTINCT q.queue) INTO v_queues FROM queued q;
    PERFORM pg_notify('orchwf_ready', q.name) FROM unnest(v_queues) AS q(name);
END;
$$;
