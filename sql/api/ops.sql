-- orchwf API: operator actions (cancel, resume, retry one step) and queue statistics.

CREATE OR REPLACE FUNCTION orchwf_cancel_workflow(p_inst uuid)
RETURNS text
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_status text;
BEGIN
    SELECT status INTO v_status FROM orchwf_live_instances WHERE id = p_inst FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        SELECT status INTO v_status FROM orchwf_workflow_instances WHERE id = p_inst;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'workflow not found: %', p_inst USING ERRCODE = 'OW404';
        END IF;
    END IF;
    IF v_status = 'cancelled' THEN
        RETURN v_status;
    END IF;
    IF v_status IN ('completed', 'failed') THEN
        RAISE EXCEPTION 'workflow % is already %', p_inst, v_status USING ERRCODE = 'OW409';
    END IF;
    IF EXISTS (SELECT 1 FROM orchwf_live_steps WHERE workflow_inst_id = p_inst
               AND step_id = '$compensate' AND status IN ('pending', 'running', 'retrying')) THEN
        RETURN v_status;  -- already compensating: let it finish
    END IF;
    PERFORM orchwf_end_instance(p_inst, 'cancelled', NULL);
    SELECT status INTO v_status FROM orchwf_workflow_instances WHERE id = p_inst;
    RETURN v_status;
END;
$$;

-- A finished daemon instance an operator wants to run again: back in the runtime
-- tables, locked, with its status and mode checked. Raises OW404 / OW409; an error rolls
-- the move back with everything else.
CREATE OR REPLACE FUNCTION orchwf_reopen_instance(p_inst uuid, p_what text)
RETURNS timestamptz
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_status  text;
    v_mode    text;
    v_created timestamptz;
BEGIN
    SELECT status, run_mode, created_at INTO v_status, v_mode, v_created
    FROM orchwf_live_instances WHERE id = p_inst FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        IF NOT orchwf_unarchive_instance(p_inst) THEN
            RAISE EXCEPTION 'workflow not found: %', p_inst USING ERRCODE = 'OW404';
        END IF;
        SELECT status, run_mode, created_at INTO v_status, v_mode, v_created
        FROM orchwf_live_instances WHERE id = p_inst FOR NO KEY UPDATE;
    END IF;
    IF v_mode <> 'daemon' THEN
        RAISE EXCEPTION 'workflow % runs in-process; resume it with Orchestrator.resume_workflow', p_inst
            USING ERRCODE = 'OW409';
    END IF;
    IF v_status NOT IN ('failed', 'cancelled') THEN
        RAISE EXCEPTION 'workflow % is %; only % of failed or cancelled instances', p_inst, v_status, p_what
            USING ERRCODE = 'OW409';
    END IF;
    RETURN v_created;
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
    INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority, definition_hash,
                                    concurrency_key)
    SELECT s.id, i.id, i.workflow_id, i.queue, s.priority + i.priority, i.definition_hash,
           orchwf_ready_key(s.concurrency_key, s.dependencies, i.concurrency_key)
    FROM orchwf_live_steps s JOIN orchwf_live_instances i ON i.id = s.workflow_inst_id
    WHERE s.workflow_inst_id = p_inst AND s.status = 'pending' AND s.pending_deps = 0
    ORDER BY 7, 1
    ON CONFLICT DO NOTHING;
    PERFORM orchwf_record_event(p_inst, NULL, 'workflow.resumed', p_event);
    PERFORM pg_notify('orchwf_ready', (SELECT queue FROM orchwf_live_instances WHERE id = p_inst));
    RETURN 'running';
END;
$$;

-- Re-run the failed, cancelled and pending steps of a failed or cancelled instance.
CREATE OR REPLACE FUNCTION orchwf_resume_workflow(p_inst uuid)
RETURNS text
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_created timestamptz;
BEGIN
    v_created := orchwf_reopen_instance(p_inst, 'failed or cancelled instances can be resumed');
    DELETE FROM orchwf_ready_steps WHERE workflow_inst_id = p_inst;
    DELETE FROM orchwf_live_steps WHERE workflow_inst_id = p_inst AND step_id = '$compensate';
    -- A completed step whose effect a compensator undid runs again.
    UPDATE orchwf_live_steps s
    SET status = 'pending', output = '{}', completed_at = NULL, updated_at = now()
    WHERE s.workflow_inst_id = p_inst AND s.status = 'completed' AND EXISTS (
        SELECT 1 FROM orchwf_event_history e
        WHERE e.instance_created_at = v_created AND e.workflow_inst_id = p_inst AND e.step_inst_id = s.id
          AND e.event_type = 'step.compensated' AND e."timestamp" >= s.completed_at);
    UPDATE orchwf_live_steps s
    SET status = 'pending', error = NULL, completed_at = NULL, run_after = NULL, retry_count = 0,
        attempts = 0, crashes = 0, updated_at = now()
    WHERE s.workflow_inst_id = p_inst AND s.status IN ('failed', 'cancelled', 'pending', 'retrying');
    RETURN orchwf_restart_instance(p_inst, '{}');
END;
$$;

-- Re-run ONE failed, skipped or cancelled step of a failed or cancelled instance.
--
-- The same semantics as orchwf_resume_workflow, narrowed to one step: the step gets a
-- fresh attempt budget, and the steps that were cancelled when the instance ended (its
-- dependents, parallel branches) go back to pending so the instance can finish. Other
-- FAILED steps are left alone, so they would keep the instance from completing: then
-- this refuses and names them (resume the whole instance instead). A skipped step (an
-- optional step that failed) may be re-run too; dependents that already ran after it
-- are not re-run.
CREATE OR REPLACE FUNCTION orchwf_retry_step(p_inst uuid, p_step text)
RETURNS text
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_step_status text;
    v_others      text;
BEGIN
    PERFORM orchwf_reopen_instance(p_inst, 'steps of failed or cancelled instances can be retried');
    SELECT status INTO v_step_status
    FROM orchwf_live_steps
    WHERE workflow_inst_id = p_inst AND step_id = p_step AND step_id <> '$compensate';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'step not found: % (workflow %)', p_step, p_inst USING ERRCODE = 'OW400';
    END IF;
    IF v_step_status NOT IN ('failed', 'skipped', 'cancelled') THEN
        RAISE EXCEPTION 'step % is %; only failed, skipped or cancelled steps can be retried', p_step, v_step_status
            USING ERRCODE = 'OW409';
    END IF;
    SELECT string_agg(step_id, ', ' ORDER BY step_id) INTO v_others
    FROM orchwf_live_steps
    WHERE workflow_inst_id = p_inst AND status = 'failed' AND step_id <> p_step AND step_id <> '$compensate';
    IF v_others IS NOT NULL THEN
        RAISE EXCEPTION 'other steps of workflow % failed too (%); resume the workflow to re-run them all', p_inst, v_others
            USING ERRCODE = 'OW409';
    END IF;

    DELETE FROM orchwf_live_steps WHERE workflow_inst_id = p_inst AND step_id = '$compensate';
    UPDATE orchwf_live_steps s
    SET status = 'pending', error = NULL, completed_at = NULL, run_after = NULL, retry_count = 0,
        attempts = 0, crashes = 0, updated_at = now()
    WHERE s.workflow_inst_id = p_inst
      AND (s.step_id = p_step OR s.status IN ('cancelled', 'pending', 'retrying'));
    RETURN orchwf_restart_instance(p_inst, jsonb_build_object('retry_step', p_step));
END;
$$;

-- Per queue: ready steps (an exact count up to p_depth_cap, then it saturates) and
-- when the oldest ready step became ready.
--
-- The oldest step of a queue is not the first claim-index entry (priority comes
-- first), so this is a loose index scan: one index probe per (queue, priority) group
-- to list the groups, one more for the oldest entry of each, then the minimum per
-- queue. Cost grows with the number of groups (capped at p_max_groups), not with
-- the number of ready steps; the depth count reads at most p_depth_cap index entries
-- per queue. enable_seqscan is off inside the function: when one queue holds most of
-- a small table, the planner would otherwise read the whole table instead.
CREATE OR REPLACE FUNCTION orchwf_queue_stats(p_depth_cap integer DEFAULT 100000, p_max_groups integer DEFAULT 1000)
RETURNS TABLE (queue text, ready bigint, oldest_ready_at timestamptz)
LANGUAGE sql
STABLE
SET search_path FROM CURRENT
SET enable_seqscan = off
AS $$
    WITH RECURSIVE grp(queue, priority, n) AS (
        (SELECT r.queue, r.priority, 1
         FROM orchwf_ready_steps r
         ORDER BY r.queue, r.priority DESC
         LIMIT 1)
        UNION ALL
        SELECT nx.queue, nx.priority, g.n + 1
        FROM grp g
        CROSS JOIN LATERAL (
            -- the next lower priority in the same queue, else the first group of the next queue
            (SELECT r.queue, r.priority FROM orchwf_ready_steps r
             WHERE r.queue = g.queue AND r.priority < g.priority
             ORDER BY r.priority DESC
             LIMIT 1)
            UNION ALL
            (SELECT r.queue, r.priority FROM orchwf_ready_steps r
             WHERE r.queue > g.queue
             ORDER BY r.queue, r.priority DESC
             LIMIT 1)
            LIMIT 1) nx
        WHERE g.n < p_max_groups)
    SELECT g.queue,
           -- ORDER BY the claim index: counting walks that index, never the whole table
           (SELECT count(*) FROM (SELECT 1 FROM orchwf_ready_steps r
                                  WHERE r.queue = g.queue
                                  ORDER BY r.queue, r.priority DESC, r.ready_at, r.step_inst_id
                                  LIMIT p_depth_cap) c),
           min(o.ready_at)
    FROM grp g
    CROSS JOIN LATERAL (
        SELECT r.ready_at FROM orchwf_ready_steps r
        WHERE r.queue = g.queue AND r.priority = g.priority
        ORDER BY r.ready_at
        LIMIT 1) o
    GROUP BY g.queue
    ORDER BY g.queue;
$$;

-- Live instances whose definition version no live worker has (versioned definitions):
-- per workflow and version, how many (up to p_cap) and since when. A worker that lists no
-- versions (a release before them) takes any version of its workflows. One probe of
-- orchwf_li_version_idx per registered version that no worker has, never a scan of the
-- live instances (orchwf stats, the dashboard, the metrics' scrape).
CREATE OR REPLACE FUNCTION orchwf_unserved_versions(p_live_seconds double precision, p_cap integer DEFAULT 100000)
RETURNS TABLE (workflow_id text, version_hash text, instances bigint, oldest_age double precision)
LANGUAGE sql
STABLE
SET search_path FROM CURRENT
SET enable_seqscan = off
AS $$
    WITH unserved AS MATERIALIZED (
        SELECT v.workflow_id, v.version_hash FROM orchwf_workflow_versions v
        WHERE NOT EXISTS (SELECT 1 FROM orchwf_workers w
                          WHERE w.role IN ('worker', 'quarantine')
                            AND w.heartbeat_at > now() - p_live_seconds * interval '1 second'
                            AND v.workflow_id = ANY (w.workflows)
                            AND (cardinality(w.versions) = 0 OR v.version_hash = ANY (w.versions))))
    SELECT u.workflow_id, u.version_hash, x.n, extract(epoch FROM now() - x.oldest)::float8
    FROM unserved u
    CROSS JOIN LATERAL (
        SELECT count(*) AS n, min(i.created_at) AS oldest
        FROM (SELECT i.created_at FROM orchwf_live_instances i
              WHERE i.definition_hash = u.version_hash AND i.workflow_id = u.workflow_id
                AND i.status IN ('pending', 'running') AND i.run_mode = 'daemon'
              ORDER BY i.definition_hash, i.created_at
              LIMIT p_cap) i) x
    WHERE x.n > 0
    ORDER BY x.oldest
$$;
