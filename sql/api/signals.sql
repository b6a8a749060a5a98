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
-- orchwf_signal_many for one signal; returns its id.
CREATE OR REPLACE FUNCTION orchwf_signal(p_inst uuid, p_name text, p_payload jsonb DEFAULT '{}')
RETURNS bigint
LANGUAGE sql
SET search_path FROM CURRENT
AS $$
    SELECT m.signal_id FROM orchwf_signal_many(ARRAY[p_inst], ARRAY[p_name], ARRAY[p_payload]) m
$$;

-- Send signals (the i-th to p_insts[i], named p_names[i], with p_payloads[i]) in the
-- caller's transaction: a rollback sends nothing. A signal is received by one step of its
-- instance that waits for its name (wait_for_signal), exactly once:
--   * a step waiting now (its dependencies done, not queued) is completed here, with the
--     payload as its output, as a worker would complete it (claimed under a fresh lease
--     token and finished by orchwf_finish_steps: its dependents are released, its
--     instance may end), and the signal is consumed in the same transaction. No worker
--     round trip: the wait costs nothing, and the delivery is this statement's latency;
--   * otherwise the signal is kept until a step takes it: a step released later with a
--     signal waiting is queued, and its worker consumes it (runner.py, _receive).
-- Several signals of one name to one instance go to its waiting steps in definition
-- order, one each; the rest are kept. Refused, with nothing stored: an unknown instance
-- (OW404), a finished one (OW409), a name no step of the instance's workflow waits for,
-- a reserved name (orchwf:...), or a payload that is not a JSON object (OW400).
-- Returns, in input order, each signal's id and the step it completed (NULL: kept).
CREATE OR REPLACE FUNCTION orchwf_signal_many(p_insts uuid[], p_names text[], p_payloads jsonb[])
RETURNS TABLE (signal_id bigint, step_inst_id uuid)
LANGUAGE plpgsql
SET search_path FROM CURRENT
-- Key lookups only, whatever the statistics of the churning runtime tables say (finish.sql).
SET enable_seqscan = off
SET enable_bitmapscan = off
SET jit = off
AS $$
DECLARE
    v_n        integer := cardinality(p_insts);
    v_bad      record;
    v_sig      bigint[];
    v_taken    uuid[];
    v_steps    uuid[];
    v_outputs  jsonb[];
    v_tokens   bigint[];
    v_live     bigint;
BEGIN
    IF v_n IS NULL OR cardinality(p_names) IS DISTINCT FROM v_n OR cardinality(p_payloads) IS DISTINCT FROM v_n THEN
        RAISE EXCEPTION 'orchwf_signal_many takes three arrays of the same length' USING ERRCODE = 'OW400';
    END IF;
    IF v_n = 0 THEN
        RETURN;
    END IF;
    SELECT x.inst, x.name, x.payload INTO v_bad
    FROM unnest(p_insts, p_names, p_payloads) AS x(inst, name, payload)
    WHERE x.inst IS NULL OR x.name IS NULL OR length(x.name) NOT BETWEEN 1 AND 255 OR x.name LIKE 'orchwf:%'
       OR x.payload IS NULL OR jsonb_typeof(x.payload) <> 'object'
    LIMIT 1;
    IF FOUND THEN
        IF v_bad.inst IS NULL THEN
            RAISE EXCEPTION 'workflow not found: NULL' USING ERRCODE = 'OW404';
        ELSIF v_bad.name IS NULL OR length(v_bad.name) NOT BETWEEN 1 AND 255 THEN
            RAISE EXCEPTION 'a signal name must be 1 to 255 characters' USING ERRCODE = 'OW400';
        ELSIF v_bad.name LIKE 'orchwf:%' THEN
            RAISE EXCEPTION 'signal names beginning with orchwf: are reserved (child workflows report with them)'
                USING ERRCODE = 'OW400';
        END IF;
        RAISE EXCEPTION 'a signal payload must be a JSON object' USING ERRCODE = 'OW400';
    END IF;

    -- The instances first, in id order, as the finish locks them: the release of a
    -- waiting step and a signal are ordered (each sees the other).
    SELECT count(*) INTO v_live
    FROM (SELECT 1 FROM orchwf_live_instances i
          WHERE i.id = ANY (p_insts) AND i.status IN ('pending', 'running')
          ORDER BY i.id
          FOR NO KEY UPDATE) l;
    IF v_live < (SELECT count(DISTINCT x.inst) FROM unnest(p_insts) AS x(inst)) THEN
        -- Which one (the refusal's path only: an anti-join of the batch)
        SELECT x.inst INTO v_bad FROM unnest(p_insts) AS x(inst)
        WHERE NOT EXISTS (SELECT 1 FROM orchwf_live_instances i
                          WHERE i.id = x.inst AND i.status IN ('pending', 'running'))
        LIMIT 1;
        IF EXISTS (SELECT 1 FROM orchwf_workflow_instances o WHERE o.id = v_bad.inst) THEN
            RAISE EXCEPTION 'workflow instance % has finished: it receives no signals', v_bad.inst
                USING ERRCODE = 'OW409';
        END IF;
        RAISE EXCEPTION 'workflow not found: %', v_bad.inst USING ERRCODE = 'OW404';
    END IF;
    SELECT x.name, i.workflow_id INTO v_bad
    FROM (SELECT DISTINCT u.inst, u.name FROM unnest(p_insts, p_names) AS u(inst, name)) x
    JOIN orchwf_live_instances i ON i.id = x.inst AND i.id = ANY (p_insts)
    WHERE NOT EXISTS (SELECT 1 FROM orchwf_live_steps s WHERE s.workflow_inst_id = x.inst AND s.wait_signal = x.name)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'no step of workflow % waits for a signal named %', v_bad.workflow_id, quote_literal(v_bad.name)
            USING ERRCODE = 'OW400';
    END IF;

    -- The k-th signal of a name to an instance goes to its k-th step waiting for that
    -- name now (dependencies done, not queued, not running), in definition order, and is
    -- stored consumed by it. Stored in input order: the identity gives ascending ids in
    -- the order rows are inserted, so the n-th id is the n-th signal.
    WITH n AS (
        SELECT x.inst, x.name, x.payload, x.ord,
               row_number() OVER (PARTITION BY x.inst, x.name ORDER BY x.ord) AS k
        FROM unnest(p_insts, p_names, p_payloads) WITH ORDINALITY AS x(inst, name, payload, ord)),
    w AS (
        SELECT w.id, w.workflow_inst_id, w.wait_signal,
               row_number() OVER (PARTITION BY w.workflow_inst_id, w.wait_signal ORDER BY w.execution_order) AS k
        -- each (instance, name) looked up by the instance's key
        FROM (SELECT DISTINCT u.inst, u.name FROM unnest(p_insts, p_names) AS u(inst, name)) x
        CROSS JOIN LATERAL (
            SELECT w.id, w.workflow_inst_id, w.wait_signal, w.execution_order
            FROM orchwf_live_steps w
            WHERE w.workflow_inst_id = x.inst AND w.wait_signal = x.name
              AND w.status = 'pending' AND w.pending_deps = 0
              AND NOT EXISTS (SELECT 1 FROM orchwf_ready_steps r WHERE r.step_inst_id = w.id)) w),
    sent AS (
        INSERT INTO orchwf_signals (workflow_inst_id, name, payload, consumed_by, consumed_at)
        SELECT n.inst, n.name, n.payload, w.id, CASE WHEN w.id IS NOT NULL THEN now() END
        FROM n LEFT JOIN w ON w.workflow_inst_id = n.inst AND w.wait_signal = n.name AND w.k = n.k
        ORDER BY n.ord
        RETURNING id, consumed_by, payload)
    SELECT array_agg(s.id ORDER BY s.id), array_agg(s.consumed_by ORDER BY s.id),
           array_agg(s.consumed_by ORDER BY s.id) FILTER (WHERE s.consumed_by IS NOT NULL),
           array_agg(s.payload ORDER BY s.id) FILTER (WHERE s.consumed_by IS NOT NULL)
    INTO v_sig, v_taken, v_steps, v_outputs
    FROM sent s;

    IF v_steps IS NOT NULL THEN
        -- Claimed as a worker would (a fresh lease token, an attempt, step.started), so
        -- that orchwf_finish_steps completes it exactly as it completes a worker's result.
        WITH claimed AS (
            UPDATE orchwf_live_steps s
            SET status = 'running', attempts = s.attempts + 1, lease_owner = 'orchwf_signal',
                lease_token = nextval('orchwf_lease_token_seq'),
                lease_expires_at = now() + interval '1 minute', run_after = NULL,
                started_at = coalesce(s.started_at, now()), updated_at = now()
            WHERE s.id = ANY (v_steps)
            RETURNING s.id, s.workflow_inst_id, s.step_id, s.lease_token, s.attempts),
        events AS (
            INSERT INTO orchwf_event_history (id, workflow_inst_id, step_inst_id, event_type, event_data,
                                              instance_created_at)
            SELECT orchwf_uuid7(), c.workflow_inst_id, c.id,
                   CASE WHEN c.attempts = 1 THEN 'step.started' ELSE 'step.retry' END,
                   CASE WHEN c.attempts = 1 THEN jsonb_build_object('step_id', c.step_id)
                        ELSE jsonb_build_object('attempt', c.attempts) END,
                   i.created_at
            FROM claimed c JOIN orchwf_live_instances i ON i.id = c.workflow_inst_id AND i.id = ANY (p_insts)
            RETURNING 1)
        SELECT array_agg(c.lease_token ORDER BY x.ord) INTO v_tokens
        FROM unnest(v_steps) WITH ORDINALITY AS x(id, ord) JOIN claimed c ON c.id = x.id;
        PERFORM orchwf_finish_steps(
            v_steps, v_tokens, array_fill('completed'::text, ARRAY[cardinality(v_steps)]), v_outputs,
            array_fill(NULL::text, ARRAY[cardinality(v_steps)]), array_fill(0::bigint, ARRAY[cardinality(v_steps)]),
            array_fill(0::double precision, ARRAY[cardinality(v_steps)]));
        -- A step completed here may have been parked for its concurrency key's slot (its
        -- signal taken after it was queued): its wait goes with it, under the key row's
        -- lock that the finish took. Left behind, the key's next release would give a
        -- slot to a step that has ended, and nothing would give it back.
        DELETE FROM orchwf_key_waits w WHERE w.holder = ANY (v_steps);
    END IF;

    RETURN QUERY
    SELECT x.id, x.step FROM unnest(v_sig, v_taken) AS x(id, step) ORDER BY x.id;
END;
$$;
