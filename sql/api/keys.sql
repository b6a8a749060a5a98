-- orchwf API: concurrency keys (docs/architecture.md, "Concurrency keys"). Admission
-- control per key: a keyed step enters orchwf_ready_steps only while its key has a free
-- slot, so the claim never sees a step it could not run and pays nothing. Every writer
-- of the ready queue passes the step's key in orchwf_ready_steps.concurrency_key (see
-- orchwf_ready_key); the trigger below admits the row, or parks it in orchwf_key_waits
-- (no worker slot held) and drops it from the insert. A slot is held from admission
-- (ready) through running, retries that go straight back to the queue and a rescue
-- after kill -9, until the step ends, waits (a backoff, a signal) or its instance ends:
-- then orchwf_release_slots frees it and admits the next waiter, in that transaction.
-- Lock order: instances in id order first, then key rows in key order.

-- Render a key template ("customer:{customer_id}") from an instance's input. A field the
-- input lacks (or holds null) is the producer's error, named in the message.
CREATE OR REPLACE FUNCTION orchwf_render_key(p_template text, p_input jsonb, p_what text)
RETURNS text
LANGUAGE plpgsql
IMMUTABLE
AS $$
DECLARE
    v_field text;
    v_out   text := p_template;
    v_value jsonb;
BEGIN
    FOR v_field IN SELECT DISTINCT m[1] FROM regexp_matches(p_template, '\{([A-Za-z_][A-Za-z0-9_]*)\}', 'g') AS m LOOP
        v_value := p_input->v_field;
        IF v_value IS NULL OR jsonb_typeof(v_value) = 'null' THEN
            RAISE EXCEPTION 'concurrency key % of % names the input field %, which the input does not have',
                quote_literal(p_template), p_what, quote_literal(v_field) USING ERRCODE = 'OW400';
        END IF;
        v_out := replace(v_out, '{' || v_field || '}',
                         CASE WHEN jsonb_typeof(v_value) = 'string' THEN v_value #>> '{}' ELSE v_value::text END);
    END LOOP;
    IF length(v_out) > 1000 THEN
        RAISE EXCEPTION 'concurrency key of % is longer than 1000 characters', p_what USING ERRCODE = 'OW400';
    END IF;
    RETURN v_out;
END;
$$;

-- The key a step's ready row carries: its own (StepBuilder.with_concurrency), else for a
-- first step the instance's (WorkflowBuilder.with_concurrency). Inlined by the planner.
CREATE OR REPLACE FUNCTION orchwf_ready_key(p_step_key text, p_dependencies text[], p_instance_key text)
RETURNS text
LANGUAGE sql
IMMUTABLE
AS $$
    SELECT coalesce(p_step_key, CASE WHEN cardinality(p_dependencies) = 0 THEN p_instance_key END)
$$;

-- The admission: BEFORE INSERT on orchwf_ready_steps, for keyed rows only (the trigger's
-- WHEN: unkeyed rows never call it). Returns the row (admitted, or its holder already
-- holds a slot) or NULL (parked: the insert skips it).
CREATE OR REPLACE FUNCTION orchwf_admit_ready() RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET enable_seqscan = off     -- key lookups only (claim.sql)
SET enable_bitmapscan = off
SET jit = off
SET plan_cache_mode = force_generic_plan  -- planned once a session (orchwf_finish_steps)
AS $$
DECLARE
    v_holder uuid;
    v_limit  integer;
    v_held   integer;
    v_step_key text;
BEGIN
    SELECT s.concurrency_key, s.concurrency_limit INTO v_step_key, v_limit
    FROM orchwf_live_steps s WHERE s.id = NEW.step_inst_id;
    IF v_step_key IS NOT DISTINCT FROM NEW.concurrency_key THEN
        v_holder := NEW.step_inst_id;
    ELSE
        -- the instance's key (WorkflowBuilder.with_concurrency): one slot for the instance
        v_holder := NEW.workflow_inst_id;
        SELECT i.concurrency_limit INTO v_limit FROM orchwf_live_instances i WHERE i.id = NEW.workflow_inst_id;
    END IF;
    IF v_limit IS NULL THEN
        RETURN NEW;  -- the key is gone (an operator's change): nothing to admit under
    END IF;
    -- Holds a slot already (a retry or rescue going back to the queue, another first step
    -- of an admitted instance): in it goes, without the key's lock.
    PERFORM 1 FROM orchwf_key_slots h WHERE h.holder = v_holder;
    IF FOUND THEN
        RETURN NEW;
    END IF;
    -- The key row, locked before anything else is read: a release in flight is waited for
    -- and its outcome read. (An "UPDATE ... WHERE held < limit" skips a row that is full in
    -- its snapshot without waiting: a release committing a free slot with no waiter in its
    -- own snapshot then left this step parked, with no release to come.) A key's first
    -- admission makes its row, or finds the one another admission made meanwhile.
    LOOP
        SELECT k.held INTO v_held FROM orchwf_concurrency_keys k WHERE k.key = NEW.concurrency_key
        FOR NO KEY UPDATE;
        EXIT WHEN FOUND;
        INSERT INTO orchwf_concurrency_keys (key, concurrency_limit, held) VALUES (NEW.concurrency_key, v_limit, 0)
        ON CONFLICT (key) DO NOTHING;
    END LOOP;
    -- Under the lock, asked again: the release just waited for may have admitted this
    -- holder (its wait became a slot, its steps ready rows), or another insert parked it.
    PERFORM 1 FROM orchwf_key_slots h WHERE h.holder = v_holder;
    IF FOUND THEN
        RETURN NEW;
    END IF;
    -- Parked already: the step joins its holder's wait (once).
    UPDATE orchwf_key_waits w
    SET step_ids = CASE WHEN NEW.step_inst_id = ANY (w.step_ids) THEN w.step_ids
                        ELSE w.step_ids || NEW.step_inst_id END
    WHERE w.holder = v_holder;
    IF FOUND THEN
        RETURN NULL;
    END IF;
    IF v_held < v_limit THEN
        UPDATE orchwf_concurrency_keys k
        SET held = k.held + 1, concurrency_limit = v_limit, updated_at = now()
        WHERE k.key = NEW.concurrency_key;
        INSERT INTO orchwf_key_slots (holder, key, workflow_inst_id)
        VALUES (v_holder, NEW.concurrency_key, NEW.workflow_inst_id);
        RETURN NEW;
    END IF;
    INSERT INTO orchwf_key_waits (holder, key, workflow_inst_id, priority, step_ids)
    VALUES (v_holder, NEW.concurrency_key, NEW.workflow_inst_id, NEW.priority, ARRAY[NEW.step_inst_id]);
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER orchwf_ready_steps_admit BEFORE INSERT ON orchwf_ready_steps
    FOR EACH ROW WHEN (NEW.concurrency_key IS NOT NULL) EXECUTE FUNCTION orchwf_admit_ready();

-- Lock key rows in key order, before any admission or release of a transaction that
-- may touch several keys: two finishes releasing the same two keys never deadlock.
-- PL/pgSQL, not SQL: a SQL function with SET clauses is planned again on every call.
CREATE OR REPLACE FUNCTION orchwf_lock_keys(p_keys text[]) RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET enable_seqscan = off
SET enable_bitmapscan = off
SET jit = off
SET plan_cache_mode = force_generic_plan  -- planned once a session (orchwf_finish_steps)
AS $$
BEGIN
    PERFORM 1 FROM orchwf_concurrency_keys k WHERE k.key = ANY (p_keys) ORDER BY k.key FOR NO KEY UPDATE;
END;
$$;

-- Release the slots of these holders (steps that ended or wait, or instances that
-- ended) and admit the next waiters of their keys (highest priority, then oldest), as
-- many as each key has free slots, making their steps ready without a key (admitted
-- already: the trigger is not called). A key row is written only when its count changes:
-- under a backlog every freed slot passes to a waiter, and the row (locked to the commit)
-- is left as it is. The caller holds the instances' locks and, for a batch that may touch
-- several keys, the key rows (orchwf_lock_keys), so the counts read here stay true to the
-- commit.
CREATE OR REPLACE FUNCTION orchwf_release_slots(p_holders uuid[]) RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET enable_seqscan = off
SET enable_bitmapscan = off
SET jit = off
SET plan_cache_mode = force_generic_plan  -- planned once a session (orchwf_finish_steps)
AS $$
DECLARE
    v_keys   text[];     -- the keys of the slots released
    v_freed  integer[];  -- and how many of each
    v_moved  text[];     -- keys whose count changes (fewer waiters than slots to give)
    v_change integer[];  -- and by how much
    v_ready  uuid[];
    v_queues text[];
BEGIN
    WITH gone AS (
        DELETE FROM orchwf_key_slots h WHERE h.holder = ANY (p_holders) RETURNING h.key)
    SELECT array_agg(g.key), array_agg(g.n) INTO v_keys, v_freed
    FROM (SELECT gone.key, count(*)::integer AS n FROM gone GROUP BY gone.key) g;
    IF v_keys IS NULL THEN
        RETURN;  -- none held a slot
    END IF;
    WITH freed AS (
        SELECT k.key, f.n, greatest(k.concurrency_limit - (k.held - f.n), 0) AS free
        FROM unnest(v_keys, v_freed) AS f(key, n)
        JOIN orchwf_concurrency_keys k ON k.key = f.key AND k.key = ANY (v_keys)),
    picked AS (
        DELETE FROM orchwf_key_waits w
        WHERE w.holder = ANY (ARRAY(
            SELECT x.holder
            FROM freed f
            CROSS JOIN LATERAL (SELECT x.holder FROM orchwf_key_waits x WHERE x.key = f.key
                                ORDER BY x.priority DESC, x.holder
                                LIMIT f.free) x))
        RETURNING w.holder, w.key, w.workflow_inst_id, w.step_ids),
    admitted AS (
        INSERT INTO orchwf_key_slots (holder, key, workflow_inst_id)
        SELECT p.holder, p.key, p.workflow_inst_id FROM picked p),
    queued AS (
        -- (admitted and queued run to completion whether read or not, as every data-modifying WITH)
        INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority, suspect,
                                        definition_hash)
        SELECT s.id, i.id, i.workflow_id, i.queue, s.priority + i.priority, s.crashes > 0, i.definition_hash
        FROM orchwf_live_steps s
        JOIN orchwf_live_instances i ON i.id = s.workflow_inst_id
                                    AND i.id = ANY (ARRAY(SELECT p.workflow_inst_id FROM picked p))
        WHERE s.id = ANY (ARRAY(SELECT u.id FROM picked p CROSS JOIN LATERAL unnest(p.step_ids) AS u(id)))
          AND s.status IN ('pending', 'retrying') AND i.status IN ('pending', 'running')
        ON CONFLICT DO NOTHING
        RETURNING orchwf_ready_steps.step_inst_id, orchwf_ready_steps.queue),
    moved AS (
        SELECT f.key, coalesce(a.n, 0) - f.n AS change
        FROM freed f LEFT JOIN (SELECT p.key, count(*)::integer AS n FROM picked p GROUP BY p.key) a ON a.key = f.key
        WHERE coalesce(a.n, 0) <> f.n)
    SELECT (SELECT array_agg(m.key) FROM moved m), (SELECT array_agg(m.change) FROM moved m),
           (SELECT array_agg(q.step_inst_id) FROM queued q), (SELECT array_agg(q.queue) FROM queued q)
    INTO v_moved, v_change, v_ready, v_queues;
    IF v_moved IS NOT NULL THEN
        UPDATE orchwf_concurrency_keys k
        SET held = greatest(k.held + m.change, 0), updated_at = now()
        FROM unnest(v_moved, v_change) AS m(key, change)
        WHERE k.key = m.key AND k.key = ANY (v_moved);
    END IF;
    PERFORM orchwf_announce_ready(v_ready, v_queues);  -- (finish.sql: after the finishing worker's claim)
END;
$$;

-- An instance that ends (or whose remaining steps are cancelled): its waiters go, and
-- its slots are released. p_steps_only keeps the instance's own slot (workflow-level
-- key) while its compensation runs.
CREATE OR REPLACE FUNCTION orchwf_release_instance_slots(p_insts uuid[], p_steps_only boolean) RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET enable_seqscan = off
SET enable_bitmapscan = off
SET jit = off
SET plan_cache_mode = force_generic_plan  -- planned once a session (orchwf_finish_steps)
AS $$
DECLARE
    v_holders uuid[];
BEGIN
    -- The holders are the instances and their steps that have not ended: found by primary
    -- key (the step IDs from the steps' own index), so neither table needs an index by
    -- instance. A step that ended gave its slot back in the transaction that ended it
    -- (the finish's release, or the steps_only call of orchwf_end_instance before it
    -- cancels the steps still running or waiting): asking for it again cost two key
    -- lookups per step of every keyed instance archived.
    v_holders := ARRAY(SELECT s.id FROM orchwf_live_steps s WHERE s.workflow_inst_id = ANY (p_insts)
                         AND s.status NOT IN ('completed', 'failed', 'skipped', 'cancelled')
                       UNION ALL SELECT x.id FROM unnest(p_insts) AS x(id));
    -- Nothing held and nothing waiting (an instance archived after each step gave its
    -- slot back, the usual case): no key row to lock. Safe without the keys' locks: the
    -- caller holds the instances' locks, so the only change another transaction can make
    -- to these holders is admitting one that waits (orchwf_release_slots: its wait
    -- becomes a slot), and one expression reads both tables in one snapshot, which sees
    -- the wait or the slot.
    IF NOT EXISTS (SELECT 1 FROM orchwf_key_slots h WHERE h.holder = ANY (v_holders)
                   AND NOT (p_steps_only AND h.holder = h.workflow_inst_id))
       AND NOT EXISTS (SELECT 1 FROM orchwf_key_waits w WHERE w.holder = ANY (v_holders)) THEN
        RETURN;
    END IF;
    PERFORM orchwf_lock_keys(ARRAY(SELECT DISTINCT k FROM orchwf_live_instances i, unnest(i.concurrency_keys) AS k
                                   WHERE i.id = ANY (p_insts)));
    DELETE FROM orchwf_key_waits w WHERE w.holder = ANY (v_holders);
    SELECT array_agg(h.holder) INTO v_holders
    FROM orchwf_key_slots h
    WHERE h.holder = ANY (v_holders) AND NOT (p_steps_only AND h.holder = h.workflow_inst_id);
    IF v_holders IS NOT NULL THEN
        PERFORM orchwf_release_slots(v_holders);
    END IF;
END;
$$;

-- Forget keys idle for p_idle (no slot held, nobody waiting): one row per key ever
-- used would otherwise grow with every distinct key (a key per customer). The pruner
-- calls it every few minutes, at most p_limit rows at a time. A key forgotten while an
-- admission waits for its row's lock is made again by that admission (orchwf_admit_ready).
CREATE OR REPLACE FUNCTION orchwf_forget_idle_keys(p_idle interval, p_limit integer DEFAULT 10000)
RETURNS integer
LANGUAGE sql
SET search_path FROM CURRENT
AS $$
    WITH gone AS (
        DELETE FROM orchwf_concurrency_keys k
        WHERE k.key = ANY (ARRAY(
            SELECT x.key FROM orchwf_concurrency_keys x
            WHERE x.held = 0 AND x.updated_at < now() - p_idle
              AND NOT EXISTS (SELECT 1 FROM orchwf_key_waits w WHERE w.key = x.key)
            LIMIT p_limit))
          AND k.held = 0 AND k.updated_at < now() - p_idle
        RETURNING 1)
    SELECT count(*)::integer FROM gone
$$;

-- The keys in use, for the dashboard and `orchwf keys`: slots held, waiting holders.
CREATE OR REPLACE FUNCTION orchwf_key_stats(p_limit integer DEFAULT 100)
RETURNS TABLE (key text, concurrency_limit integer, held integer, waiting bigint, updated_at timestamptz)
LANGUAGE sql
STABLE
SET search_path FROM CURRENT
AS $$
    SELECT k.key, k.concurrency_limit, k.held,
           (SELECT count(*) FROM orchwf_key_waits w WHERE w.key = k.key), k.updated_at
    FROM orchwf_concurrency_keys k
    WHERE k.held > 0 OR EXISTS (SELECT 1 FROM orchwf_key_waits w WHERE w.key = k.key)
    ORDER BY k.held DESC, k.key
    LIMIT p_limit
$$;
