-- orchwf API: enqueue (also the SQL producers' interface: SELECT orchwf_enqueue(...)).

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
-- One plan per statement for the session (as orchwf_finish_steps): an enqueue of one
-- instance, what most producers do, was planned again on every call, for two thirds of
-- its instructions (bench sqlcost --enqueue --batch 1: 5.4M -> 1.7M a call).
SET plan_cache_mode = force_generic_plan
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
    v_wf_key   text;     -- the workflow-level concurrency key's template (WorkflowBuilder.with_concurrency)
    v_templates text[];  -- every key template of the definition; NULL: none
BEGIN
    SELECT d.definition, d.version_hash INTO v_def, v_hash
    FROM orchwf_workflow_definitions d WHERE d.workflow_id = p_workflow_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'workflow not found: %', p_workflow_id USING ERRCODE = 'OW404';
    END IF;
    IF v_n = 0 THEN
        RETURN '{}';
    END IF;
    -- Concurrency keys (sql/api/keys.sql): rendered from each input below; a field an
    -- input lacks fails the whole call, so nothing is stored.
    IF v_def ? 'concurrency' OR v_def @? '$.steps[*].concurrency' THEN
        v_wf_key := v_def->'concurrency'->>'key';
        SELECT array_agg(DISTINCT t) INTO v_templates
        FROM (SELECT v_wf_key UNION ALL
              SELECT st->'concurrency'->>'key' FROM jsonb_array_elements(v_def->'steps') st) x(t)
        WHERE t IS NOT NULL;
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
            priority, queue, idempotency_key, run_mode, definition_hash, steps_remaining, created_at,
            concurrency_key, concurrency_limit, concurrency_keys)
        SELECT x.id, p_workflow_id, 'pending', x.input, v_meta,
               coalesce(nullif(v_meta->>'trace_id', ''), orchwf_uuid7()::text),
               coalesce(nullif(v_meta->>'correlation_id', ''), orchwf_uuid7()::text),
               coalesce(v_meta->>'business_id', ''),
               v_priority, v_queue, x.key, 'daemon', v_hash, jsonb_array_length(v_def->'steps'),
               orchwf_uuid7_time(x.id),
               CASE WHEN v_wf_key IS NOT NULL THEN orchwf_render_key(v_wf_key, x.input, 'workflow ' || p_workflow_id) END,
               CASE WHEN v_wf_key IS NOT NULL THEN (v_def->'concurrency'->>'limit')::integer END,
               CASE WHEN v_templates IS NOT NULL
                    THEN ARRAY(SELECT DISTINCT orchwf_render_key(t, x.input, 'workflow ' || p_workflow_id)
                               FROM unnest(v_templates) AS t ORDER BY 1) END
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
                   (st.value->>'signal_timeout')::double precision AS signal_timeout,
                   st.value->'concurrency'->>'key' AS ckey,
                   (st.value->'concurrency'->>'limit')::integer AS climit
            FROM jsonb_array_elements(v_def->'steps') WITH ORDINALITY AS st(value, ord)),
        new_steps AS (
            INSERT INTO orchwf_live_steps AS s (
                id, step_id, workflow_inst_id, status, execution_order, priority, dependencies,
                dependents, pending_deps, run_after, max_attempts, timeout_seconds, required,
                crash_counts_as_attempt, has_compensator, delay_seconds, wait_signal, wait_timeout,
                concurrency_key, concurrency_limit)
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
                   d.signal_timeout,
                   CASE WHEN d.ckey IS NOT NULL
                        THEN orchwf_render_key(d.ckey, (SELECT li.input FROM orchwf_live_instances li WHERE li.id = i.id),
                                               format('step %s of workflow %s', d.step_id, p_workflow_id)) END,
                   d.climit
            FROM unnest(v_inserted) AS i(id) CROSS JOIN defsteps d
            RETURNING s.id, s.workflow_inst_id, s.priority, s.pending_deps, s.run_after, s.wait_signal,
                      s.concurrency_key, s.dependencies),
        new_ready AS (
            INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority,
                                            definition_hash)
            SELECT n.id, n.workflow_inst_id, p_workflow_id, v_queue, n.priority + v_priority, v_hash
            FROM new_steps n WHERE n.pending_deps = 0 AND n.run_after IS NULL AND n.wait_signal IS NULL
              -- keyed steps are admitted below, in a statement of their own (the admission
              -- reads the step rows this statement writes)
              AND (v_templates IS NULL OR orchwf_ready_key(n.concurrency_key, n.dependencies, v_wf_key) IS NULL)
            RETURNING 1)
        INSERT INTO orchwf_event_history (id, workflow_inst_id, event_type, event_data, instance_created_at)
        SELECT orchwf_uuid7(), i.id, 'workflow.started', jsonb_build_object('workflow_id', p_workflow_id), i.at
        FROM unnest(v_inserted, v_created) AS i(id, at);

        IF v_templates IS NOT NULL THEN
            -- Admitted or parked by the trigger (sql/api/keys.sql), in key order.
            INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority,
                                            definition_hash, concurrency_key)
            SELECT s.id, i.id, p_workflow_id, v_queue, s.priority + v_priority, v_hash,
                   orchwf_ready_key(s.concurrency_key, s.dependencies, i.concurrency_key)
            FROM orchwf_live_instances i
            JOIN orchwf_live_steps s ON s.workflow_inst_id = i.id AND s.workflow_inst_id = ANY (v_inserted)
            WHERE i.id = ANY (v_inserted) AND s.pending_deps = 0 AND s.run_after IS NULL AND s.wait_signal IS NULL
              AND orchwf_ready_key(s.concurrency_key, s.dependencies, i.concurrency_key) IS NOT NULL
            ORDER BY 7, s.id;
        END IF;

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

CREATE OR REPLACE FUNCTION orchwf_enqueue(
    p_workflow_id     text,
    p_input           jsonb,
    p_metadata        jsonb DEFAULT '{}',
    p_priority        integer DEFAULT NULL,
    p_idempotency_key text DEFAULT NULL,
    p_queue           text DEFAULT NULL,
    p_run_after       timestamptz DEFAULT NULL
) RETURNS uuid
LANGUAGE sql
AS $$
    SELECT (orchwf_enqueue_many(p_workflow_id, ARRAY[p_input], p_metadata, p_priority,
                                CASE WHEN p_idempotency_key IS NULL THEN NULL ELSE ARRAY[p_idempotency_key] END,
                                p_queue, p_run_after))[1];
$$;
