-- orchwf 004: a leaner hot path (issue 6, second profile; docs/benchmarks.md "Profile").
--
-- Measured with callgrind on the backend of a claim-50 / finish-50 loop (instructions
-- per single-step workflow; deterministic, unlike CPU time on a shared machine):
-- 863k before, 701k after, -18.8% (python -m bench sqlcost). None of these changes
-- what is stored or when.
--
--   * orchwf_claim_steps runs one cached generic plan. It was planned afresh on every
--     call (0.5 ms): its custom plan looked cheaper than the generic one, which joined
--     the picked rows to the whole step table with a merge join. The joins between the
--     CTEs are now key lookups (= ANY (ARRAY(...))) whatever the row estimates. -5%.
--   * orchwf_finish_steps builds the event document of the event it writes, not all six
--     candidate documents for every result. -5%.
--   * orchwf_uuid7() takes its random bits from random() (the session's PRNG, seeded
--     from strong randomness when the backend starts) instead of gen_random_uuid()
--     (an OpenSSL call per ID), and the time from date_part (float) instead of numeric
--     arithmetic: 0.6 us an ID instead of 2.6. IDs stay unique (48-bit milliseconds and
--     74 random bits); they were never secrets. -5%.
--   * No deduplication on indexes whose keys are unique anyway: a full page ran a
--     deduplication pass that found only the one old version a non-HOT instance update
--     left behind. -3.5%.
--   * Enqueue (instructions per instance, batches of 1,000): 348k before, 231k after
--     (-33%): the definition is parsed once per call, not once per instance (-23%), and
--     step rows have no foreign key to their instance (-14%).
--
-- And the quarantine of suspects (a correctness fix): when a worker process dies, every
-- step it was running is charged a crash, as before, because nobody can tell which of
-- them killed it; but they come back to the queue as suspects, which only a quarantine
-- worker claims, one at a time. A poison step then uses up its crash budget alone, and
-- the steps that shared its process the first time are charged that one crash only.
-- orchwf_claim_steps and orchwf_finish_and_claim take p_suspects; orchwf_maintain tells
-- the supervisor when suspects wait for it.

CREATE OR REPLACE FUNCTION orchwf_uuid7() RETURNS uuid
LANGUAGE sql
VOLATILE PARALLEL SAFE
AS $$
    -- 48 bits of Unix milliseconds, version 7, 12 random bits; variant 10, 62 random bits.
    SELECT encode(int8send((floor(date_part('epoch', clock_timestamp()) * 1000)::bigint << 16)
                           | floor(random() * 4096)::bigint | 28672)
                  || int8send((floor(random() * 2147483648)::bigint << 31)
                              | floor(random() * 2147483648)::bigint | (-9223372036854775807 - 1)),
                  'hex')::uuid
$$;

-- Unique keys (created_at, id) and generated IDs: deduplication can only merge the old
-- and new versions of a row, which bottom-up deletion removes anyway.
ALTER INDEX orchwf_wi_created_idx SET (deduplicate_items = off);
ALTER INDEX orchwf_wi_trace_idx SET (deduplicate_items = off);
ALTER INDEX orchwf_wi_correlation_idx SET (deduplicate_items = off);

-- No foreign key from steps to instances: its check (a query and a KEY SHARE lock on the
-- instance for every step row) was 14% of enqueue's work. Every writer of step rows
-- already knows the instance is there: enqueue inserts both in one statement, the daemon's
-- functions work on instances they hold locked, and the in-process store checks it under
-- a KEY SHARE lock of its own. Deleting instances deletes their steps through the
-- statement-level trigger that already deletes their events, ready and running rows.
ALTER TABLE orchwf_step_instances DROP CONSTRAINT orchwf_step_instances_workflow_inst_id_fkey;

CREATE OR REPLACE FUNCTION orchwf_instances_deleted() RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
BEGIN
    DELETE FROM orchwf_step_instances s USING gone g WHERE s.workflow_inst_id = g.id;
    DELETE FROM orchwf_workflow_events e USING gone g WHERE e.workflow_inst_id = g.id;
    DELETE FROM orchwf_ready_steps r USING gone g WHERE r.workflow_inst_id = g.id;
    DELETE FROM orchwf_running_steps r USING gone g WHERE r.workflow_inst_id = g.id;
    RETURN NULL;
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

    SELECT array_agg(orchwf_uuid7()) INTO v_ids FROM generate_series(1, v_n);

    WITH ins AS (
        INSERT INTO orchwf_workflow_instances AS i (
            id, workflow_id, status, input, metadata, trace_id, correlation_id, business_id,
            priority, queue, idempotency_key, run_mode, definition_hash, steps_remaining)
        SELECT x.id, p_workflow_id, 'pending', x.input, v_meta,
               coalesce(nullif(v_meta->>'trace_id', ''), orchwf_uuid7()::text),
               coalesce(nullif(v_meta->>'correlation_id', ''), orchwf_uuid7()::text),
               coalesce(v_meta->>'business_id', ''),
               v_priority, v_queue, x.key, 'daemon', v_hash, jsonb_array_length(v_def->'steps')
        FROM unnest(v_ids, p_inputs, v_keys) AS x(id, input, key)
        ON CONFLICT (workflow_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
        RETURNING i.id)
    SELECT coalesce(array_agg(ins.id), '{}') INTO v_inserted FROM ins;

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
                   coalesce((st.value->>'has_compensator')::boolean, false) AS has_compensator
            FROM jsonb_array_elements(v_def->'steps') WITH ORDINALITY AS st(value, ord)),
        new_steps AS (
            INSERT INTO orchwf_step_instances AS s (
                id, step_id, workflow_inst_id, status, execution_order, priority, dependencies,
                dependents, pending_deps, run_after, max_attempts, timeout_seconds, required,
                crash_counts_as_attempt, has_compensator)
            SELECT orchwf_uuid7(), d.step_id, i.id, 'pending', d.ord, d.priority, d.deps,
                   d.dependents, cardinality(d.deps),
                   CASE WHEN cardinality(d.deps) = 0 AND p_run_after > now() THEN p_run_after END,
                   d.max_attempts, d.timeout, d.required, d.crash_counts, d.has_compensator
            FROM unnest(v_inserted) AS i(id) CROSS JOIN defsteps d
            RETURNING s.id, s.workflow_inst_id, s.priority, s.pending_deps, s.run_after),
        new_ready AS (
            INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority)
            SELECT n.id, n.workflow_inst_id, p_workflow_id, v_queue, n.priority + v_priority
            FROM new_steps n WHERE n.pending_deps = 0 AND n.run_after IS NULL
            RETURNING 1)
        INSERT INTO orchwf_workflow_events (workflow_inst_id, event_type, event_data)
        SELECT i.id, 'workflow.started', jsonb_build_object('workflow_id', p_workflow_id)
        FROM unnest(v_inserted) AS i(id);

        IF p_run_after IS NULL OR p_run_after <= now() THEN
            -- One notification per transaction and queue: Postgres folds identical payloads.
            PERFORM pg_notify('orchwf_ready', v_queue);
        ELSE
            PERFORM pg_notify('orchwf_scheduled', '');
        END IF;
    END IF;

    IF p_idempotency_keys IS NULL THEN
        RETURN v_ids;  -- no keys, no conflicts: every instance was inserted, in input order
    END IF;
    -- A new statement sees instances committed by a concurrent producer with the same key.
    SELECT array_agg(coalesce(ins.id, old.id) ORDER BY x.ord) INTO v_result
    FROM unnest(v_ids, v_keys) WITH ORDINALITY AS x(id, key, ord)
    LEFT JOIN unnest(v_inserted) AS ins(id) ON ins.id = x.id
    LEFT JOIN orchwf_workflow_instances old
           ON ins.id IS NULL AND old.workflow_id = p_workflow_id AND old.idempotency_key = x.key;
    RETURN v_result;
END;
$$;

-- Suspects: ready steps that were running in a worker process that died. Only the
-- quarantine worker claims them, one at a time and alone in its process, so a step
-- that kills its process is charged every crash it causes, and the steps that merely
-- shared a process with it are charged one crash at the most (they then run alone).
-- The partial index is empty unless a worker died: ordinary claims never touch it.
ALTER TABLE orchwf_ready_steps ADD COLUMN suspect boolean NOT NULL DEFAULT false;
CREATE INDEX orchwf_rs_suspect_idx ON orchwf_ready_steps (queue, priority DESC, ready_at, workflow_inst_id, step_inst_id)
    WHERE suspect;
-- A quarantine worker registers as such (orchwf workers, the dashboard, the metrics).
ALTER TABLE orchwf_workers DROP CONSTRAINT orchwf_workers_role_check,
    ADD CONSTRAINT orchwf_workers_role_check CHECK (role IN ('supervisor', 'worker', 'quarantine'));

-- The claim, finish-and-claim and maintenance functions get a new signature (with the
-- suspects); the old ones stay, unchanged, for the workers of the previous version during
-- a rolling upgrade: those claim suspects like any other step, as they always did. The
-- new ones have no defaults, so no call can match both. A later migration drops the old.

CREATE FUNCTION orchwf_claim_steps(
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
        RETURNING r.step_inst_id),
    claimed AS (
        UPDATE orchwf_step_instances s
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
        INSERT INTO orchwf_workflow_events (workflow_inst_id, step_inst_id, event_type, event_data)
        SELECT c.workflow_inst_id, c.id,
               CASE WHEN c.attempts = 1 THEN 'step.started' ELSE 'step.retry' END,
               CASE WHEN c.attempts = 1 THEN jsonb_build_object('step_id', c.step_id)
                    ELSE jsonb_build_object('attempt', c.attempts) END
        FROM claimed c
        RETURNING 1)
    -- Empty documents come back as NULL (the worker reads NULL as empty): nothing to
    -- decode for the metadata, inputs and predecessors a step often does not have.
    SELECT c.id, c.workflow_inst_id, i.workflow_id, c.step_id, c.lease_token, c.attempts,
           c.retry_count, nullif(i.input, '{}'::jsonb), nullif(i.metadata, '{}'::jsonb), i.trace_id,
           (SELECT jsonb_agg(jsonb_build_array(p.step_id, p.output) ORDER BY p.completed_at, p.execution_order)
            FROM orchwf_step_instances p
            WHERE p.workflow_inst_id = c.workflow_inst_id AND p.status = 'completed'),
           nullif(c.input, '{}'::jsonb)
    FROM claimed c
    JOIN orchwf_workflow_instances i ON i.id = c.workflow_inst_id;
END;
$$;

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
-- Key lookups only. The ready and running lists are emptied and refilled thousands of
-- times between two autovacuum runs, so their statistics lag: a stale estimate must not
-- turn a lookup by key into a sequential scan over dead rows.
SET enable_seqscan = off
AS $$
DECLARE
    v_accepted uuid[];
    v_insts    uuid[];
    v_row      record;
    v_released integer := 0;
    v_n        integer;
    v_requeue  boolean;  -- an accepted attempt goes back to the queue
    v_parents  boolean;  -- an accepted step completed (or was skipped) and has dependents
    v_failed   boolean;  -- a required step failed for good
    v_comp     boolean;  -- a compensation step finished
    v_later    boolean;  -- a failed attempt waits for a backoff
BEGIN
    IF EXISTS (SELECT 1 FROM unnest(p_outcomes) o
               WHERE o NOT IN ('completed', 'failed', 'skipped', 'retry', 'requeue', 'release')) THEN
        RAISE EXCEPTION 'unknown outcome in %', p_outcomes USING ERRCODE = 'OW400';
    END IF;

    -- Instances first, in id order (the global lock order).
    SELECT array_agg(DISTINCT s.workflow_inst_id) INTO v_insts
    FROM orchwf_step_instances s WHERE s.id = ANY (p_ids);
    -- NO KEY UPDATE, not UPDATE: the in-process store's step writes take KEY SHARE locks
    -- on these rows, and must not queue behind (or deadlock with) a finish.
    PERFORM 1 FROM orchwf_workflow_instances i WHERE i.id = ANY (v_insts) ORDER BY i.id FOR NO KEY UPDATE;

    WITH r AS (
        SELECT * FROM unnest(p_ids, p_tokens, p_outcomes, p_outputs, p_errors, p_durations, p_delays, p_inputs)
                 AS r(id, token, outcome, output, error, duration, delay, input)),
    done AS (
        UPDATE orchwf_step_instances s
        SET status = CASE r.outcome WHEN 'retry' THEN 'retrying' WHEN 'requeue' THEN 'retrying'
                                    WHEN 'release' THEN 'pending' ELSE r.outcome END,
            output = CASE WHEN r.outcome = 'completed' THEN coalesce(r.output, '{}') ELSE s.output END,
            input = coalesce(r.input, s.input),
            error = CASE WHEN r.outcome IN ('completed', 'release') THEN s.error ELSE r.error END,
            completed_at = CASE WHEN r.outcome IN ('completed', 'failed', 'skipped') THEN now() END,
            duration_ms = coalesce(r.duration, s.duration_ms),
            retry_count = s.retry_count + (r.outcome = 'retry')::integer,
            last_retry_at = CASE WHEN r.outcome IN ('retry', 'requeue') THEN now() ELSE s.last_retry_at END,
            run_after = CASE WHEN r.outcome = 'retry' AND r.delay > 0
                             THEN now() + r.delay * interval '1 second' END,
            lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, deadline_at = NULL,
            updated_at = now()
        FROM r
        WHERE s.id = r.id AND s.lease_token = r.token AND s.status = 'running'
        RETURNING s.id, s.workflow_inst_id, s.step_id, s.status, r.outcome, r.error, r.duration, r.delay,
                  s.retry_count, s.attempts, cardinality(s.dependents) > 0 AS has_dependents),
    events AS (
        -- One event per result, and a second one (step.skipped) for a skipped step. Only
        -- the document of the event written is built.
        INSERT INTO orchwf_workflow_events (workflow_inst_id, step_inst_id, event_type, event_data)
        SELECT d.workflow_inst_id, d.id,
               CASE d.outcome WHEN 'completed' THEN 'step.completed' WHEN 'retry' THEN 'step.attempt_failed'
                              WHEN 'requeue' THEN 'step.rescued' WHEN 'release' THEN 'step.released'
                              ELSE 'step.failed' END,
               CASE d.outcome WHEN 'completed' THEN jsonb_build_object('duration_ms', d.duration)
                              WHEN 'retry' THEN jsonb_build_object('error', d.error, 'attempt', d.attempts,
                                                                   'retry_in_seconds', d.delay)
                              WHEN 'requeue' THEN jsonb_build_object('cause', d.error)
                              WHEN 'release' THEN '{}'::jsonb
                              ELSE jsonb_build_object('error', d.error, 'retries', d.retry_count) END
        FROM done d
        UNION ALL
        SELECT d.workflow_inst_id, d.id, 'step.skipped', jsonb_build_object('error', d.error)
        FROM done d WHERE d.outcome = 'skipped'
        RETURNING 1),
    unlisted AS (
        -- "= ANY (p_ids)": an index scan whatever the planner guesses for r; the running
        -- list churns, and a sequential scan would wade through its dead rows.
        DELETE FROM orchwf_running_steps x USING r
        WHERE x.step_inst_id = ANY (p_ids) AND x.step_inst_id = r.id AND x.lease_token = r.token
        RETURNING 1)
    SELECT coalesce(array_agg(d.id), '{}'),
           coalesce(bool_or(d.outcome IN ('retry', 'requeue', 'release')), false),
           coalesce(bool_or(d.status IN ('completed', 'skipped') AND d.has_dependents), false),
           coalesce(bool_or(d.status = 'failed' AND d.step_id <> '$compensate'), false),
           coalesce(bool_or(d.step_id = '$compensate' AND d.status IN ('completed', 'failed', 'skipped')), false),
           coalesce(bool_or(d.outcome = 'retry' AND d.delay > 0), false)
    INTO v_accepted, v_requeue, v_parents, v_failed, v_comp, v_later
    FROM done d;

    -- The statements below only run when the batch needs them: each costs a plan
    -- execution even when it matches nothing.

    -- Retries that wait for a backoff: tell the supervisors when to promote them.
    IF v_later THEN
        PERFORM pg_notify('orchwf_scheduled', '');
    END IF;

    -- Attempts that go straight back to the queue.
    IF v_requeue THEN
        -- A step that was running in a process that died is a suspect (see 004's header).
        INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority, suspect)
        SELECT s.id, i.id, i.workflow_id, i.queue, s.priority + i.priority, s.crashes > 0
        FROM orchwf_step_instances s JOIN orchwf_workflow_instances i ON i.id = s.workflow_inst_id
        WHERE s.id = ANY (v_accepted) AND s.status IN ('retrying', 'pending') AND s.run_after IS NULL
          AND i.status IN ('pending', 'running')
        ON CONFLICT DO NOTHING;
        GET DIAGNOSTICS v_n = ROW_COUNT;
        v_released := v_released + v_n;
    END IF;

    -- Release dependents: completed and skipped (optional, failed) steps satisfy them.
    IF v_parents THEN
        WITH dec AS (
            SELECT s.workflow_inst_id, c.child, count(*)::integer AS n
            FROM orchwf_step_instances s, unnest(s.dependents) AS c(child)
            WHERE s.id = ANY (v_accepted) AND s.status IN ('completed', 'skipped')
            GROUP BY 1, 2),
        released AS (
            UPDATE orchwf_step_instances s
            SET pending_deps = s.pending_deps - dec.n, updated_at = now()
            FROM dec
            WHERE s.workflow_inst_id = dec.workflow_inst_id AND s.step_id = dec.child AND s.status = 'pending'
            RETURNING s.id, s.workflow_inst_id, s.priority, s.pending_deps)
        INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority)
        SELECT r.id, i.id, i.workflow_id, i.queue, r.priority + i.priority
        FROM released r JOIN orchwf_workflow_instances i ON i.id = r.workflow_inst_id
        WHERE r.pending_deps = 0 AND i.status IN ('pending', 'running')
        ON CONFLICT DO NOTHING;
        GET DIAGNOSTICS v_n = ROW_COUNT;
        v_released := v_released + v_n;
    END IF;

    -- Count finished steps against their instances and, in the same UPDATE (one new row
    -- version per instance, not two), complete the instances with nothing left to run:
    -- output is the flat merge of step outputs in completion order; context adds each
    -- output under its step ID. An instance with a required step that failed for good is
    -- not completed here: the failure handling below ends it.
    WITH f AS (
        SELECT s.workflow_inst_id AS inst, count(*)::integer AS n, bool_or(s.status = 'failed') AS failed
        FROM orchwf_step_instances s
        WHERE s.id = ANY (v_accepted) AND s.status IN ('completed', 'skipped', 'failed')
          AND s.step_id <> '$compensate'
        GROUP BY 1),
    c AS (
        SELECT f.inst, f.n, x.completing, m.output, m.context
        FROM f
        JOIN orchwf_workflow_instances i ON i.id = f.inst
        CROSS JOIN LATERAL (SELECT i.steps_remaining - f.n <= 0 AND NOT f.failed
                                   AND i.status IN ('pending', 'running') AS completing) x
        -- One pass over the completed steps of a completing instance gives both documents
        -- (a later key wins, as in a sequential merge).
        LEFT JOIN LATERAL (
            SELECT coalesce(jsonb_object_agg(o.k, o.v ORDER BY s.completed_at, s.execution_order, o.ord)
                                FILTER (WHERE o.ord = 1), '{}') AS output,
                   coalesce(jsonb_object_agg(o.k, o.v ORDER BY s.completed_at, s.execution_order, o.ord), '{}') AS context
            FROM orchwf_step_instances s
            CROSS JOIN LATERAL (SELECT s.step_id AS k, s.output AS v, 0 AS ord
                                UNION ALL SELECT e.key, e.value, 1 FROM jsonb_each(s.output) e) o
            WHERE x.completing AND s.workflow_inst_id = f.inst AND s.status = 'completed') m ON true),
    counted AS (
        UPDATE orchwf_workflow_instances i
        SET steps_remaining = i.steps_remaining - c.n,
            status = CASE WHEN c.completing THEN 'completed'
                          WHEN i.status = 'pending' THEN 'running' ELSE i.status END,
            completed_at = CASE WHEN c.completing THEN now() ELSE i.completed_at END,
            current_step_id = CASE WHEN c.completing THEN NULL ELSE i.current_step_id END,
            output = CASE WHEN c.completing THEN c.output ELSE i.output END,
            context = CASE WHEN c.completing THEN c.context ELSE i.context END,
            updated_at = now()
        FROM c
        WHERE i.id = c.inst
        RETURNING i.id, i.started_at, c.completing)
    INSERT INTO orchwf_workflow_events (workflow_inst_id, event_type, event_data)
    SELECT f.id, 'workflow.completed',
           jsonb_build_object('duration_ms', (extract(epoch FROM now() - f.started_at) * 1000)::bigint)
    FROM counted f
    WHERE f.completing;
    IF FOUND THEN
        PERFORM pg_notify('orchwf_done', '');
    END IF;

    -- A required step that failed for good ends its instance.
    IF v_failed THEN
        FOR v_row IN
            SELECT s.workflow_inst_id AS inst, min(s.step_id) AS step_id, min(s.error) AS error,
                   min(s.attempts) AS attempts
            FROM orchwf_step_instances s JOIN orchwf_workflow_instances i ON i.id = s.workflow_inst_id
            WHERE s.id = ANY (v_accepted) AND s.status = 'failed' AND s.step_id <> '$compensate'
              AND i.status IN ('pending', 'running') AND NOT EXISTS (
                  SELECT 1 FROM orchwf_step_instances c
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
            FROM orchwf_step_instances s
            WHERE s.id = ANY (v_accepted) AND s.step_id = '$compensate'
              AND s.status IN ('completed', 'failed', 'skipped')
            ORDER BY s.workflow_inst_id
        LOOP
            UPDATE orchwf_workflow_instances
            SET status = v_row.final, completed_at = now(), updated_at = now(), steps_remaining = 0
            WHERE id = v_row.inst;
            INSERT INTO orchwf_workflow_events (workflow_inst_id, event_type, event_data)
            VALUES (v_row.inst, 'workflow.' || v_row.final,
                    CASE WHEN v_row.final = 'failed' THEN jsonb_build_object('error', v_row.error)
                         ELSE '{}'::jsonb END);
            PERFORM pg_notify('orchwf_done', '');
        END LOOP;
    END IF;

    IF v_released > 0 THEN
        PERFORM pg_notify('orchwf_ready', q.queue)
        FROM (SELECT DISTINCT i.queue FROM orchwf_workflow_instances i WHERE i.id = ANY (v_insts)) q;
    END IF;

    RETURN QUERY
    SELECT x.id, x.id = ANY (v_accepted) FROM unnest(p_ids) AS x(id);
END;
$$;

CREATE FUNCTION orchwf_finish_and_claim(
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

CREATE OR REPLACE FUNCTION orchwf_promote_scheduled(p_limit integer DEFAULT 1000)
RETURNS integer
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_insts uuid[];
    v_n integer;
BEGIN
    -- Due steps without locks, then their live instances in lock order (skipping any
    -- that a finish or cancel holds: they are promoted on the next round).
    SELECT array_agg(i.id ORDER BY i.id) INTO v_insts
    FROM (SELECT i.id FROM orchwf_workflow_instances i
          WHERE i.id IN (SELECT s.workflow_inst_id FROM orchwf_step_instances s
                         WHERE s.run_after IS NOT NULL AND s.run_after <= now()
                         ORDER BY s.run_after LIMIT p_limit)
            AND i.status IN ('pending', 'running')
          ORDER BY i.id
          FOR NO KEY UPDATE SKIP LOCKED) i;
    IF v_insts IS NULL THEN
        RETURN 0;
    END IF;
    WITH promoted AS (
        UPDATE orchwf_step_instances s SET run_after = NULL, updated_at = now()
        WHERE s.workflow_inst_id = ANY (v_insts) AND s.run_after IS NOT NULL AND s.run_after <= now()
          AND s.status IN ('pending', 'retrying')
        RETURNING s.id, s.workflow_inst_id, s.priority, s.crashes),
    ins AS (
        INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority, suspect)
        SELECT p.id, i.id, i.workflow_id, i.queue, p.priority + i.priority, p.crashes > 0
        FROM promoted p JOIN orchwf_workflow_instances i ON i.id = p.workflow_inst_id
        ON CONFLICT DO NOTHING
        RETURNING queue)
    SELECT count(*) INTO v_n FROM ins;
    IF v_n > 0 THEN
        PERFORM pg_notify('orchwf_ready', 'scheduled');
    END IF;
    RETURN v_n;
END;
$$;

-- A supervisor's periodic work in one statement: mark its workers alive, rescue expired
-- leases (first: it waits for instance locks, in order, holding none), promote due
-- retries (SKIP LOCKED: it never waits for an instance), report when the next
-- scheduled step is due (seconds from now, NULL when none), and whether suspects wait
-- in the supervisor's queues for its workflows (then it runs a quarantine worker).
CREATE FUNCTION orchwf_maintain(p_supervisor text, p_rescue boolean, p_queues text[], p_workflows text[])
RETURNS TABLE (promoted integer, rescued integer, next_due double precision, suspects boolean)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
BEGIN
    UPDATE orchwf_workers SET heartbeat_at = now() WHERE supervisor_id = p_supervisor;
    rescued := 0;
    IF p_rescue THEN
        SELECT count(*) INTO rescued FROM orchwf_rescue_steps();
    END IF;
    promoted := orchwf_promote_scheduled();
    SELECT extract(epoch FROM min(s.run_after) - now()) INTO next_due
    FROM orchwf_step_instances s WHERE s.run_after IS NOT NULL;
    suspects := EXISTS (SELECT 1 FROM orchwf_ready_steps r
                        WHERE r.suspect AND r.queue = ANY (p_queues) AND r.workflow_id = ANY (p_workflows));
    RETURN NEXT;
END;
$$;
