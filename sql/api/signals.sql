-- orchwf API: signals (orchwf.wait_for_signal, Client.signal; docs/signals.md).

-- Is a signal of that name waiting for the instance (sent, not yet consumed)?
CREATE OR REPLACE FUNCTION orchwf_signal_waiting(p_inst uuid, p_name text) RETURNS boolean
LANGUAGE sql
STABLE
SET search_path FROM CURRENT
AS $$
    SELECT EXISTS (SELECT 1 FROM orchwf_signals g
                   WHERE g.workflow_inst_id = p_inst AND g.name = p_name AND g.consumed_by IS NULL)
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
    v_hash     text;
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
    SELECT i.workflow_id, i.queue, i.priority, i.definition_hash INTO v_workflow, v_queue, v_priority, v_hash
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
    -- A step waiting for it now (dependencies done, not queued) becomes ready: one, the
    -- first in the definition's order, as one signal is received by one step.
    WITH woken AS (
        UPDATE orchwf_live_steps s SET run_after = NULL, updated_at = now()
        WHERE s.id = (SELECT w.id FROM orchwf_live_steps w
                      WHERE w.workflow_inst_id = p_inst AND w.wait_signal = p_name AND w.status = 'pending'
                        AND w.pending_deps = 0
                        AND NOT EXISTS (SELECT 1 FROM orchwf_ready_steps r WHERE r.step_inst_id = w.id)
                      ORDER BY w.execution_order LIMIT 1)
        RETURNING s.id, s.priority)
    INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority, definition_hash)
    SELECT w.id, p_inst, v_workflow, v_queue, w.priority + v_priority, v_hash FROM woken w
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS v_woken = ROW_COUNT;
    IF v_woken > 0 THEN
        PERFORM pg_notify('orchwf_ready', v_queue);
    END IF;
    RETURN v_id;
END;
$$;
