-- orchwf API: the finish. Results, retries, dependency release and instance completion,
-- in one transaction, each result fenced by its lease token. An instance that ends here
-- moves to history in the same transaction (orchwf_archive_instances).

-- An instance's output and context, from its completed steps in completion order: the
-- output is the flat merge of their outputs (a later key wins, as in a sequential merge);
-- the context adds each output under its step ID. One pass gives both. A failed or
-- cancelled instance keeps what its completed steps produced, as in-process.
-- No SET clause, so that the planner inlines it into its callers' plans (all of them orchwf
-- functions that set the search path): a SQL function it cannot inline is planned again on
-- every call (10% of a finish of 50 single-step workflows; bench sqlcost).
CREATE OR REPLACE FUNCTION orchwf_instance_documents(p_inst uuid)
RETURNS TABLE (output jsonb, context jsonb)
LANGUAGE sql
STABLE
AS $$
    SELECT coalesce(jsonb_object_agg(o.k, o.v ORDER BY s.completed_at, s.execution_order, o.ord)
                        FILTER (WHERE o.ord = 1), '{}'),
           coalesce(jsonb_object_agg(o.k, o.v ORDER BY s.completed_at, s.execution_order, o.ord), '{}')
    FROM orchwf_live_steps s
    CROSS JOIN LATERAL (SELECT s.step_id AS k, s.output AS v, 0 AS ord
                        UNION ALL SELECT e.key, e.value, 1 FROM jsonb_each(s.output) e) o
    WHERE s.workflow_inst_id = p_inst AND s.status = 'completed' AND s.step_id <> '$compensate'
$$;

-- Client.wait's wake-up (orchwf_done), sent only when someone waits. A NOTIFY takes a
-- cluster-wide lock at commit and holds it through the commit's WAL flush, so every
-- notifying commit waited for the others' flushes (up to 7% of the backends' samples in
-- a drain or a soak, docs/benchmarks.md), while almost no finished instance has a
-- waiter. A waiter holds its instance's key in share mode while it waits
-- (orchwf_watch_instance). The finish tries each ended instance's key exclusively, for
-- the rest of its transaction: taken, no one waits, and a waiter that comes now blocks
-- until the commit, then reads the instance finished; refused, someone waits, and the
-- commit notifies. Over 64 instances it notifies without asking: each key taken is a
-- lock-table entry until the commit.
CREATE OR REPLACE FUNCTION orchwf_notify_done(p_ids uuid[]) RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
BEGIN
    IF cardinality(p_ids) > 64 OR EXISTS (
            SELECT 1 FROM unnest(p_ids) AS x(id)
            WHERE NOT pg_try_advisory_xact_lock(hashtext('orchwf_wait:' || current_schema()), uuid_hash(x.id))) THEN
        PERFORM pg_notify('orchwf_done', '');
    END IF;
END;
$$;

-- Tell the supervisors (LISTEN orchwf_ready) that these steps (in these queues) are
-- ready. Each notification wakes every worker of every supervisor to claim, and a
-- notifying commit waits for the others' flushes (above); a step the finishing worker
-- claims itself needs neither. So inside orchwf_finish_and_claim the word waits until
-- its claim has taken what it can (orchwf.claim_follows, a setting of the transaction),
-- and only the steps still ready are announced (orchwf_announce_unclaimed).
CREATE OR REPLACE FUNCTION orchwf_announce_ready(p_steps uuid[], p_queues text[]) RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
BEGIN
    IF coalesce(cardinality(p_steps), 0) = 0 THEN
        RETURN;
    END IF;
    IF current_setting('orchwf.claim_follows', true) = 'on' THEN
        PERFORM set_config('orchwf.unannounced',
                           (coalesce(nullif(current_setting('orchwf.unannounced', true), '')::jsonb, '{}')
                            || jsonb_object(p_steps::text[], p_queues))::text, true);
        RETURN;
    END IF;
    PERFORM pg_notify('orchwf_ready', q.queue) FROM (SELECT DISTINCT unnest(p_queues) AS queue) q;
END;
$$;

-- The steps made ready in this transaction that its claim left: announced now. A queue
-- is announced at its first step left, so under a backlog (the claim took older work
-- first) one key lookup decides, not one per step.
CREATE OR REPLACE FUNCTION orchwf_announce_unclaimed() RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET enable_seqscan = off     -- the steps by key: the table is the work in flight
SET enable_bitmapscan = off
SET plan_cache_mode = force_generic_plan  -- planned once a session (orchwf_finish_steps)
AS $$
DECLARE
    v_steps jsonb := nullif(current_setting('orchwf.unannounced', true), '')::jsonb;
    v_queue text;
    v_ids   uuid[];
BEGIN
    PERFORM set_config('orchwf.claim_follows', '', true);
    IF v_steps IS NULL THEN
        RETURN;
    END IF;
    PERFORM set_config('orchwf.unannounced', '', true);
    -- A step the claim took is running; one it left is not. (Asked of the steps by their
    -- key, not of the ready queue: there a statistics lag chose the claim index, whose
    -- fifth column the IDs are, and read it whole: tests/storage/test_plans.py.)
    FOR v_queue, v_ids IN
        SELECT e.value, array_agg(e.key::uuid) FROM jsonb_each_text(v_steps) AS e GROUP BY e.value
    LOOP
        IF EXISTS (SELECT 1 FROM orchwf_live_steps s WHERE s.id = ANY (v_ids) AND s.status <> 'running') THEN
            PERFORM pg_notify('orchwf_ready', v_queue);
        END IF;
    END LOOP;
END;
$$;

-- Client.wait: hold the instance's key in share mode for the session (the wait's own
-- connection, LISTENing on orchwf_done), before reading the instance's status; see
-- orchwf_notify_done. Blocks only while a finish of this instance commits; a finish in
-- a transaction held open longer fails this with lock_not_available, and the waiter
-- falls back to its poll.
CREATE OR REPLACE FUNCTION orchwf_watch_instance(p_id uuid) RETURNS void
LANGUAGE sql
SET search_path FROM CURRENT
SET lock_timeout = '2s'
AS $$
    SELECT pg_advisory_lock_shared(hashtext('orchwf_wait:' || current_schema()), uuid_hash(p_id))
$$;

-- Cancel what is left of an instance and end it (or hand it to its compensation step).
-- The caller holds the instance's row lock.
CREATE OR REPLACE FUNCTION orchwf_end_instance(p_inst uuid, p_final text, p_error text)
RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_queue text;
    v_child uuid;
BEGIN
    -- Its child workflows first (child_workflow_step), before this instance's own rows:
    -- a child that finishes meanwhile reports to a step this transaction has not locked.
    -- Locked in id order; one that finished meanwhile is gone from the runtime table (the
    -- lock skips it), one that is compensating already is left to end on its own.
    FOR v_child IN
        SELECT c.id FROM orchwf_live_instances c
        WHERE c.metadata ? 'orchwf_parent' AND c.metadata->>'orchwf_parent' = p_inst::text
          AND c.status IN ('pending', 'running')
        ORDER BY c.id
        FOR NO KEY UPDATE
    LOOP
        IF NOT EXISTS (SELECT 1 FROM orchwf_live_steps s WHERE s.workflow_inst_id = v_child
                       AND s.step_id = '$compensate' AND s.status IN ('pending', 'running', 'retrying')) THEN
            PERFORM orchwf_end_instance(v_child, 'cancelled', NULL);
        END IF;
    END LOOP;
    DELETE FROM orchwf_ready_steps WHERE workflow_inst_id = p_inst;
    -- Its steps' concurrency slots go to the next waiters of their keys (sql/api/keys.sql);
    -- the instance's own slot (a workflow-level key) is kept until it is archived.
    IF (SELECT i.concurrency_keys IS NOT NULL FROM orchwf_live_instances i WHERE i.id = p_inst) THEN
        PERFORM orchwf_release_instance_slots(ARRAY[p_inst], true);
    END IF;
    -- Running steps lose their lease here: whatever their workers return is discarded.
    DELETE FROM orchwf_running_steps WHERE workflow_inst_id = p_inst;
    UPDATE orchwf_live_steps
    SET status = 'cancelled', completed_at = now(), updated_at = now(), run_after = NULL,
        lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, deadline_at = NULL
    WHERE workflow_inst_id = p_inst AND status IN ('pending', 'running', 'retrying')
      AND step_id <> '$compensate';

    IF EXISTS (SELECT 1 FROM orchwf_live_steps
               WHERE workflow_inst_id = p_inst AND status = 'completed' AND has_compensator
                 AND step_id <> '$compensate') THEN
        -- Compensators are user code: a worker runs them as the '$compensate' step, which
        -- ends the instance with p_final when it finishes.
        INSERT INTO orchwf_live_steps AS s (
            id, step_id, workflow_inst_id, status, input, execution_order, max_attempts, required)
        VALUES (orchwf_uuid7(), '$compensate', p_inst, 'pending',
                jsonb_build_object('final_status', p_final, 'error', p_error), 1000000, 1, true)
        ON CONFLICT (workflow_inst_id, step_id) DO UPDATE
            SET status = 'pending', input = EXCLUDED.input, attempts = 0, retry_count = 0,
                crashes = 0, error = NULL, completed_at = NULL, updated_at = now();
        INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority,
                                        definition_hash)
        SELECT s.id, i.id, i.workflow_id, i.queue, i.priority + 1000, i.definition_hash
        FROM orchwf_live_steps s JOIN orchwf_live_instances i ON i.id = s.workflow_inst_id
        WHERE s.workflow_inst_id = p_inst AND s.step_id = '$compensate'
        ON CONFLICT DO NOTHING
        RETURNING queue INTO v_queue;
        UPDATE orchwf_live_instances
        SET error = p_error, steps_remaining = 1, updated_at = now() WHERE id = p_inst;
        PERFORM pg_notify('orchwf_ready', coalesce(v_queue, 'default'));
        RETURN;
    END IF;

    UPDATE orchwf_live_instances i
    SET status = p_final, error = p_error, completed_at = now(), updated_at = now(),
        steps_remaining = 0, current_step_id = NULL, output = d.output, context = d.context
    FROM orchwf_instance_documents(p_inst) d
    WHERE i.id = p_inst;
    PERFORM orchwf_record_event(p_inst, NULL, 'workflow.' || p_final,
                                CASE WHEN p_final = 'failed' THEN jsonb_build_object('error', p_error)
                                     ELSE '{}'::jsonb END);
    PERFORM orchwf_archive_instances(ARRAY[p_inst]);
    PERFORM orchwf_notify_done(ARRAY[p_inst]);
END;
$$;

-- Record a batch of step results. Each row is fenced by its lease token: a result from
-- a worker that lost its lease matches no row and is reported back as not accepted.
-- Outcomes are orchwf.lifecycle.Outcome's:
--   completed | failed | skipped  (final)
--   retry     (a failed attempt; back to the queue after p_delays seconds)
--   requeue   (the worker died: back to the queue; counts as a crash)
--   release   (graceful shutdown: back to the queue, the attempt not counted)
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
-- Key lookups only. The runtime tables are emptied and refilled thousands of times
-- between two autovacuum runs, so their statistics lag: a stale estimate must not turn a
-- lookup by key into a sequential scan over dead rows.
SET enable_seqscan = off
-- Nor into a bitmap scan of a whole index: with a table analyzed while empty, the soak's
-- finish read every live instance through the created_at index to find a few by ID.
SET enable_bitmapscan = off
-- No JIT: enable_seqscan = off prices a scan it cannot avoid at 1e10, which would make
-- every call compile its plan (milliseconds) for a few key lookups.
SET jit = off
-- No nested loops between the batch and the rows it reads: the generic plan guesses ten
-- rows for an array parameter, and one running step when the table was analyzed idle,
-- so it re-read the batch (or every batch instance) once per row: quadratic in the batch
-- (a finish of 1,000 steps took 1 s, orchwf_signal_many's). Every table read here is
-- bounded by "= ANY (batch)", so the hash joins read only the batch.
SET enable_nestloop = off
-- Nor merge joins: under the same statistics a merge join in the key's order read a whole
-- index of the live steps (the backlog) to save a sort of the batch.
SET enable_mergejoin = off
-- One plan per statement for the session. Left to choose, PL/pgSQL plans a statement
-- again on every call whenever the plan for the call's values looks cheaper than the
-- generic one, which a small batch always does: a finish of one result spent 40% of its
-- instructions planning (bench sqlcost --batch 1). Every read here is a key lookup
-- whatever the estimates (the settings above; tests/storage/test_plans.py).
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_accepted uuid[];
    v_insts    uuid[];
    v_ended    uuid[];
    v_row      record;
    v_n        integer;
    v_ready    uuid[];   -- steps this call made ready (requeued or released): announced
    v_ready_queues text[];  -- and their queues
    v_requeued uuid[];   -- accepted attempts that go back to the queue
    v_parents  boolean;  -- an accepted step completed (or was skipped) and has dependents
    v_failed   boolean;  -- a required step failed for good
    v_comp     boolean;  -- a compensation step finished
    v_later    boolean;  -- a failed attempt waits for a backoff
    v_delayed  boolean;  -- a released dependent waits for its delay (with_delay)
    v_keys     text[];   -- the concurrency keys of the instances (sql/api/keys.sql); NULL: none
    v_freed    uuid[];   -- accepted steps that give their concurrency slot back
BEGIN
    IF EXISTS (SELECT 1 FROM unnest(p_outcomes) o
               WHERE o NOT IN ('completed', 'failed', 'skipped', 'retry', 'requeue', 'release', 'wait')) THEN
        RAISE EXCEPTION 'unknown outcome in %', p_outcomes USING ERRCODE = 'OW400';
    END IF;

    -- Instances first, in id order (the global lock order).
    -- OFFSET 0: the steps by their IDs, then the DISTINCT (to feed it sorted, a planner
    -- that saw the table empty read the whole (workflow_inst_id, step_id) index).
    SELECT array_agg(DISTINCT s.workflow_inst_id) INTO v_insts
    FROM (SELECT s.workflow_inst_id FROM orchwf_live_steps s WHERE s.id = ANY (p_ids) OFFSET 0) s;
    -- NO KEY UPDATE, not UPDATE: the in-process store's step writes take KEY SHARE locks
    -- on these rows, and must not queue behind (or deadlock with) a finish.
    -- Then their concurrency keys' rows, in key order (none for unkeyed instances).
    SELECT array_agg(DISTINCT k.key ORDER BY k.key) INTO v_keys
    FROM (SELECT i.concurrency_keys FROM orchwf_live_instances i WHERE i.id = ANY (v_insts)
          ORDER BY i.id FOR NO KEY UPDATE) l
    CROSS JOIN LATERAL unnest(l.concurrency_keys) AS k(key);
    IF v_keys IS NOT NULL THEN
        PERFORM orchwf_lock_keys(v_keys);
    END IF;

    WITH r AS (
        SELECT * FROM unnest(p_ids, p_tokens, p_outcomes, p_outputs, p_errors, p_durations, p_delays, p_inputs)
                 AS r(id, token, outcome, output, error, duration, delay, input)),
    done AS (
        UPDATE orchwf_live_steps s
        SET status = CASE r.outcome WHEN 'retry' THEN 'retrying' WHEN 'requeue' THEN 'retrying'
                                    WHEN 'release' THEN 'pending' WHEN 'wait' THEN 'pending' ELSE r.outcome END,
            -- 'wait': the step waits for a signal (a child workflow's report, or a signal it
            -- found already taken) named by the worker; not an attempt.
            -- report (orchwf_archive_instances), which is not an attempt.
            attempts = s.attempts - (r.outcome = 'wait')::integer,
            wait_signal = CASE WHEN r.outcome = 'wait' THEN coalesce(r.output->>'wait_signal', s.wait_signal)
                               ELSE s.wait_signal END,
            output = CASE WHEN r.outcome = 'completed' THEN coalesce(r.output, '{}') ELSE s.output END,
            input = coalesce(r.input, s.input),
            -- A completed step keeps no error of an earlier attempt (as in-process).
            error = CASE r.outcome WHEN 'completed' THEN NULL WHEN 'wait' THEN NULL WHEN 'release' THEN s.error
                                   ELSE r.error END,
            completed_at = CASE WHEN r.outcome IN ('completed', 'failed', 'skipped') THEN now() END,
            duration_ms = coalesce(r.duration, s.duration_ms),
            retry_count = s.retry_count + (r.outcome = 'retry')::integer,
            last_retry_at = CASE WHEN r.outcome IN ('retry', 'requeue') THEN now() ELSE s.last_retry_at END,
            run_after = CASE WHEN r.outcome = 'retry' AND r.delay > 0
                             THEN now() + r.delay * interval '1 second' END,
            lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, deadline_at = NULL,
            updated_at = now()
        FROM r
        WHERE s.id = r.id AND s.id = ANY (p_ids) AND s.lease_token = r.token AND s.status = 'running'
        RETURNING s.id, s.workflow_inst_id, s.step_id, s.status, r.outcome, r.error, r.output AS reported,
                  r.duration, r.delay,
                  s.retry_count, s.attempts, cardinality(s.dependents) > 0 AS has_dependents),
    events AS (
        -- One event per result, and a second one (step.skipped) for a skipped step. Only
        -- the document of the event written is built. The compensation pseudo-step
        -- writes none (lifecycle.py).
        INSERT INTO orchwf_event_history (id, workflow_inst_id, step_inst_id, event_type, event_data,
                                          instance_created_at)
        SELECT orchwf_uuid7(), d.workflow_inst_id, d.id, e.event_type, e.event_data, i.created_at
        FROM done d
        -- "AND i.id = ANY (v_insts)" on every join with the live instances: a key
        -- lookup whatever the statistics say. A churning table is often analyzed while
        -- every row is dead; its estimate is then one row at any size, and the planner
        -- may read all of it (the backlog) once per join (tests/storage/test_plans.py).
        JOIN orchwf_live_instances i ON i.id = d.workflow_inst_id AND i.id = ANY (v_insts)
        CROSS JOIN LATERAL (
            SELECT CASE d.outcome WHEN 'completed' THEN 'step.completed' WHEN 'retry' THEN 'step.attempt_failed'
                                  WHEN 'requeue' THEN 'step.rescued' WHEN 'release' THEN 'step.released'
                                  WHEN 'wait' THEN CASE WHEN d.reported ? 'child_instance_id' THEN 'step.child_started'
                                                        ELSE 'step.waiting' END
                                  ELSE 'step.failed' END,
                   CASE d.outcome WHEN 'completed' THEN jsonb_build_object('duration_ms', d.duration)
                                  WHEN 'retry' THEN jsonb_build_object('error', d.error, 'attempt', d.attempts,
                                                                       'retry_in_seconds', d.delay)
                                  WHEN 'requeue' THEN jsonb_build_object('cause', d.error)
                                  WHEN 'release' THEN '{}'::jsonb
                                  WHEN 'wait' THEN d.reported - 'wait_signal'
                                  ELSE jsonb_build_object('error', d.error, 'retries', d.retry_count) END
            UNION ALL
            SELECT 'step.skipped', jsonb_build_object('error', d.error) WHERE d.outcome = 'skipped'
        ) AS e(event_type, event_data)
        WHERE d.step_id <> '$compensate'
        RETURNING 1),
    unlisted AS (
        -- "= ANY (p_ids)": an index scan whatever the planner guesses for r; the running
        -- list churns, and a sequential scan would wade through its dead rows.
        DELETE FROM orchwf_running_steps x USING r
        WHERE x.step_inst_id = ANY (p_ids) AND x.step_inst_id = r.id AND x.lease_token = r.token
        RETURNING 1)
    SELECT coalesce(array_agg(d.id), '{}'),
           coalesce(array_agg(d.id) FILTER (WHERE d.outcome IN ('retry', 'requeue', 'release')), '{}'),
           coalesce(bool_or(d.status IN ('completed', 'skipped') AND d.has_dependents), false),
           coalesce(bool_or(d.status = 'failed' AND d.step_id <> '$compensate'), false),
           coalesce(bool_or(d.step_id = '$compensate' AND d.status IN ('completed', 'failed', 'skipped')), false),
           coalesce(bool_or(d.outcome = 'retry' AND d.delay > 0), false),
           array_agg(d.id) FILTER (WHERE d.outcome IN ('completed', 'failed', 'skipped', 'wait')
                                      OR (d.outcome = 'retry' AND d.delay > 0))
    INTO v_accepted, v_requeued, v_parents, v_failed, v_comp, v_later, v_freed
    FROM done d;

    -- Concurrency slots: a step that ended, or waits (a backoff, a signal), gives its slot
    -- to the next waiter of its key; one that goes straight back to the queue (a retry, a
    -- rescue) keeps it.
    IF v_keys IS NOT NULL AND v_freed IS NOT NULL THEN
        PERFORM orchwf_release_slots(v_freed);
    END IF;

    -- The statements below only run when the batch needs them: each costs a plan
    -- execution even when it matches nothing.

    -- Retries that wait for a backoff: tell the supervisors when to promote them.
    IF v_later THEN
        PERFORM pg_notify('orchwf_scheduled', '');
    END IF;

    -- Attempts that go straight back to the queue.
    IF cardinality(v_requeued) > 0 THEN
        -- A step that was running in a process that died is a suspect (docs/reliability.md).
        INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority, suspect,
                                        definition_hash, concurrency_key)
        SELECT s.id, i.id, i.workflow_id, i.queue, s.priority + i.priority, s.crashes > 0, i.definition_hash,
               orchwf_ready_key(s.concurrency_key, s.dependencies, i.concurrency_key)
        FROM orchwf_live_steps s JOIN orchwf_live_instances i ON i.id = s.workflow_inst_id AND i.id = ANY (v_insts)
        -- The batch's instances bound the steps too: under statistics that saw the table
        -- empty, the steps were read through the whole (workflow_inst_id, step_id) index.
        WHERE s.id = ANY (v_requeued) AND s.workflow_inst_id = ANY (v_insts)
          AND s.status IN ('retrying', 'pending') AND s.run_after IS NULL
          AND i.status IN ('pending', 'running')
        ORDER BY 8, 1
        ON CONFLICT DO NOTHING;
        GET DIAGNOSTICS v_n = ROW_COUNT;
        IF v_n > 0 THEN  -- (the statement above keeps its text: 013's down replaces it)
            SELECT array_agg(s.id), array_agg(i.queue) INTO v_ready, v_ready_queues
            FROM orchwf_live_steps s JOIN orchwf_live_instances i ON i.id = s.workflow_inst_id AND i.id = ANY (v_insts)
            WHERE s.id = ANY (v_requeued) AND s.workflow_inst_id = ANY (v_insts)
              AND s.status IN ('retrying', 'pending') AND s.run_after IS NULL AND i.status IN ('pending', 'running');
        END IF;
    END IF;

    -- Release dependents: completed and skipped (optional, failed) steps satisfy them.
    IF v_parents THEN
        WITH dec AS (
            -- unnest in the select list, not a lateral join: no join to plan
            SELECT d.workflow_inst_id, d.child, count(*)::integer AS n
            FROM (SELECT s.workflow_inst_id, unnest(s.dependents) AS child
                  FROM orchwf_live_steps s
                  WHERE s.id = ANY (v_accepted) AND s.status IN ('completed', 'skipped')) d
            GROUP BY 1, 2),
        released AS (
            -- A dependent with a delay (with_delay) waits in run_after for the scheduler; one
            -- that waits for a signal (wait_for_signal) is ready if a signal is there, else
            -- it waits for orchwf_signal, or its timeout in run_after. (orchwf_signal locks
            -- the instance first, as this function does: it sees this release, or this
            -- statement sees its signal.)
            UPDATE orchwf_live_steps s
            SET pending_deps = s.pending_deps - dec.n, updated_at = now(),
                run_after = CASE WHEN s.pending_deps - dec.n > 0 THEN s.run_after
                                 WHEN s.delay_seconds > 0 THEN now() + s.delay_seconds * interval '1 second'
                                 WHEN s.wait_signal IS NOT NULL AND s.wait_timeout > 0
                                      AND NOT orchwf_signal_waiting(s.workflow_inst_id, s.wait_signal)
                                 THEN now() + s.wait_timeout * interval '1 second'
                                 ELSE s.run_after END
            FROM dec
            WHERE s.workflow_inst_id = dec.workflow_inst_id AND s.workflow_inst_id = ANY (v_insts)
              AND s.step_id = dec.child AND s.status = 'pending'
            RETURNING s.id, s.workflow_inst_id, s.priority, s.pending_deps, s.run_after, s.wait_signal,
                      s.concurrency_key, s.dependencies),
        ready AS (
            INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority,
                                            definition_hash, concurrency_key)
            SELECT r.id, i.id, i.workflow_id, i.queue, r.priority + i.priority, i.definition_hash,
                   orchwf_ready_key(r.concurrency_key, r.dependencies, i.concurrency_key)
            FROM released r JOIN orchwf_live_instances i ON i.id = r.workflow_inst_id AND i.id = ANY (v_insts)
            WHERE r.pending_deps = 0 AND r.run_after IS NULL AND i.status IN ('pending', 'running')
              AND (r.wait_signal IS NULL OR orchwf_signal_waiting(r.workflow_inst_id, r.wait_signal))
            ORDER BY 7, 1
            ON CONFLICT DO NOTHING
            RETURNING orchwf_ready_steps.step_inst_id, orchwf_ready_steps.queue)
        SELECT v_ready || ARRAY(SELECT r.step_inst_id FROM ready r), v_ready_queues || ARRAY(SELECT r.queue FROM ready r),
               EXISTS (SELECT 1 FROM released r WHERE r.run_after IS NOT NULL)
        INTO v_ready, v_ready_queues, v_delayed;
        IF v_delayed THEN
            PERFORM pg_notify('orchwf_scheduled', '');
        END IF;
    END IF;

    -- Count finished steps against their instances and, in the same UPDATE (one new row
    -- version per instance, not two), complete the instances with nothing left to run:
    -- output is the flat merge of step outputs in completion order; context adds each
    -- output under its step ID. An instance with a required step that failed for good is
    -- not completed here: the failure handling below ends it.
    WITH f AS (
        SELECT s.workflow_inst_id AS inst, count(*)::integer AS n, bool_or(s.status = 'failed') AS failed
        -- OFFSET 0: the steps by their IDs, then grouped; grouped in the scan's order, the
        -- planner may read the whole (workflow_inst_id, step_id) index to save the sort.
        FROM (SELECT s.workflow_inst_id, s.status FROM orchwf_live_steps s
              WHERE s.id = ANY (v_accepted) AND s.status IN ('completed', 'skipped', 'failed')
                AND s.step_id <> '$compensate' OFFSET 0) s
        GROUP BY 1),
    c AS (
        SELECT f.inst, f.n, x.completing, m.output, m.context
        FROM f
        JOIN orchwf_live_instances i ON i.id = f.inst AND i.id = ANY (v_insts)
        CROSS JOIN LATERAL (SELECT i.steps_remaining - f.n <= 0 AND NOT f.failed
                                   AND i.status IN ('pending', 'running') AS completing) x
        -- OFFSET 0 keeps "WHERE x.completing" a gate on the call: pulled up into the
        -- join, it filtered after calling the function for every instance (16 µs each).
        LEFT JOIN LATERAL (SELECT d.output, d.context FROM orchwf_instance_documents(f.inst) d
                           WHERE x.completing OFFSET 0) m ON true),
    counted AS (
        UPDATE orchwf_live_instances i
        SET steps_remaining = i.steps_remaining - c.n,
            status = CASE WHEN c.completing THEN 'completed'
                          WHEN i.status = 'pending' THEN 'running' ELSE i.status END,
            completed_at = CASE WHEN c.completing THEN now() ELSE i.completed_at END,
            current_step_id = CASE WHEN c.completing THEN NULL ELSE i.current_step_id END,
            output = CASE WHEN c.completing THEN c.output ELSE i.output END,
            context = CASE WHEN c.completing THEN c.context ELSE i.context END,
            updated_at = now()
        FROM c
        WHERE i.id = c.inst AND i.id = ANY (v_insts)
        RETURNING i.id, i.started_at, i.created_at, c.completing),
    completed AS (
        INSERT INTO orchwf_event_history (id, workflow_inst_id, event_type, event_data, instance_created_at)
        SELECT orchwf_uuid7(), f.id, 'workflow.completed',
               jsonb_build_object('duration_ms', (extract(epoch FROM now() - f.started_at) * 1000)::bigint),
               f.created_at
        FROM counted f
        WHERE f.completing
        RETURNING workflow_inst_id)
    SELECT array_agg(completed.workflow_inst_id) INTO v_ended FROM completed;
    IF v_ended IS NOT NULL THEN
        PERFORM orchwf_archive_instances(v_ended);
        PERFORM orchwf_notify_done(v_ended);
    END IF;

    -- A required step that failed for good ends its instance.
    IF v_failed THEN
        FOR v_row IN
            SELECT s.workflow_inst_id AS inst, min(s.step_id) AS step_id, min(s.error) AS error,
                   min(s.attempts) AS attempts
            FROM orchwf_live_steps s JOIN orchwf_live_instances i ON i.id = s.workflow_inst_id AND i.id = ANY (v_insts)
            WHERE s.id = ANY (v_accepted) AND s.status = 'failed' AND s.step_id <> '$compensate'
              AND i.status IN ('pending', 'running') AND NOT EXISTS (
                  SELECT 1 FROM orchwf_live_steps c
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
            FROM orchwf_live_steps s
            WHERE s.id = ANY (v_accepted) AND s.step_id = '$compensate'
              AND s.status IN ('completed', 'failed', 'skipped')
            ORDER BY s.workflow_inst_id
        LOOP
            UPDATE orchwf_live_instances i
            SET status = v_row.final, completed_at = now(), updated_at = now(), steps_remaining = 0,
                output = d.output, context = d.context
            FROM orchwf_instance_documents(v_row.inst) d
            WHERE i.id = v_row.inst;
            PERFORM orchwf_record_event(v_row.inst, NULL, 'workflow.' || v_row.final,
                                        CASE WHEN v_row.final = 'failed' THEN jsonb_build_object('error', v_row.error)
                                             ELSE '{}'::jsonb END);
            PERFORM orchwf_archive_instances(ARRAY[v_row.inst]);
            PERFORM orchwf_notify_done(ARRAY[v_row.inst]);
        END LOOP;
    END IF;

    PERFORM orchwf_announce_ready(v_ready, v_ready_queues);

    RETURN QUERY
    SELECT x.id, x.id = ANY (v_accepted) FROM unnest(p_ids) AS x(id);
END;
$$;

-- A worker's group commit and its next claim in ONE transaction and round trip: the
-- results are committed exactly as orchwf_finish_steps commits them, then steps are
-- claimed as orchwf_claim_steps claims them (dependents released by the finish can be
-- claimed at once). Rows with accepted NOT NULL answer the results, in p_ids order;
-- the other rows are the claimed steps. The claimed steps take the slots of the results
-- committed here, so a slot is still freed only when its result is durable.
CREATE OR REPLACE FUNCTION orchwf_finish_and_claim(
    p_ids           uuid[],
    p_tokens        bigint[],
    p_outcomes      text[],
    p_outputs       jsonb[],
    p_errors        text[],
    p_durations     bigint[],
    p_delays        double precision[],
    p_inputs        jsonb[],
    p_worker        text,
    p_queues        text[],
    p_workflows     text[],
    p_limit         integer,
    p_lease_seconds double precision,
    p_suspects      boolean,
    p_versions      text[]
) RETURNS TABLE (
    step_inst_id     uuid,
    accepted         boolean,
    workflow_inst_id uuid,
    workflow_id      text,
    step_id          text,
    lease_token      bigint,
    attempt          integer,
    retry_count      integer,
    workflow_input   jsonb,
    metadata         jsonb,
    trace_id         text,
    completed        jsonb,
    step_input       jsonb
)
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan  -- planned once a session (orchwf_finish_steps)
AS $$
BEGIN
    -- The steps the finish makes ready are announced after the claim, if it left them.
    PERFORM set_config('orchwf.claim_follows', 'on', true);
    RETURN QUERY
    SELECT f.step_inst_id, f.accepted, NULL::uuid, NULL::text, NULL::text, NULL::bigint, NULL::integer,
           NULL::integer, NULL::jsonb, NULL::jsonb, NULL::text, NULL::jsonb, NULL::jsonb
    FROM orchwf_finish_steps(p_ids, p_tokens, p_outcomes, p_outputs, p_errors, p_durations, p_delays, p_inputs) f;
    IF p_limit > 0 THEN
        RETURN QUERY
        SELECT c.step_inst_id, NULL::boolean, c.workflow_inst_id, c.workflow_id, c.step_id, c.lease_token,
               c.attempt, c.retry_count, c.workflow_input, c.metadata, c.trace_id, c.completed, c.step_input
        FROM orchwf_claim_steps(p_worker, p_queues, p_workflows, p_limit, p_lease_seconds, p_suspects,
                                p_versions) c;
    END IF;
    PERFORM orchwf_announce_unclaimed();
END;
$$;

-- The signature of release 3's workers (no versions: any version of their workflows).
CREATE OR REPLACE FUNCTION orchwf_finish_and_claim(
    p_ids           uuid[],
    p_tokens        bigint[],
    p_outcomes      text[],
    p_outputs       jsonb[],
    p_errors        text[],
    p_durations     bigint[],
    p_delays        double precision[],
    p_inputs        jsonb[],
    p_worker        text,
    p_queues        text[],
    p_workflows     text[],
    p_limit         integer,
    p_lease_seconds double precision,
    p_suspects      boolean
) RETURNS TABLE (
    step_inst_id     uuid,
    accepted         boolean,
    workflow_inst_id uuid,
    workflow_id      text,
    step_id          text,
    lease_token      bigint,
    attempt          integer,
    retry_count      integer,
    workflow_input   jsonb,
    metadata         jsonb,
    trace_id         text,
    completed        jsonb,
    step_input       jsonb
)
LANGUAGE sql
SET search_path FROM CURRENT
AS $$
    SELECT * FROM orchwf_finish_and_claim(p_ids, p_tokens, p_outcomes, p_outputs, p_errors, p_durations, p_delays,
                                          p_inputs, p_worker, p_queues, p_workflows, p_limit, p_lease_seconds,
                                          p_suspects, NULL)
$$;
