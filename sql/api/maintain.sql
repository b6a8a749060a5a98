-- orchwf API: the supervisor's maintenance: promote due retries, the periodic round, and
-- retention (which drops whole partitions of history: util.sql).

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
        RETURNING s.id, s.workflow_inst_id, s.priority, s.crashes, s.concurrency_key, s.dependencies),
    ins AS (
        -- Keyed steps are admitted or parked by the trigger (sql/api/keys.sql), in key order.
        INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority, suspect,
                                        definition_hash, concurrency_key)
        SELECT p.id, i.id, i.workflow_id, i.queue, p.priority + i.priority, p.crashes > 0, i.definition_hash,
               orchwf_ready_key(p.concurrency_key, p.dependencies, i.concurrency_key)
        FROM promoted p JOIN orchwf_live_instances i ON i.id = p.workflow_inst_id AND i.id = ANY (v_insts)
        ORDER BY 8, 1
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
-- History's partitions are kept ahead of now here too, once half their lead is used.
CREATE OR REPLACE FUNCTION orchwf_maintain(p_supervisor text, p_rescue boolean, p_queues text[], p_workflows text[])
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
    -- The first entry of the index, as an ordered LIMIT 1: a min() may be planned as an
    -- aggregate over the whole index when the statistics saw the table empty.
    next_due := extract(epoch FROM (SELECT s.run_after FROM orchwf_live_steps s WHERE s.run_after IS NOT NULL
                                    ORDER BY s.run_after LIMIT 1) - now());
    suspects := EXISTS (SELECT 1 FROM orchwf_ready_steps r
                        WHERE r.suspect AND r.queue = ANY (p_queues) AND r.workflow_id = ANY (p_workflows)
                          AND NOT EXISTS (SELECT 1 FROM orchwf_queues c WHERE c.name = r.queue AND c.paused));
    IF (SELECT p.horizon < now() + p.premake * p."interval" / 2 FROM orchwf_partitioning p) THEN
        PERFORM orchwf_extend_partitions();
    END IF;
    RETURN NEXT;
END;
$$;

-- Retention, in one transaction: drop the partitions of history whose instances all
-- finished more than p_older_than ago (orchwf_drop_expired_partitions). Whole
-- partitions only, never a DELETE: an instance finished more recently keeps its range.
-- Returns the instances dropped (an estimate). p_limit bounds the partitions per call.
CREATE OR REPLACE FUNCTION orchwf_prune(p_older_than interval, p_limit integer DEFAULT 5000)
RETURNS integer
LANGUAGE sql
SET search_path FROM CURRENT
AS $$
    SELECT orchwf_drop_expired_partitions(p_older_than, least(p_limit, 1000))::integer
$$;
