-- orchwf 013 down: no concurrency keys. A rollback does not re-apply the API: the
-- functions of sql/api/keys.sql and the admission trigger go here, and the bodies that
-- name the new columns (enqueue, finish, promote, archive, restart) get their text of
-- release 4 back by an exact replacement of each line 013's API added (as 012's down
-- does); a body that does not hold the expected text stops the rollback, changing nothing.
-- A step that waited for a slot is made ready first: nothing is left behind.

INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority, definition_hash)
SELECT s.id, i.id, i.workflow_id, i.queue, s.priority + i.priority, i.definition_hash
FROM orchwf_key_waits w
CROSS JOIN LATERAL unnest(w.step_ids) AS u(id)
JOIN orchwf_live_steps s ON s.id = u.id
JOIN orchwf_live_instances i ON i.id = s.workflow_inst_id
WHERE s.status IN ('pending', 'retrying') AND i.status IN ('pending', 'running')
ON CONFLICT DO NOTHING;

DO $$
DECLARE
    v_fn   text;
    v_def  text;
    v_edit record;
BEGIN
    CREATE TEMPORARY TABLE orchwf_013_edits ON COMMIT DROP AS
        SELECT * FROM (VALUES
            (1, $a$orchwf_enqueue_many(text,jsonb[],jsonb,integer,text[],text,timestamp with time zone)$a$,
             $a$    v_meta     jsonb := coalesce(p_metadata, '{}');
    v_wf_key   text;     -- the workflow-level concurrency key's template (WorkflowBuilder.with_concurrency)
    v_templates text[];  -- every key template of the definition; NULL: none
BEGIN
$a$,
             $a$    v_meta     jsonb := coalesce(p_metadata, '{}');
BEGIN
$a$),
            (2, $a$orchwf_enqueue_many(text,jsonb[],jsonb,integer,text[],text,timestamp with time zone)$a$,
             $a$        RETURN '{}';
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
$a$,
             $a$        RETURN '{}';
    END IF;
$a$),
            (3, $a$orchwf_enqueue_many(text,jsonb[],jsonb,integer,text[],text,timestamp with time zone)$a$,
             $a$            id, workflow_id, status, input, metadata, trace_id, correlation_id, business_id,
            priority, queue, idempotency_key, run_mode, definition_hash, steps_remaining, created_at,
            concurrency_key, concurrency_limit, concurrency_keys)
        SELECT x.id, p_workflow_id, 'pending', x.input, v_meta,
$a$,
             $a$            id, workflow_id, status, input, metadata, trace_id, correlation_id, business_id,
            priority, queue, idempotency_key, run_mode, definition_hash, steps_remaining, created_at)
        SELECT x.id, p_workflow_id, 'pending', x.input, v_meta,
$a$),
            (4, $a$orchwf_enqueue_many(text,jsonb[],jsonb,integer,text[],text,timestamp with time zone)$a$,
             $a$               v_priority, v_queue, x.key, 'daemon', v_hash, jsonb_array_length(v_def->'steps'),
               orchwf_uuid7_time(x.id),
               CASE WHEN v_wf_key IS NOT NULL THEN orchwf_render_key(v_wf_key, x.input, 'workflow ' || p_workflow_id) END,
               CASE WHEN v_wf_key IS NOT NULL THEN (v_def->'concurrency'->>'limit')::integer END,
               CASE WHEN v_templates IS NOT NULL
                    THEN ARRAY(SELECT DISTINCT orchwf_render_key(t, x.input, 'workflow ' || p_workflow_id)
                               FROM unnest(v_templates) AS t ORDER BY 1) END
        FROM unnest(v_ids, p_inputs, v_keys) AS x(id, input, key)
$a$,
             $a$               v_priority, v_queue, x.key, 'daemon', v_hash, jsonb_array_length(v_def->'steps'),
               orchwf_uuid7_time(x.id)
        FROM unnest(v_ids, p_inputs, v_keys) AS x(id, input, key)
$a$),
            (5, $a$orchwf_enqueue_many(text,jsonb[],jsonb,integer,text[],text,timestamp with time zone)$a$,
             $a$                   st.value->>'signal' AS signal,
                   (st.value->>'signal_timeout')::double precision AS signal_timeout,
                   st.value->'concurrency'->>'key' AS ckey,
                   (st.value->'concurrency'->>'limit')::integer AS climit
            FROM jsonb_array_elements(v_def->'steps') WITH ORDINALITY AS st(value, ord)),
$a$,
             $a$                   st.value->>'signal' AS signal,
                   (st.value->>'signal_timeout')::double precision AS signal_timeout
            FROM jsonb_array_elements(v_def->'steps') WITH ORDINALITY AS st(value, ord)),
$a$),
            (6, $a$orchwf_enqueue_many(text,jsonb[],jsonb,integer,text[],text,timestamp with time zone)$a$,
             $a$                dependents, pending_deps, run_after, max_attempts, timeout_seconds, required,
                crash_counts_as_attempt, has_compensator, delay_seconds, wait_signal, wait_timeout,
                concurrency_key, concurrency_limit)
            SELECT orchwf_uuid7(), d.step_id, i.id, 'pending', d.ord, d.priority, d.deps,
$a$,
             $a$                dependents, pending_deps, run_after, max_attempts, timeout_seconds, required,
                crash_counts_as_attempt, has_compensator, delay_seconds, wait_signal, wait_timeout)
            SELECT orchwf_uuid7(), d.step_id, i.id, 'pending', d.ord, d.priority, d.deps,
$a$),
            (7, $a$orchwf_enqueue_many(text,jsonb[],jsonb,integer,text[],text,timestamp with time zone)$a$,
             $a$                   d.max_attempts, d.timeout, d.required, d.crash_counts, d.has_compensator, d.delay, d.signal,
                   d.signal_timeout,
                   CASE WHEN d.ckey IS NOT NULL
                        THEN orchwf_render_key(d.ckey, (SELECT li.input FROM orchwf_live_instances li WHERE li.id = i.id),
                                               format('step %s of workflow %s', d.step_id, p_workflow_id)) END,
                   d.climit
            FROM unnest(v_inserted) AS i(id) CROSS JOIN defsteps d
$a$,
             $a$                   d.max_attempts, d.timeout, d.required, d.crash_counts, d.has_compensator, d.delay, d.signal,
                   d.signal_timeout
            FROM unnest(v_inserted) AS i(id) CROSS JOIN defsteps d
$a$),
            (8, $a$orchwf_enqueue_many(text,jsonb[],jsonb,integer,text[],text,timestamp with time zone)$a$,
             $a$            FROM unnest(v_inserted) AS i(id) CROSS JOIN defsteps d
            RETURNING s.id, s.workflow_inst_id, s.priority, s.pending_deps, s.run_after, s.wait_signal,
                      s.concurrency_key, s.dependencies),
        new_ready AS (
$a$,
             $a$            FROM unnest(v_inserted) AS i(id) CROSS JOIN defsteps d
            RETURNING s.id, s.workflow_inst_id, s.priority, s.pending_deps, s.run_after, s.wait_signal),
        new_ready AS (
$a$),
            (9, $a$orchwf_enqueue_many(text,jsonb[],jsonb,integer,text[],text,timestamp with time zone)$a$,
             $a$            FROM new_steps n WHERE n.pending_deps = 0 AND n.run_after IS NULL AND n.wait_signal IS NULL
              -- keyed steps are admitted below, in a statement of their own (the admission
              -- reads the step rows this statement writes)
              AND (v_templates IS NULL OR orchwf_ready_key(n.concurrency_key, n.dependencies, v_wf_key) IS NULL)
            RETURNING 1)
$a$,
             $a$            FROM new_steps n WHERE n.pending_deps = 0 AND n.run_after IS NULL AND n.wait_signal IS NULL
            RETURNING 1)
$a$),
            (10, $a$orchwf_enqueue_many(text,jsonb[],jsonb,integer,text[],text,timestamp with time zone)$a$,
             $a$        FROM unnest(v_inserted, v_created) AS i(id, at);

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

$a$,
             $a$        FROM unnest(v_inserted, v_created) AS i(id, at);

$a$),
            (11, $a$orchwf_end_instance(uuid,text,text)$a$,
             $a$    DELETE FROM orchwf_ready_steps WHERE workflow_inst_id = p_inst;
    -- Its steps' concurrency slots go to the next waiters of their keys (sql/api/keys.sql);
    -- the instance's own slot (a workflow-level key) is kept until it is archived.
    IF (SELECT i.concurrency_keys IS NOT NULL FROM orchwf_live_instances i WHERE i.id = p_inst) THEN
        PERFORM orchwf_release_instance_slots(ARRAY[p_inst], true);
    END IF;
    -- Running steps lose their lease here: whatever their workers return is discarded.
$a$,
             $a$    DELETE FROM orchwf_ready_steps WHERE workflow_inst_id = p_inst;
    -- Running steps lose their lease here: whatever their workers return is discarded.
$a$),
            (12, $a$orchwf_finish_steps(uuid[],bigint[],text[],jsonb[],text[],bigint[],double precision[],jsonb[])$a$,
             $a$    v_delayed  boolean;  -- a released dependent waits for its delay (with_delay)
    v_keys     text[];   -- the concurrency keys of the instances (sql/api/keys.sql); NULL: none
    v_freed    uuid[];   -- accepted steps that give their concurrency slot back
BEGIN
$a$,
             $a$    v_delayed  boolean;  -- a released dependent waits for its delay (with_delay)
BEGIN
$a$),
            (13, $a$orchwf_finish_steps(uuid[],bigint[],text[],jsonb[],text[],bigint[],double precision[],jsonb[])$a$,
             $a$    -- on these rows, and must not queue behind (or deadlock with) a finish.
    -- Then their concurrency keys' rows, in key order (none for unkeyed instances).
    SELECT array_agg(DISTINCT k.key ORDER BY k.key) INTO v_keys
    FROM (SELECT i.concurrency_keys FROM orchwf_live_instances i WHERE i.id = ANY (v_insts)
          ORDER BY i.id FOR NO KEY UPDATE) l
    CROSS JOIN LATERAL unnest(l.concurrency_keys) AS k(key);
    IF v_keys IS NOT NULL THEN
        PERFORM orchwf_lock_keys(v_keys);
    END IF;

$a$,
             $a$    -- on these rows, and must not queue behind (or deadlock with) a finish.
    PERFORM 1 FROM orchwf_live_instances i WHERE i.id = ANY (v_insts) ORDER BY i.id FOR NO KEY UPDATE;

$a$),
            (14, $a$orchwf_finish_steps(uuid[],bigint[],text[],jsonb[],text[],bigint[],double precision[],jsonb[])$a$,
             $a$           coalesce(bool_or(d.step_id = '$compensate' AND d.status IN ('completed', 'failed', 'skipped')), false),
           coalesce(bool_or(d.outcome = 'retry' AND d.delay > 0), false),
           array_agg(d.id) FILTER (WHERE d.outcome IN ('completed', 'failed', 'skipped', 'wait')
                                      OR (d.outcome = 'retry' AND d.delay > 0))
    INTO v_accepted, v_requeued, v_parents, v_failed, v_comp, v_later, v_freed
    FROM done d;
$a$,
             $a$           coalesce(bool_or(d.step_id = '$compensate' AND d.status IN ('completed', 'failed', 'skipped')), false),
           coalesce(bool_or(d.outcome = 'retry' AND d.delay > 0), false)
    INTO v_accepted, v_requeued, v_parents, v_failed, v_comp, v_later
    FROM done d;
$a$),
            (15, $a$orchwf_finish_steps(uuid[],bigint[],text[],jsonb[],text[],bigint[],double precision[],jsonb[])$a$,
             $a$    FROM done d;

    -- Concurrency slots: a step that ended, or waits (a backoff, a signal), gives its slot
    -- to the next waiter of its key; one that goes straight back to the queue (a retry, a
    -- rescue) keeps it.
    IF v_keys IS NOT NULL AND v_freed IS NOT NULL THEN
        PERFORM orchwf_release_slots(v_freed);
    END IF;

$a$,
             $a$    FROM done d;

$a$),
            (16, $a$orchwf_finish_steps(uuid[],bigint[],text[],jsonb[],text[],bigint[],double precision[],jsonb[])$a$,
             $a$        INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority, suspect,
                                        definition_hash, concurrency_key)
        SELECT s.id, i.id, i.workflow_id, i.queue, s.priority + i.priority, s.crashes > 0, i.definition_hash,
               orchwf_ready_key(s.concurrency_key, s.dependencies, i.concurrency_key)
        FROM orchwf_live_steps s JOIN orchwf_live_instances i ON i.id = s.workflow_inst_id AND i.id = ANY (v_insts)
$a$,
             $a$        INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority, suspect,
                                        definition_hash)
        SELECT s.id, i.id, i.workflow_id, i.queue, s.priority + i.priority, s.crashes > 0, i.definition_hash
        FROM orchwf_live_steps s JOIN orchwf_live_instances i ON i.id = s.workflow_inst_id AND i.id = ANY (v_insts)
$a$),
            (17, $a$orchwf_finish_steps(uuid[],bigint[],text[],jsonb[],text[],bigint[],double precision[],jsonb[])$a$,
             $a$          AND i.status IN ('pending', 'running')
        ORDER BY 8, 1
        ON CONFLICT DO NOTHING;
$a$,
             $a$          AND i.status IN ('pending', 'running')
        ON CONFLICT DO NOTHING;
$a$),
            (18, $a$orchwf_finish_steps(uuid[],bigint[],text[],jsonb[],text[],bigint[],double precision[],jsonb[])$a$,
             $a$              AND s.step_id = dec.child AND s.status = 'pending'
            RETURNING s.id, s.workflow_inst_id, s.priority, s.pending_deps, s.run_after, s.wait_signal,
                      s.concurrency_key, s.dependencies),
        ready AS (
$a$,
             $a$              AND s.step_id = dec.child AND s.status = 'pending'
            RETURNING s.id, s.workflow_inst_id, s.priority, s.pending_deps, s.run_after, s.wait_signal),
        ready AS (
$a$),
            (19, $a$orchwf_finish_steps(uuid[],bigint[],text[],jsonb[],text[],bigint[],double precision[],jsonb[])$a$,
             $a$            INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority,
                                            definition_hash, concurrency_key)
            SELECT r.id, i.id, i.workflow_id, i.queue, r.priority + i.priority, i.definition_hash,
                   orchwf_ready_key(r.concurrency_key, r.dependencies, i.concurrency_key)
            FROM released r JOIN orchwf_live_instances i ON i.id = r.workflow_inst_id AND i.id = ANY (v_insts)
$a$,
             $a$            INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority,
                                            definition_hash)
            SELECT r.id, i.id, i.workflow_id, i.queue, r.priority + i.priority, i.definition_hash
            FROM released r JOIN orchwf_live_instances i ON i.id = r.workflow_inst_id AND i.id = ANY (v_insts)
$a$),
            (20, $a$orchwf_finish_steps(uuid[],bigint[],text[],jsonb[],text[],bigint[],double precision[],jsonb[])$a$,
             $a$              AND (r.wait_signal IS NULL OR orchwf_signal_waiting(r.workflow_inst_id, r.wait_signal))
            ORDER BY 7, 1
            ON CONFLICT DO NOTHING
$a$,
             $a$              AND (r.wait_signal IS NULL OR orchwf_signal_waiting(r.workflow_inst_id, r.wait_signal))
            ON CONFLICT DO NOTHING
$a$),
            (21, $a$orchwf_promote_scheduled(integer)$a$,
             $a$          AND s.status IN ('pending', 'retrying')
        RETURNING s.id, s.workflow_inst_id, s.priority, s.crashes, s.concurrency_key, s.dependencies),
    ins AS (
$a$,
             $a$          AND s.status IN ('pending', 'retrying')
        RETURNING s.id, s.workflow_inst_id, s.priority, s.crashes),
    ins AS (
$a$),
            (22, $a$orchwf_promote_scheduled(integer)$a$,
             $a$    ins AS (
        -- Keyed steps are admitted or parked by the trigger (sql/api/keys.sql), in key order.
        INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority, suspect,
$a$,
             $a$    ins AS (
        INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority, suspect,
$a$),
            (23, $a$orchwf_promote_scheduled(integer)$a$,
             $a$        INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority, suspect,
                                        definition_hash, concurrency_key)
        SELECT p.id, i.id, i.workflow_id, i.queue, p.priority + i.priority, p.crashes > 0, i.definition_hash,
               orchwf_ready_key(p.concurrency_key, p.dependencies, i.concurrency_key)
        FROM promoted p JOIN orchwf_live_instances i ON i.id = p.workflow_inst_id AND i.id = ANY (v_insts)
$a$,
             $a$        INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority, suspect,
                                        definition_hash)
        SELECT p.id, i.id, i.workflow_id, i.queue, p.priority + i.priority, p.crashes > 0, i.definition_hash
        FROM promoted p JOIN orchwf_live_instances i ON i.id = p.workflow_inst_id AND i.id = ANY (v_insts)
$a$),
            (24, $a$orchwf_promote_scheduled(integer)$a$,
             $a$        FROM promoted p JOIN orchwf_live_instances i ON i.id = p.workflow_inst_id AND i.id = ANY (v_insts)
        ORDER BY 8, 1
        ON CONFLICT DO NOTHING
$a$,
             $a$        FROM promoted p JOIN orchwf_live_instances i ON i.id = p.workflow_inst_id AND i.id = ANY (v_insts)
        ON CONFLICT DO NOTHING
$a$),
            (25, $a$orchwf_restart_instance(uuid,jsonb)$a$,
             $a$    WHERE id = p_inst;
    INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority, definition_hash,
                                    concurrency_key)
    SELECT s.id, i.id, i.workflow_id, i.queue, s.priority + i.priority, i.definition_hash,
           orchwf_ready_key(s.concurrency_key, s.dependencies, i.concurrency_key)
    FROM orchwf_live_steps s JOIN orchwf_live_instances i ON i.id = s.workflow_inst_id
$a$,
             $a$    WHERE id = p_inst;
    INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority, definition_hash)
    SELECT s.id, i.id, i.workflow_id, i.queue, s.priority + i.priority, i.definition_hash
    FROM orchwf_live_steps s JOIN orchwf_live_instances i ON i.id = s.workflow_inst_id
$a$),
            (26, $a$orchwf_restart_instance(uuid,jsonb)$a$,
             $a$    WHERE s.workflow_inst_id = p_inst AND s.status = 'pending' AND s.pending_deps = 0
    ORDER BY 7, 1
    ON CONFLICT DO NOTHING;
$a$,
             $a$    WHERE s.workflow_inst_id = p_inst AND s.status = 'pending' AND s.pending_deps = 0
    ON CONFLICT DO NOTHING;
$a$),
            (27, $a$orchwf_archive_instances(uuid[])$a$,
             $a$    v_reports jsonb;
    v_keyed   boolean;
BEGIN
$a$,
             $a$    v_reports jsonb;
BEGIN
$a$),
            (28, $a$orchwf_archive_instances(uuid[])$a$,
             $a$                                                     'status', i.status, 'output', i.output, 'error', i.error)))
                    FILTER (WHERE i.metadata ? 'orchwf_parent_signal'), '[]'),
           bool_or(i.concurrency_keys IS NOT NULL)
    INTO v_ids, v_created, v_reports, v_keyed
    FROM orchwf_live_instances i WHERE i.id = ANY (p_ids);
$a$,
             $a$                                                     'status', i.status, 'output', i.output, 'error', i.error)))
                    FILTER (WHERE i.metadata ? 'orchwf_parent_signal'), '[]')
    INTO v_ids, v_created, v_reports
    FROM orchwf_live_instances i WHERE i.id = ANY (p_ids);
$a$),
            (29, $a$orchwf_archive_instances(uuid[])$a$,
             $a$    FROM orchwf_live_instances i WHERE i.id = ANY (p_ids);
    -- Their concurrency slots (the instances' own too) go to the next waiters (keys.sql).
    IF v_keyed THEN
        PERFORM orchwf_release_instance_slots(p_ids, false);
    END IF;
    WITH gone AS (
$a$,
             $a$    FROM orchwf_live_instances i WHERE i.id = ANY (p_ids);
    WITH gone AS (
$a$),
            (30, $a$orchwf_report_to_parents(jsonb)$a$,
             $a$          AND s.pending_deps = 0
        RETURNING s.id, s.workflow_inst_id, s.priority, s.concurrency_key, s.dependencies),
    queued AS (
$a$,
             $a$          AND s.pending_deps = 0
        RETURNING s.id, s.workflow_inst_id, s.priority),
    queued AS (
$a$),
            (31, $a$orchwf_report_to_parents(jsonb)$a$,
             $a$    queued AS (
        -- A keyed step is admitted or parked (sql/api/keys.sql), in key order.
        INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority,
$a$,
             $a$    queued AS (
        INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority,
$a$),
            (32, $a$orchwf_report_to_parents(jsonb)$a$,
             $a$        INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority,
                                        definition_hash, concurrency_key)
        SELECT w.id, p.id, p.workflow_id, p.queue, w.priority + p.priority, p.definition_hash,
               orchwf_ready_key(w.concurrency_key, w.dependencies, p.concurrency_key)
        FROM woken w JOIN orchwf_live_instances p ON p.id = w.workflow_inst_id
$a$,
             $a$        INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority,
                                        definition_hash)
        SELECT w.id, p.id, p.workflow_id, p.queue, w.priority + p.priority, p.definition_hash
        FROM woken w JOIN orchwf_live_instances p ON p.id = w.workflow_inst_id
$a$),
            (33, $a$orchwf_report_to_parents(jsonb)$a$,
             $a$        FROM woken w JOIN orchwf_live_instances p ON p.id = w.workflow_inst_id
        ORDER BY 7, 1
        ON CONFLICT DO NOTHING
$a$,
             $a$        FROM woken w JOIN orchwf_live_instances p ON p.id = w.workflow_inst_id
        ON CONFLICT DO NOTHING
$a$),
            (34, $a$orchwf_signal_many(uuid[],text[],jsonb[])$a$,
             $a$            array_fill(0::double precision, ARRAY[cardinality(v_steps)]));
        -- A step completed here may have been parked for its concurrency key's slot (its
        -- signal taken after it was queued): its wait goes with it, under the key row's
        -- lock that the finish took. Left behind, the key's next release would give a
        -- slot to a step that has ended, and nothing would give it back.
        DELETE FROM orchwf_key_waits w WHERE w.holder = ANY (v_steps);
    END IF;
$a$,
             $a$            array_fill(0::double precision, ARRAY[cardinality(v_steps)]));
    END IF;
$a$)

        ) AS e(ord, fn, added, original);
    -- Every edit of a function first, then one CREATE OR REPLACE: plpgsql checks each body.
    FOR v_fn IN SELECT DISTINCT e.fn FROM orchwf_013_edits e LOOP
        v_def := pg_get_functiondef(v_fn::regprocedure);
        FOR v_edit IN SELECT * FROM orchwf_013_edits e WHERE e.fn = v_fn ORDER BY e.ord LOOP
            IF position(v_edit.added IN v_def) = 0 THEN
                RAISE EXCEPTION 'orchwf 013 down: % does not hold the lines 013 added; re-apply the API of the '
                                'release you roll back to (orchwf migrate up with it) after this', v_fn;
            END IF;
            v_def := replace(v_def, v_edit.added, v_edit.original);
        END LOOP;
        EXECUTE v_def;
    END LOOP;
END;
$$;

DROP TRIGGER IF EXISTS orchwf_ready_steps_admit ON orchwf_ready_steps;
DROP FUNCTION IF EXISTS orchwf_admit_ready();
DROP FUNCTION IF EXISTS orchwf_key_stats(integer);
DROP FUNCTION IF EXISTS orchwf_forget_idle_keys(interval, integer);
DROP FUNCTION IF EXISTS orchwf_release_instance_slots(uuid[], boolean);
DROP FUNCTION IF EXISTS orchwf_release_slots(uuid[]);
DROP FUNCTION IF EXISTS orchwf_lock_keys(text[]);
DROP FUNCTION IF EXISTS orchwf_ready_key(text, text[], text);
DROP FUNCTION IF EXISTS orchwf_render_key(text, jsonb, text);
DROP TABLE orchwf_key_waits;
DROP TABLE orchwf_key_slots;
DROP TABLE orchwf_concurrency_keys;
ALTER TABLE orchwf_ready_steps DROP COLUMN concurrency_key;
ALTER TABLE orchwf_live_instances DROP COLUMN concurrency_keys, DROP COLUMN concurrency_limit,
    DROP COLUMN concurrency_key;
ALTER TABLE orchwf_live_steps DROP COLUMN concurrency_limit, DROP COLUMN concurrency_key;
