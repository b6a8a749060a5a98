-- orchwf API: the in-process store's writes (DBStateManager, orchwf/stores/postgres.py).
--
-- The store saves whole instances and steps (upserts), in any order. Each write keeps
-- the runtime/history split: an instance whose status is not final lives in the runtime
-- tables, a finished one in history; a save that changes that moves it (and its steps).
-- Local runs are few; these writes favour being simple over being fast.

-- The partition of history for p_at exists (a created_at the store was given may be any time).
CREATE OR REPLACE FUNCTION orchwf_store_cover(p_at timestamptz) RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan  -- planned once a session (orchwf_finish_steps)
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM orchwf_partitions x WHERE x.lower <= p_at AND x.upper > p_at) THEN
        PERFORM orchwf_ensure_partitions(p_at, p_at + interval '1 microsecond');
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION orchwf_store_save_instance(
    p_id uuid, p_workflow_id text, p_status text, p_input jsonb, p_output jsonb, p_context jsonb,
    p_current_step_id text, p_started_at timestamptz, p_completed_at timestamptz, p_error text,
    p_retry_count integer, p_last_retry_at timestamptz, p_metadata jsonb, p_trace_id text,
    p_correlation_id text, p_business_id text, p_priority integer, p_queue text, p_idempotency_key text,
    p_run_mode text, p_created_at timestamptz, p_updated_at timestamptz
) RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan  -- planned once a session (orchwf_finish_steps)
AS $$
DECLARE
    v_final boolean := p_status IN ('completed', 'failed', 'cancelled');
BEGIN
    PERFORM orchwf_store_cover(p_created_at);
    -- An idempotency key is unique per workflow among live and finished instances.
    IF p_idempotency_key IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('orchwf_key:' || p_workflow_id || ':' || p_idempotency_key, 0));
        IF EXISTS (SELECT 1 FROM orchwf_workflow_instances o
                   WHERE o.workflow_id = p_workflow_id AND o.idempotency_key = p_idempotency_key AND o.id <> p_id) THEN
            RAISE EXCEPTION 'duplicate idempotency key % for workflow %', p_idempotency_key, p_workflow_id
                USING ERRCODE = 'unique_violation';
        END IF;
    END IF;
    IF NOT v_final THEN
        PERFORM orchwf_unarchive_instance(p_id);
    ELSE
        DELETE FROM orchwf_instance_history h WHERE h.id = p_id;  -- saved again: replaced
    END IF;
    INSERT INTO orchwf_live_instances AS i (
        id, workflow_id, status, input, output, context, current_step_id, started_at, completed_at, error,
        retry_count, last_retry_at, metadata, trace_id, correlation_id, business_id, priority, queue,
        idempotency_key, run_mode, created_at, updated_at)
    VALUES (p_id, p_workflow_id, p_status, p_input, p_output, p_context, p_current_step_id, p_started_at,
            p_completed_at, p_error, p_retry_count, p_last_retry_at, p_metadata, p_trace_id, p_correlation_id,
            p_business_id, p_priority, p_queue, p_idempotency_key, p_run_mode, p_created_at, p_updated_at)
    ON CONFLICT (id) DO UPDATE SET
        workflow_id = EXCLUDED.workflow_id, status = EXCLUDED.status, input = EXCLUDED.input,
        output = EXCLUDED.output, context = EXCLUDED.context, current_step_id = EXCLUDED.current_step_id,
        started_at = EXCLUDED.started_at, completed_at = EXCLUDED.completed_at, error = EXCLUDED.error,
        retry_count = EXCLUDED.retry_count, last_retry_at = EXCLUDED.last_retry_at, metadata = EXCLUDED.metadata,
        trace_id = EXCLUDED.trace_id, correlation_id = EXCLUDED.correlation_id,
        business_id = EXCLUDED.business_id, priority = EXCLUDED.priority, queue = EXCLUDED.queue,
        idempotency_key = EXCLUDED.idempotency_key, run_mode = EXCLUDED.run_mode,
        created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at;
    IF v_final THEN
        -- Its steps saved while it ran are in the runtime table, any saved when it was
        -- finished before are in history: they all go to history with it.
        PERFORM orchwf_store_gather_steps(p_id);
        PERFORM orchwf_archive_instances(ARRAY[p_id]);
    END IF;
END;
$$;

-- A finished instance saved again (or finished by this save): its history steps come back
-- to the runtime table first, so orchwf_archive_instances moves all of them at once.
CREATE OR REPLACE FUNCTION orchwf_store_gather_steps(p_id uuid) RETURNS void
LANGUAGE plpgsql  -- not SQL: a SQL function with a SET clause is planned on every call
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan  -- planned once a session (orchwf_finish_steps)
AS $$
BEGIN
    WITH gone AS (
        DELETE FROM orchwf_step_history s WHERE s.workflow_inst_id = p_id
        RETURNING s.*)
    INSERT INTO orchwf_live_steps (
        id, step_id, workflow_inst_id, status, input, output, started_at, completed_at, error, retry_count,
        last_retry_at, duration_ms, execution_order, priority, attempts, crashes, max_attempts, timeout_seconds,
        required, crash_counts_as_attempt, has_compensator, dependencies, dependents, pending_deps, run_after,
        created_at, updated_at)
    SELECT g.id, g.step_id, g.workflow_inst_id, g.status, g.input, g.output, g.started_at, g.completed_at, g.error,
           g.retry_count, g.last_retry_at, g.duration_ms, g.execution_order, g.priority, g.attempts, g.crashes,
           g.max_attempts, g.timeout_seconds, g.required, g.crash_counts_as_attempt, g.has_compensator,
           g.dependencies, g.dependents, g.pending_deps, g.run_after, g.created_at, g.updated_at
    FROM gone g
    ON CONFLICT (id) DO NOTHING;
END;
$$;

-- Save a step where its instance lives. Returns 0 when the instance is unknown. The
-- instance's row lock (KEY SHARE) keeps it where it is until this commits.
CREATE OR REPLACE FUNCTION orchwf_store_save_step(
    p_id uuid, p_step_id text, p_workflow_inst_id uuid, p_status text, p_input jsonb, p_output jsonb,
    p_started_at timestamptz, p_completed_at timestamptz, p_error text, p_retry_count integer,
    p_last_retry_at timestamptz, p_duration_ms bigint, p_execution_order integer, p_priority integer,
    p_attempts integer, p_now timestamptz
) RETURNS integer
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan  -- planned once a session (orchwf_finish_steps)
AS $$
DECLARE
    v_created timestamptz;
    v_first   timestamptz;
BEGIN
    PERFORM 1 FROM orchwf_live_instances WHERE id = p_workflow_inst_id FOR KEY SHARE;
    IF FOUND THEN
        INSERT INTO orchwf_live_steps AS s (
            id, step_id, workflow_inst_id, status, input, output, started_at, completed_at, error, retry_count,
            last_retry_at, duration_ms, execution_order, priority, attempts, created_at, updated_at)
        VALUES (p_id, p_step_id, p_workflow_inst_id, p_status, p_input, p_output, p_started_at, p_completed_at,
                p_error, p_retry_count, p_last_retry_at, p_duration_ms, p_execution_order, p_priority, p_attempts,
                clock_timestamp(), p_now)
        ON CONFLICT (id) DO UPDATE SET
            step_id = EXCLUDED.step_id, workflow_inst_id = EXCLUDED.workflow_inst_id, status = EXCLUDED.status,
            input = EXCLUDED.input, output = EXCLUDED.output, started_at = EXCLUDED.started_at,
            completed_at = EXCLUDED.completed_at, error = EXCLUDED.error, retry_count = EXCLUDED.retry_count,
            last_retry_at = EXCLUDED.last_retry_at, duration_ms = EXCLUDED.duration_ms,
            execution_order = EXCLUDED.execution_order, priority = EXCLUDED.priority, attempts = EXCLUDED.attempts,
            updated_at = EXCLUDED.updated_at;
        RETURN 1;
    END IF;
    v_created := orchwf_instance_created_at(p_workflow_inst_id);
    IF v_created IS NULL THEN
        RETURN 0;
    END IF;
    PERFORM 1 FROM orchwf_instance_history WHERE created_at = v_created AND id = p_workflow_inst_id FOR KEY SHARE;
    -- A step of a finished instance, saved again: replaced in history (created_at kept).
    DELETE FROM orchwf_step_history s WHERE s.id = p_id RETURNING s.created_at INTO v_first;
    INSERT INTO orchwf_step_history (
        id, step_id, workflow_inst_id, status, input, output, started_at, completed_at, error, retry_count,
        last_retry_at, duration_ms, execution_order, priority, attempts, created_at, updated_at, instance_created_at)
    VALUES (p_id, p_step_id, p_workflow_inst_id, p_status, p_input, p_output, p_started_at, p_completed_at,
            p_error, p_retry_count, p_last_retry_at, p_duration_ms, p_execution_order, p_priority, p_attempts,
            coalesce(v_first, clock_timestamp()), p_now, v_created);
    RETURN 1;
END;
$$;

-- The store's partial updates of an instance (status, output, error). Returns the rows
-- changed (0: unknown). A status that finishes it moves it to history; one that does
-- not, back to the runtime tables.
CREATE OR REPLACE FUNCTION orchwf_store_update_instance(
    p_id uuid, p_status text, p_output jsonb, p_error text, p_now timestamptz
) RETURNS integer
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan  -- planned once a session (orchwf_finish_steps)
AS $$
DECLARE
    v_final boolean := p_status IN ('completed', 'failed', 'cancelled');
BEGIN
    IF NOT EXISTS (SELECT 1 FROM orchwf_live_instances WHERE id = p_id) THEN
        IF NOT orchwf_unarchive_instance(p_id) THEN
            RETURN 0;
        END IF;
        PERFORM orchwf_store_gather_steps(p_id);
    END IF;
    UPDATE orchwf_live_instances
    SET status = coalesce(p_status, status),
        output = coalesce(p_output, output),
        error = coalesce(p_error, error),
        completed_at = CASE WHEN p_status IS NULL THEN completed_at WHEN v_final THEN p_now ELSE completed_at END,
        updated_at = p_now
    WHERE id = p_id;
    IF (SELECT status IN ('completed', 'failed', 'cancelled') FROM orchwf_live_instances WHERE id = p_id) THEN
        PERFORM orchwf_archive_instances(ARRAY[p_id]);
    END IF;
    RETURN 1;
END;
$$;

-- The store's partial updates of a step, where it lives. Returns the rows changed.
CREATE OR REPLACE FUNCTION orchwf_store_update_step(
    p_id uuid, p_status text, p_output jsonb, p_error text, p_now timestamptz
) RETURNS integer
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan  -- planned once a session (orchwf_finish_steps)
AS $$
DECLARE
    v_n integer;
BEGIN
    UPDATE orchwf_live_steps
    SET status = coalesce(p_status, status), output = coalesce(p_output, output), error = coalesce(p_error, error),
        started_at = CASE WHEN p_status = 'running' THEN coalesce(started_at, p_now) ELSE started_at END,
        completed_at = CASE WHEN p_status IN ('completed', 'failed', 'skipped', 'cancelled') THEN p_now
                            ELSE completed_at END,
        updated_at = p_now
    WHERE id = p_id;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    IF v_n = 0 THEN
        UPDATE orchwf_step_history
        SET status = coalesce(p_status, status), output = coalesce(p_output, output), error = coalesce(p_error, error),
            started_at = CASE WHEN p_status = 'running' THEN coalesce(started_at, p_now) ELSE started_at END,
            completed_at = CASE WHEN p_status IN ('completed', 'failed', 'skipped', 'cancelled') THEN p_now
                                ELSE completed_at END,
            updated_at = p_now
        WHERE id = p_id;
        GET DIAGNOSTICS v_n = ROW_COUNT;
    END IF;
    RETURN v_n;
END;
$$;

-- Append an event (saving one with an ID already stored is a no-op). Returns 1 when
-- stored, 0 when the instance or step is unknown or the event was there.
CREATE OR REPLACE FUNCTION orchwf_store_save_event(
    p_id uuid, p_inst uuid, p_step uuid, p_type text, p_data jsonb, p_at timestamptz
) RETURNS integer
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan  -- planned once a session (orchwf_finish_steps)
AS $$
DECLARE
    v_created timestamptz := orchwf_instance_created_at(p_inst);
BEGIN
    IF v_created IS NULL
       OR (p_step IS NOT NULL AND NOT EXISTS (SELECT 1 FROM orchwf_live_steps WHERE id = p_step)
                              AND NOT EXISTS (SELECT 1 FROM orchwf_step_history WHERE id = p_step))
       OR EXISTS (SELECT 1 FROM orchwf_event_history e
                  WHERE e.instance_created_at = v_created AND e.workflow_inst_id = p_inst AND e.id = p_id) THEN
        RETURN 0;
    END IF;
    INSERT INTO orchwf_event_history (id, workflow_inst_id, step_inst_id, event_type, event_data, "timestamp",
                                      instance_created_at)
    VALUES (p_id, p_inst, p_step, p_type, p_data, p_at, v_created);
    RETURN 1;
END;
$$;
