-- orchwf 004 down: the definitions of 001 and 002 again (004 left the old signatures of
-- the claim, finish-and-claim and maintenance functions in place).

DROP FUNCTION orchwf_maintain(text, boolean, text[], text[]);
DROP FUNCTION orchwf_finish_and_claim(uuid[], bigint[], text[], jsonb[], text[], bigint[], double precision[],
                                      jsonb[], text, text[], text[], integer, double precision, boolean);
DROP FUNCTION orchwf_claim_steps(text, text[], text[], integer, double precision, boolean);
DROP INDEX orchwf_rs_suspect_idx;
ALTER TABLE orchwf_ready_steps DROP COLUMN suspect;
DELETE FROM orchwf_workers WHERE role = 'quarantine';
ALTER TABLE orchwf_workers DROP CONSTRAINT orchwf_workers_role_check,
    ADD CONSTRAINT orchwf_workers_role_check CHECK (role IN ('supervisor', 'worker'));

DELETE FROM orchwf_step_instances s
WHERE NOT EXISTS (SELECT 1 FROM orchwf_workflow_instances i WHERE i.id = s.workflow_inst_id);
ALTER TABLE orchwf_step_instances ADD CONSTRAINT orchwf_step_instances_workflow_inst_id_fkey
    FOREIGN KEY (workflow_inst_id) REFERENCES orchwf_workflow_instances (id) ON DELETE CASCADE;

ALTER INDEX orchwf_wi_created_idx RESET (deduplicate_items);
ALTER INDEX orchwf_wi_trace_idx RESET (deduplicate_items);
ALTER INDEX orchwf_wi_correlation_idx RESET (deduplicate_items);

CREATE OR REPLACE FUNCTION orchwf_uuid7() RETURNS uuid
LANGUAGE sql
VOLATILE PARALLEL SAFE
AS $$
    SELECT encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                    FROM 1 FOR 6),
            52, 1), 53, 1),
        'hex')::uuid
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
    -- NO KEY UPDATE, not UPDATE: ready inserts take KEY SHARE locks on these rows
    -- through their foreign keys, and must not queue behind (or deadlock with) a finish.
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
        INSERT INTO orchwf_workflow_events (workflow_inst_id, step_inst_id, event_type, event_data)
        SELECT d.workflow_inst_id, d.id, e.type, e.data
        FROM done d
        CROSS JOIN LATERAL (VALUES
            ('step.completed', d.outcome = 'completed', jsonb_build_object('duration_ms', d.duration)),
            ('step.failed', d.outcome IN ('failed', 'skipped'),
                 jsonb_build_object('error', d.error, 'retries', d.retry_count)),
            ('step.skipped', d.outcome = 'skipped', jsonb_build_object('error', d.error)),
            ('step.attempt_failed', d.outcome = 'retry',
                 jsonb_build_object('error', d.error, 'attempt', d.attempts, 'retry_in_seconds', d.delay)),
            ('step.rescued', d.outcome = 'requeue', jsonb_build_object('cause', d.error)),
            ('step.released', d.outcome = 'release', '{}'::jsonb)
        ) AS e(type, wanted, data)
        WHERE e.wanted
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
        INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority)
        SELECT s.id, i.id, i.workflow_id, i.queue, s.priority + i.priority
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
        RETURNING s.id, s.workflow_inst_id, s.priority),
    ins AS (
        INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority)
        SELECT p.id, i.id, i.workflow_id, i.queue, p.priority + i.priority
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

CREATE OR REPLACE FUNCTION orchwf_instances_deleted() RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
BEGIN
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
        WITH defsteps AS (
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
