-- orchwf API: the supervisor's maintenance (promote due retries, rescue, prune) and the
-- cascade of instance deletes.

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
    SELECT extract(epoch FROM min(s.run_after) - now()) INTO next_due
    FROM orchwf_step_instances s WHERE s.run_after IS NOT NULL;
    suspects := EXISTS (SELECT 1 FROM orchwf_ready_steps r
                        WHERE r.suspect AND r.queue = ANY (p_queues) AND r.workflow_id = ANY (p_workflows));
    RETURN NEXT;
END;
$$;

-- Delete finished instances (with their steps and events) older than the cutoff.
CREATE OR REPLACE FUNCTION orchwf_prune(p_older_than interval, p_limit integer DEFAULT 5000)
RETURNS integer
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_n integer;
BEGIN
    WITH old AS (
        SELECT i.id FROM orchwf_workflow_instances i
        WHERE i.status IN ('completed', 'failed', 'cancelled') AND i.completed_at < now() - p_older_than
        ORDER BY i.completed_at
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED),
    gone AS (DELETE FROM orchwf_workflow_instances i USING old WHERE i.id = old.id RETURNING 1)
    SELECT count(*) INTO v_n FROM gone;
    RETURN v_n;
END;
$$;

-- Deleting instances (prune, operators) deletes their steps, events, ready and running
-- rows: once per statement, not per row.
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

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = 'orchwf_instances_deleted'
                   AND tgrelid = 'orchwf_workflow_instances'::regclass) THEN
        CREATE TRIGGER orchwf_instances_deleted AFTER DELETE ON orchwf_workflow_instances
            REFERENCING OLD TABLE AS gone FOR EACH STATEMENT EXECUTE FUNCTION orchwf_instances_deleted();
    END IF;
END;
$$;
