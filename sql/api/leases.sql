-- orchwf API: leases. Heartbeats, the rescue of dead workers' claims, orphan release.

-- Renew the leases a worker still holds; return the ones it lost (rescued or cancelled).
CREATE OR REPLACE FUNCTION orchwf_heartbeat(
    p_worker        text,
    p_ids           uuid[],
    p_tokens        bigint[],
    p_lease_seconds double precision
) RETURNS SETOF uuid
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET enable_bitmapscan = off  -- key lookups, whatever the statistics say (finish.sql)
AS $$
BEGIN
    UPDATE orchwf_workers SET heartbeat_at = now() WHERE worker_id = p_worker;
    -- SKIP LOCKED: a step row locked by a finish, cancel or rescue is not waited for (that
    -- would invert the lock order); it is either being finished or will be renewed next tick.
    -- "= ANY (p_ids)" beside each join: key lookups whatever the statistics say (a
    -- churning table analyzed while empty is estimated at one row at any size).
    UPDATE orchwf_live_steps s
    SET lease_expires_at = now() + p_lease_seconds * interval '1 second'
    WHERE s.id = ANY (p_ids) AND s.id IN (
        SELECT l.id FROM orchwf_live_steps l
        JOIN unnest(p_ids, p_tokens) AS h(id, token) ON l.id = h.id AND l.lease_token = h.token
        WHERE l.id = ANY (p_ids) AND l.status = 'running'
        FOR NO KEY UPDATE OF l SKIP LOCKED);
    -- Lost: the token no longer matches (rescued, cancelled or finished elsewhere).
    RETURN QUERY
    SELECT h.id FROM unnest(p_ids, p_tokens) AS h(id, token)
    WHERE NOT EXISTS (SELECT 1 FROM orchwf_live_steps s
                      WHERE s.id = h.id AND s.id = ANY (p_ids)  -- bounded: see above
                        AND s.lease_token = h.token AND s.status = 'running');
END;
$$;

-- Take back the steps of a dead worker (p_owner) or, with p_owner NULL, every step
-- whose lease expired. Retried if budget remains, else failed, through the same
-- fenced finish as a worker's own result.
CREATE OR REPLACE FUNCTION orchwf_rescue_steps(p_owner text DEFAULT NULL, p_limit integer DEFAULT 1000)
RETURNS TABLE (step_inst_id uuid, outcome text, cause text)
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET enable_bitmapscan = off  -- key lookups, whatever the statistics say (finish.sql)
AS $$
DECLARE
    v_insts uuid[]; v_steps uuid[]; v_ids uuid[]; v_tokens bigint[]; v_outcomes text[]; v_errors text[];
    v_n integer;
BEGIN
    -- Candidates, without locks, from the running list (never the step table's history);
    -- then the instances in lock order; then re-check under them (a heartbeat may have
    -- renewed the lease, or a finish taken the step, meanwhile).
    -- LATERAL: the running list drives, each of its steps found by key (a join the
    -- planner could turn around would read the step table when its statistics lag);
    -- OFFSET 0 keeps it so: pulled up into a plain join, it became a merge join that read
    -- the live steps' whole primary key once per round.
    SELECT array_agg(DISTINCT s.workflow_inst_id), array_agg(s.id) INTO v_insts, v_steps
    FROM (SELECT c.workflow_inst_id, c.id
          FROM orchwf_running_steps r
          CROSS JOIN LATERAL (SELECT c.workflow_inst_id, c.id, c.lease_expires_at FROM orchwf_live_steps c
                              WHERE c.id = r.step_inst_id AND c.lease_token = r.lease_token
                                AND c.status = 'running' OFFSET 0) c  -- OFFSET 0: stays a lookup
          WHERE (p_owner IS NOT NULL AND r.lease_owner = p_owner)
             OR (p_owner IS NULL AND c.lease_expires_at < now())
          LIMIT p_limit) s;
    IF v_insts IS NULL THEN
        RETURN;
    END IF;
    PERFORM 1 FROM orchwf_live_instances i WHERE i.id = ANY (v_insts) ORDER BY i.id FOR NO KEY UPDATE;

    -- A crash has its own budget, max(3, max_attempts), and does not use up the retry
    -- budget unless the step opted in (crash_counts_as_attempt).
    WITH lost AS (
        SELECT s.id, s.lease_token, s.lease_owner, s.lease_expires_at, s.crashes, s.retry_count,
               s.max_attempts, s.required, s.crash_counts_as_attempt
        FROM orchwf_live_steps s
        WHERE s.id = ANY (v_steps) AND s.status = 'running'
          AND ((p_owner IS NOT NULL AND s.lease_owner = p_owner)
               OR (p_owner IS NULL AND s.lease_expires_at < now()))
        ORDER BY s.id
        FOR NO KEY UPDATE OF s),
    counted AS (
        UPDATE orchwf_live_steps s SET crashes = s.crashes + 1
        FROM lost WHERE s.id = lost.id AND s.id = ANY (v_steps)
        RETURNING s.id)
    SELECT array_agg(l.id), array_agg(l.lease_token),
           array_agg(CASE
               WHEN l.crash_counts_as_attempt AND l.retry_count + 1 >= l.max_attempts
                    THEN CASE WHEN l.required THEN 'failed' ELSE 'skipped' END
               WHEN NOT l.crash_counts_as_attempt AND l.crashes + 1 >= greatest(3, l.max_attempts)
                    THEN CASE WHEN l.required THEN 'failed' ELSE 'skipped' END
               WHEN l.crash_counts_as_attempt THEN 'retry'
               ELSE 'requeue' END),
           array_agg(CASE WHEN p_owner IS NOT NULL
                          THEN format('worker %s died while running the step (crash %s of at most %s)',
                                      p_owner, l.crashes + 1, greatest(3, l.max_attempts))
                          ELSE format('lease expired at %s (worker %s presumed dead; crash %s of at most %s)',
                                      l.lease_expires_at, l.lease_owner, l.crashes + 1, greatest(3, l.max_attempts)) END)
    INTO v_ids, v_tokens, v_outcomes, v_errors
    FROM lost l;
    v_n := coalesce(cardinality(v_ids), 0);
    IF v_n = 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT f.step_inst_id, x.outcome, x.err
    FROM orchwf_finish_steps(v_ids, v_tokens, v_outcomes, array_fill(NULL::jsonb, ARRAY[v_n]), v_errors,
                             array_fill(NULL::bigint, ARRAY[v_n]), array_fill(0::double precision, ARRAY[v_n])) f
    JOIN unnest(v_ids, v_outcomes, v_errors) AS x(id, outcome, err) ON x.id = f.step_inst_id
    WHERE f.accepted;
END;
$$;

-- After a reconnect, a worker gives back the claims it holds in the database but does
-- not know about (a claim whose reply was lost with the connection).
CREATE OR REPLACE FUNCTION orchwf_release_orphans(p_worker text, p_keep uuid[])
RETURNS integer
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET enable_bitmapscan = off  -- key lookups, whatever the statistics say (finish.sql)
AS $$
DECLARE
    v_ids uuid[]; v_tokens bigint[]; v_n integer;
BEGIN
    SELECT array_agg(s.id), array_agg(s.lease_token) INTO v_ids, v_tokens
    FROM orchwf_running_steps r
    CROSS JOIN LATERAL (SELECT s.id, s.lease_token FROM orchwf_live_steps s
                        WHERE s.id = r.step_inst_id AND s.lease_token = r.lease_token AND s.status = 'running'
                        OFFSET 0) s  -- a lookup per running step (see orchwf_rescue_steps)
    WHERE r.lease_owner = p_worker AND s.id <> ALL (coalesce(p_keep, '{}'));
    v_n := coalesce(cardinality(v_ids), 0);
    IF v_n = 0 THEN
        RETURN 0;
    END IF;
    PERFORM 1 FROM orchwf_finish_steps(
        v_ids, v_tokens, array_fill('release'::text, ARRAY[v_n]), array_fill(NULL::jsonb, ARRAY[v_n]),
        array_fill('claim lost with the connection'::text, ARRAY[v_n]), array_fill(NULL::bigint, ARRAY[v_n]),
        array_fill(0::double precision, ARRAY[v_n]));
    RETURN v_n;
END;
$$;
