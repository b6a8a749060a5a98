-- orchwf API: IDs, partitions of history, and where an instance lives.
--
-- Every file in sql/api/ holds the one current definition of its functions (CREATE OR
-- REPLACE). `orchwf migrate up` applies them all after the migrations, every time, in
-- file-name order, in one transaction. Names are unqualified: the migrator sets
-- search_path to the target schema, and "SET search_path FROM CURRENT" pins each function
-- to it, so callers with another search_path still reach orchwf's tables.
--
-- Error codes raised by the API (mapped to Python exceptions by orchwf/db/errors.py):
--   OW404  unknown workflow or instance        -> WorkflowNotFoundError
--   OW400  invalid argument                    -> ValidationError
--   OW409  operation invalid in current state  -> InvalidStateError
--
-- Lock order, everywhere: workflow instance rows (by id, FOR NO KEY UPDATE), then step
-- rows, then ready and running rows. The claim is the one exception and cannot wait in a
-- cycle: it takes ready rows first but with SKIP LOCKED, then steps that nothing else
-- locks while they are ready, and it locks no instance row.

-- Time-ordered UUIDs (the UUIDv7 layout): new rows land at the right edge of their
-- B-tree indexes, so inserts touch a few hot pages however large history grows. The
-- random bits come from random() (the session's generator, seeded from strong randomness
-- when a backend starts): 0.6 us an ID instead of gen_random_uuid's 2.6 us. IDs are
-- unique, not secret (docs/schema.md).
CREATE OR REPLACE FUNCTION orchwf_uuid7() RETURNS uuid
LANGUAGE sql
VOLATILE PARALLEL SAFE
AS $$
    -- 48 bits of Unix milliseconds, version 7, 12 random bits; variant 10, 62 random bits.
    SELECT encode(int8send((floor(date_part('epoch', clock_timestamp()) * 1000)::bigint << 16)
                           | floor(random() * 4096)::bigint | 28672)
                  || int8send((floor(random() * 2147483648)::bigint << 31)
                              | floor(random() * 2147483648)::bigint | (-9223372036854775807 - 1)),
                  'hex')::uuid
$$;

-- The millisecond a time-ordered ID was made, exactly (integer arithmetic); NULL for an
-- ID of another version. orchwf's instances have created_at = orchwf_uuid7_time(id), so a
-- lookup by ID knows its history partition.
CREATE OR REPLACE FUNCTION orchwf_uuid7_time(p_id uuid) RETURNS timestamptz
LANGUAGE sql
IMMUTABLE PARALLEL SAFE STRICT
AS $$
    SELECT CASE WHEN substr(p_id::text, 15, 1) = '7'
                THEN 'epoch'::timestamptz
                     + ('x' || lpad(substr(replace(p_id::text, '-', ''), 1, 12), 16, '0'))::bit(64)::bigint
                       * interval '1 millisecond' END
$$;

-- ---------------------------------------------------------------------------------
-- Partitions of history
-- ---------------------------------------------------------------------------------

-- The start of the partition range holding p_at: a multiple of the interval since the
-- epoch (days start at midnight UTC).
CREATE OR REPLACE FUNCTION orchwf_partition_floor(p_at timestamptz, p_interval interval) RETURNS timestamptz
LANGUAGE sql
IMMUTABLE PARALLEL SAFE STRICT
AS $$
    SELECT 'epoch'::timestamptz
           + floor(extract(epoch FROM p_at) / extract(epoch FROM p_interval)) * p_interval
$$;

-- Create the partitions of the three history tables that cover [p_from, p_to), in steps
-- of orchwf_partitioning.interval; returns how many ranges it created. A new table is
-- attached (SHARE UPDATE EXCLUSIVE on the parent: reads and writes go on) rather than
-- created as a partition. Concurrent callers serialise on an advisory lock.
-- SECURITY DEFINER: a producer or worker whose role owns nothing (docs/reliability.md)
-- may need a partition made; it is made as the owner of the tables, whoever asks.
CREATE OR REPLACE FUNCTION orchwf_ensure_partitions(p_from timestamptz, p_to timestamptz) RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
DECLARE
    v_interval interval;
    v_at       timestamptz;
    v_upper    timestamptz;
    v_next     timestamptz;
    v_suffix   text;
    v_made     integer := 0;
    v_parent   text;
    v_targets  text;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('orchwf_partitions:' || current_schema(), 0));
    SELECT p."interval" INTO v_interval FROM orchwf_partitioning p;
    v_at := orchwf_partition_floor(p_from, v_interval);
    WHILE v_at < p_to LOOP
        SELECT x.upper INTO v_upper FROM orchwf_partitions x WHERE x.lower <= v_at AND x.upper > v_at;
        IF FOUND THEN
            v_at := v_upper;
            CONTINUE;
        END IF;
        -- Up to the next aligned boundary, or the next existing range (after an interval change).
        v_upper := orchwf_partition_floor(v_at, v_interval) + v_interval;
        SELECT min(x.lower) INTO v_next FROM orchwf_partitions x WHERE x.lower > v_at;
        IF v_next IS NOT NULL AND v_next < v_upper THEN
            v_upper := v_next;
        END IF;
        v_suffix := 'p' || to_char(v_at AT TIME ZONE 'UTC', 'YYYYMMDD"t"HH24MISS');
        FOREACH v_parent IN ARRAY ARRAY['orchwf_instance_history', 'orchwf_step_history', 'orchwf_event_history'] LOOP
            -- Written once, read by key: vacuum when inserts pile up, in slices of a fixed
            -- size (a share of the partition grew with it, 018), and freeze at once, so
            -- later vacuums skip these pages for good; analyzed rarely: each analyze took
            -- a core from the queue for a second on a small host (015).
            EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS) WITH ('
                           'autovacuum_vacuum_insert_threshold = 50000, autovacuum_vacuum_insert_scale_factor = 0, '
                           'autovacuum_freeze_min_age = 0, autovacuum_vacuum_cost_delay = 0, '
                           'autovacuum_analyze_threshold = 100000, autovacuum_analyze_scale_factor = 0.5)',
                           v_parent || '_' || v_suffix, v_parent);
            -- The parent's statistics targets: a small sample, none of the documents (017);
            -- a table made by LIKE starts from the server's.
            SELECT string_agg(format('ALTER COLUMN %I SET STATISTICS %s', a.attname, a.attstattarget), ', ')
            INTO v_targets
            FROM pg_attribute a
            WHERE a.attrelid = v_parent::regclass AND a.attnum > 0 AND NOT a.attisdropped AND a.attstattarget >= 0;
            IF v_targets IS NOT NULL THEN
                EXECUTE format('ALTER TABLE %I ', v_parent || '_' || v_suffix) || v_targets;
            END IF;
            EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                           v_parent, v_parent || '_' || v_suffix, v_at, v_upper);
        END LOOP;
        INSERT INTO orchwf_partitions (lower, upper, suffix) VALUES (v_at, v_upper, v_suffix);
        v_made := v_made + 1;
        v_at := v_upper;
    END LOOP;
    -- The horizon is where the ranges from now() on stop being contiguous, not the last
    -- range's end: one made far ahead (the store given a created_at from a skewed clock)
    -- would hide the days before it, and once now() reached them nothing would make them
    -- (every enqueue failed: tests/storage/test_partitions.py).
    UPDATE orchwf_partitioning
    SET horizon = coalesce((WITH RECURSIVE run AS (
                                SELECT x.upper FROM orchwf_partitions x WHERE x.lower <= now() AND x.upper > now()
                                UNION ALL
                                SELECT x.upper FROM run r JOIN orchwf_partitions x ON x.lower = r.upper)
                            SELECT max(run.upper) FROM run), '-infinity');
    RETURN v_made;
END;
$$;

-- Partitions reach premake intervals ahead of now: maintenance calls it each round, and
-- an enqueue when now() has passed the horizon (maintenance down for days), so a new
-- instance always finds its partition.
CREATE OR REPLACE FUNCTION orchwf_extend_partitions() RETURNS integer
LANGUAGE sql
SET search_path FROM CURRENT
AS $$
    SELECT orchwf_ensure_partitions(now() - p."interval", now() + p.premake * p."interval")
    FROM orchwf_partitioning p
$$;

-- The partitions retention may drop: every instance of the range finished more than
-- p_retention ago. A range is kept while an instance created in it still runs (it moves to
-- its partition when it finishes) or finished within p_retention (a long-running
-- instance keeps its whole range). Probes only: the live instances' created_at index,
-- and each candidate's own partition of history (its BRIN index on completed_at).
-- OFFSET 0 keeps the history probe a subplan run per candidate, pruned to its partition:
-- as an anti-join, the planner read all history finished within the retention (most of
-- it) to answer for a few old ranges (tests/storage/test_plans.py).
CREATE OR REPLACE FUNCTION orchwf_expired_partitions(p_retention interval)
RETURNS TABLE (lower timestamptz, upper timestamptz, suffix text)
LANGUAGE sql
STABLE
SET search_path FROM CURRENT
AS $$
    SELECT x.lower, x.upper, x.suffix
    FROM orchwf_partitions x
    WHERE x.upper <= now() - p_retention
      AND NOT EXISTS (SELECT 1 FROM orchwf_live_instances l
                      WHERE l.created_at >= x.lower AND l.created_at < x.upper)
      AND NOT EXISTS (SELECT 1 FROM orchwf_instance_history h
                      WHERE h.created_at >= x.lower AND h.created_at < x.upper
                        AND h.completed_at >= now() - p_retention
                      OFFSET 0)
    ORDER BY x.lower
$$;

-- Where retention stands on one range: each history table's partition and whether it is
-- still attached, detaching (a DETACH ... CONCURRENTLY interrupted), or gone.
CREATE OR REPLACE FUNCTION orchwf_partition_children(p_suffix text)
RETURNS TABLE (parent text, child text, state text)
LANGUAGE sql
STABLE
SET search_path FROM CURRENT
AS $$
    SELECT p.parent, p.parent || '_' || p_suffix,
           CASE WHEN c.oid IS NULL THEN 'gone'
                WHEN i.inhrelid IS NULL THEN 'detached'
                WHEN i.inhdetachpending THEN 'detaching'
                ELSE 'attached' END
    FROM unnest(ARRAY['orchwf_instance_history', 'orchwf_step_history', 'orchwf_event_history']) AS p(parent)
    LEFT JOIN pg_class c ON c.relname = p.parent || '_' || p_suffix
                         AND c.relnamespace = current_schema()::regnamespace
    LEFT JOIN pg_inherits i ON i.inhrelid = c.oid
$$;

-- The advisory-lock key of the range of history that holds p_at. Retention takes it
-- exclusively from before its last check of a range until the range is dropped; a move
-- of an instance back from history (orchwf_unarchive_instance: a resume, a retried step)
-- takes it shared first. So a resume lands before retention's last check (which then
-- keeps the range: it has a live instance) or after the drop (the instance is gone, and
-- says so), never in between. PL/pgSQL, for a plan cached for the session.
CREATE OR REPLACE FUNCTION orchwf_history_range_key(p_at timestamptz) RETURNS bigint
LANGUAGE plpgsql
STABLE
SET search_path FROM CURRENT
AS $$
BEGIN
    RETURN hashtextextended('orchwf_history_range:' || current_schema() || ':'
                            || coalesce((SELECT extract(epoch FROM x.lower)::bigint::text FROM orchwf_partitions x
                                         WHERE x.lower <= p_at AND x.upper > p_at), 'none'), 0);
END;
$$;

-- Whether a range may still be dropped: retention's last check, under the range's lock.
CREATE OR REPLACE FUNCTION orchwf_partition_expired(p_lower timestamptz, p_retention interval) RETURNS boolean
LANGUAGE sql
STABLE
SET search_path FROM CURRENT
AS $$
    SELECT EXISTS (SELECT 1 FROM orchwf_expired_partitions(p_retention) x WHERE x.lower = p_lower)
$$;

-- Retention in one transaction (for SQL callers and the supervisors of release 2): detach
-- (not concurrently: that cannot run in a transaction) and drop the expired partitions.
-- The lock wait is bounded, so a long query on history delays retention, never the
-- workers behind it. orchwf's own pruner detaches CONCURRENTLY instead (docs/schema.md).
-- Returns the instances dropped (the planner's estimate: counting would read them all).
-- The instances of a range, before it is dropped: the planner's estimate (counting would
-- read a day of history), or a count of at most 10,000 when never estimated (a small one).
-- Through the parent table: a role may read history without owning its partitions.
CREATE OR REPLACE FUNCTION orchwf_partition_rows(p_lower timestamptz) RETURNS bigint
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_range    orchwf_partitions%ROWTYPE;
    v_estimate real;
BEGIN
    SELECT * INTO v_range FROM orchwf_partitions x WHERE x.lower = p_lower;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    SELECT c.reltuples INTO v_estimate FROM pg_class c
    WHERE c.relname = 'orchwf_instance_history_' || v_range.suffix AND c.relnamespace = current_schema()::regnamespace;
    IF v_estimate >= 0 THEN
        RETURN v_estimate::bigint;
    END IF;
    RETURN (SELECT count(*) FROM (SELECT 1 FROM orchwf_instance_history h
                                  WHERE h.created_at >= v_range.lower AND h.created_at < v_range.upper
                                  LIMIT 10000) c);
END;
$$;

-- SECURITY DEFINER, as orchwf_ensure_partitions: the runtime role runs retention too.
CREATE OR REPLACE FUNCTION orchwf_drop_expired_partitions(p_retention interval, p_limit integer DEFAULT 100)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path FROM CURRENT
SET lock_timeout = '2s'
AS $$
DECLARE
    v_range  record;
    v_child  record;
    v_rows   bigint := 0;
BEGIN
    FOR v_range IN SELECT * FROM orchwf_expired_partitions(p_retention) LIMIT p_limit LOOP
        -- Checked again under the range's lock: a resume since the loop's query keeps it.
        -- A try: a resume under way keeps the range until the next call.
        CONTINUE WHEN NOT pg_try_advisory_xact_lock(orchwf_history_range_key(v_range.lower));
        CONTINUE WHEN NOT orchwf_partition_expired(v_range.lower, p_retention);
        v_rows := v_rows + orchwf_partition_rows(v_range.lower);
        FOR v_child IN SELECT * FROM orchwf_partition_children(v_range.suffix) LOOP
            IF v_child.state = 'attached' THEN
                EXECUTE format('ALTER TABLE %I DETACH PARTITION %I', v_child.parent, v_child.child);
            ELSIF v_child.state = 'detaching' THEN
                EXECUTE format('ALTER TABLE %I DETACH PARTITION %I FINALIZE', v_child.parent, v_child.child);
            END IF;
            IF v_child.state <> 'gone' THEN
                EXECUTE format('DROP TABLE %I', v_child.child);
            END IF;
        END LOOP;
        DELETE FROM orchwf_partitions x WHERE x.lower = v_range.lower;
    END LOOP;
    RETURN v_rows;
END;
$$;

-- ---------------------------------------------------------------------------------
-- Where an instance lives
-- ---------------------------------------------------------------------------------

-- The created_at of an instance, live or finished (its history partition key); NULL
-- for an unknown one. orchwf's IDs carry it; another ID is looked up by its index.
-- PL/pgSQL, for a plan cached for the session: as a SQL function with a SET clause it was
-- planned on every call, over every partition of history (1.5 ms a call; the in-process
-- store calls it for every write). The generic plan prunes partitions when it starts.
CREATE OR REPLACE FUNCTION orchwf_instance_created_at(p_id uuid) RETURNS timestamptz
LANGUAGE plpgsql
STABLE
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan  -- planned once a session (orchwf_finish_steps)
AS $$
BEGIN
    RETURN coalesce(
        (SELECT l.created_at FROM orchwf_live_instances l WHERE l.id = p_id),
        (SELECT h.created_at FROM orchwf_instance_history h
         WHERE h.id = p_id AND h.created_at = orchwf_uuid7_time(p_id)),
        (SELECT h.created_at FROM orchwf_instance_history h WHERE h.id = p_id LIMIT 1));
END;
$$;

-- Move finished instances (and their steps) from the runtime tables to history, in one
-- statement each: the rows are written to history once, here. The caller holds the
-- instances' row locks and has set their final status.
CREATE OR REPLACE FUNCTION orchwf_archive_instances(p_ids uuid[]) RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET enable_seqscan = off
SET enable_bitmapscan = off
SET jit = off
SET plan_cache_mode = force_generic_plan  -- planned once a session (orchwf_finish_steps)
AS $$
DECLARE
    v_ids     uuid[];
    v_created timestamptz[];
    v_reports jsonb;
    v_keyed   boolean;
BEGIN
    -- The instances' created_at by key lookups first: joining the steps to the runtime
    -- table would hash all of it (its size is the backlog) when its statistics lag.
    SELECT array_agg(i.id), array_agg(i.created_at),
           -- child workflows' outcomes for the steps that started them (orchwf_report_to_parents)
           coalesce(jsonb_agg(jsonb_build_object('parent', i.metadata->'orchwf_parent',
                                                 'name', i.metadata->'orchwf_parent_signal',
                                                 'payload', jsonb_build_object('child_instance_id', i.id,
                                                     'status', i.status, 'output', i.output, 'error', i.error)))
                    FILTER (WHERE i.metadata ? 'orchwf_parent_signal'), '[]'),
           bool_or(i.concurrency_keys IS NOT NULL)
    INTO v_ids, v_created, v_reports, v_keyed
    FROM orchwf_live_instances i WHERE i.id = ANY (p_ids);
    -- Their concurrency slots (the instances' own too) go to the next waiters (keys.sql).
    IF v_keyed THEN
        PERFORM orchwf_release_instance_slots(p_ids, false);
    END IF;
    WITH gone AS (
        DELETE FROM orchwf_live_steps s WHERE s.workflow_inst_id = ANY (p_ids)
        RETURNING s.*)
    INSERT INTO orchwf_step_history (
        id, step_id, workflow_inst_id, status, input, output, started_at, completed_at, error, retry_count,
        last_retry_at, duration_ms, execution_order, priority, attempts, crashes, max_attempts, timeout_seconds,
        required, crash_counts_as_attempt, has_compensator, dependencies, dependents, pending_deps, run_after,
        lease_owner, lease_token, lease_expires_at, deadline_at, created_at, updated_at, instance_created_at)
    SELECT g.id, g.step_id, g.workflow_inst_id, g.status, g.input, g.output, g.started_at, g.completed_at, g.error,
           g.retry_count, g.last_retry_at, g.duration_ms, g.execution_order, g.priority, g.attempts, g.crashes,
           g.max_attempts, g.timeout_seconds, g.required, g.crash_counts_as_attempt, g.has_compensator,
           g.dependencies, g.dependents, g.pending_deps, NULL, NULL, NULL, NULL, NULL, g.created_at, g.updated_at,
           x.at
    FROM gone g JOIN unnest(v_ids, v_created) AS x(id, at) ON x.id = g.workflow_inst_id
    WHERE g.step_id <> '$compensate';  -- the compensation pseudo-step is not history
    WITH gone AS (
        DELETE FROM orchwf_live_instances i WHERE i.id = ANY (p_ids)
        RETURNING i.*)
    INSERT INTO orchwf_instance_history (
        id, workflow_id, status, input, output, context, current_step_id, started_at, completed_at, error,
        retry_count, last_retry_at, metadata, trace_id, correlation_id, business_id, priority, queue,
        idempotency_key, run_mode, definition_hash, steps_remaining, created_at, updated_at)
    SELECT g.id, g.workflow_id, g.status, g.input, g.output, g.context, g.current_step_id, g.started_at,
           g.completed_at, g.error, g.retry_count, g.last_retry_at, g.metadata, g.trace_id, g.correlation_id,
           g.business_id, g.priority, g.queue, g.idempotency_key, g.run_mode, g.definition_hash, 0,
           g.created_at, g.updated_at
    FROM gone g;
    -- Their signals go with them (received or not), by key.
    DELETE FROM orchwf_signals g WHERE g.workflow_inst_id = ANY (p_ids);
    PERFORM orchwf_report_to_parents(v_reports);
    -- No ready or running rows are left: the instance's steps all finished (the claim and
    -- the finish took theirs) or orchwf_end_instance removed them.
END;
$$;

-- Move finished instances back to the runtime tables (a resume, a retried step, the
-- in-process store saving a finished instance as running again). Locks them first.
-- Their events stay in history. Returns the instances moved.
CREATE OR REPLACE FUNCTION orchwf_unarchive_instance(p_id uuid) RETURNS boolean
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET plan_cache_mode = force_generic_plan  -- planned once a session (orchwf_finish_steps)
AS $$
DECLARE
    v_created timestamptz;
    v_locked  timestamptz;
BEGIN
    -- Its range's lock first, before history is read (orchwf_history_range_key): retention
    -- does not drop the range under this move. The ID's clock names the range without a
    -- read; for an ID of another kind, a read finds it (a detach of that very range may
    -- then wait for this transaction while it waits for the lock: the deadlock detector
    -- ends one, and retention retries on its next run).
    -- (Two statements: planning a statement that names history locks it, read or not.)
    v_locked := orchwf_uuid7_time(p_id);
    IF v_locked IS NULL THEN
        SELECT h.created_at INTO v_locked FROM orchwf_instance_history h WHERE h.id = p_id LIMIT 1;
        IF NOT FOUND THEN
            RETURN false;
        END IF;
    END IF;
    PERFORM pg_advisory_xact_lock_shared(orchwf_history_range_key(v_locked));
    SELECT h.created_at INTO v_created FROM orchwf_instance_history h
    WHERE h.id = p_id AND h.created_at = coalesce(orchwf_uuid7_time(p_id), h.created_at)
    FOR UPDATE;
    IF NOT FOUND THEN
        SELECT h.created_at INTO v_created FROM orchwf_instance_history h WHERE h.id = p_id FOR UPDATE;
        IF NOT FOUND THEN
            RETURN false;
        END IF;
    END IF;
    IF v_created <> v_locked AND orchwf_history_range_key(v_created) <> orchwf_history_range_key(v_locked) THEN
        PERFORM pg_advisory_xact_lock_shared(orchwf_history_range_key(v_created));  -- created apart from its ID
    END IF;
    WITH gone AS (
        DELETE FROM orchwf_instance_history h WHERE h.created_at = v_created AND h.id = p_id
        RETURNING h.*)
    INSERT INTO orchwf_live_instances (
        id, workflow_id, status, input, output, context, current_step_id, started_at, completed_at, error,
        retry_count, last_retry_at, metadata, trace_id, correlation_id, business_id, priority, queue,
        idempotency_key, run_mode, definition_hash, steps_remaining, created_at, updated_at)
    SELECT g.id, g.workflow_id, g.status, g.input, g.output, g.context, g.current_step_id, g.started_at,
           g.completed_at, g.error, g.retry_count, g.last_retry_at, g.metadata, g.trace_id, g.correlation_id,
           g.business_id, g.priority, g.queue, g.idempotency_key, g.run_mode, g.definition_hash, g.steps_remaining,
           g.created_at, g.updated_at
    FROM gone g;
    WITH gone AS (
        DELETE FROM orchwf_step_history s WHERE s.instance_created_at = v_created AND s.workflow_inst_id = p_id
        RETURNING s.*)
    INSERT INTO orchwf_live_steps (
        id, step_id, workflow_inst_id, status, input, output, started_at, completed_at, error, retry_count,
        last_retry_at, duration_ms, execution_order, priority, attempts, crashes, max_attempts, timeout_seconds,
        required, crash_counts_as_attempt, has_compensator, dependencies, dependents, pending_deps, run_after,
        lease_owner, lease_token, lease_expires_at, deadline_at, created_at, updated_at)
    SELECT g.id, g.step_id, g.workflow_inst_id, g.status, g.input, g.output, g.started_at, g.completed_at, g.error,
           g.retry_count, g.last_retry_at, g.duration_ms, g.execution_order, g.priority, g.attempts, g.crashes,
           g.max_attempts, g.timeout_seconds, g.required, g.crash_counts_as_attempt, g.has_compensator,
           g.dependencies, g.dependents, g.pending_deps, g.run_after, NULL, NULL, NULL, NULL, g.created_at,
           g.updated_at
    FROM gone g;
    RETURN true;
END;
$$;

-- Record an event of an instance (its partition: the instance's created_at).
CREATE OR REPLACE FUNCTION orchwf_record_event(p_inst uuid, p_step uuid, p_type text, p_data jsonb) RETURNS void
LANGUAGE sql
SET search_path FROM CURRENT
AS $$
    INSERT INTO orchwf_event_history (id, workflow_inst_id, step_inst_id, event_type, event_data, instance_created_at)
    SELECT orchwf_uuid7(), p_inst, p_step, p_type, coalesce(p_data, '{}'), c.at
    FROM (SELECT orchwf_instance_created_at(p_inst) AS at) c
    WHERE c.at IS NOT NULL
$$;

-- orchwf_workflow_events (a view) takes inserts too: writers that do not know the
-- instance's created_at, such as the compensation of release 2's workers during a
-- rolling upgrade, and operators' SQL.
CREATE OR REPLACE FUNCTION orchwf_workflow_events_insert() RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
BEGIN
    INSERT INTO orchwf_event_history (id, seq, workflow_inst_id, step_inst_id, event_type, event_data, "timestamp",
                                      created_at, instance_created_at)
    VALUES (coalesce(NEW.id, orchwf_uuid7()), coalesce(NEW.seq, nextval('orchwf_event_seq')), NEW.workflow_inst_id,
            NEW.step_inst_id, NEW.event_type, coalesce(NEW.event_data, '{}'), coalesce(NEW."timestamp", now()),
            coalesce(NEW.created_at, now()), orchwf_instance_created_at(NEW.workflow_inst_id));
    RETURN NEW;
END;
$$;
CREATE OR REPLACE TRIGGER orchwf_workflow_events_insert INSTEAD OF INSERT ON orchwf_workflow_events
    FOR EACH ROW EXECUTE FUNCTION orchwf_workflow_events_insert();

-- The partitions around now exist after every `orchwf migrate up`.
SELECT orchwf_extend_partitions();


-- Child workflows (child_workflow_step) that finished report to the step that started
-- them: a signal of the name that step waits for, with the child's status, output and
-- error, which makes it ready (as orchwf_signal does). A parent that is no longer live
-- gets nothing.
CREATE OR REPLACE FUNCTION orchwf_report_to_parents(p_reports jsonb) RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_queues text[];
BEGIN
    IF p_reports IS NULL OR jsonb_array_length(p_reports) = 0 THEN
        RETURN;
    END IF;
    WITH sent AS (
        INSERT INTO orchwf_signals (workflow_inst_id, name, payload)
        SELECT p.id, x.name, x.payload
        FROM jsonb_to_recordset(p_reports) AS x(parent text, name text, payload jsonb)
        JOIN orchwf_live_instances p ON p.id = x.parent::uuid
        RETURNING workflow_inst_id, name),
    woken AS (
        UPDATE orchwf_live_steps s SET run_after = NULL, updated_at = now()
        FROM sent g
        WHERE s.workflow_inst_id = g.workflow_inst_id AND s.wait_signal = g.name AND s.status = 'pending'
          AND s.pending_deps = 0
        RETURNING s.id, s.workflow_inst_id, s.priority, s.concurrency_key, s.dependencies),
    queued AS (
        -- A keyed step is admitted or parked (sql/api/keys.sql), in key order.
        INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority,
                                        definition_hash, concurrency_key)
        SELECT w.id, p.id, p.workflow_id, p.queue, w.priority + p.priority, p.definition_hash,
               orchwf_ready_key(w.concurrency_key, w.dependencies, p.concurrency_key)
        FROM woken w JOIN orchwf_live_instances p ON p.id = w.workflow_inst_id
        ORDER BY 7, 1
        ON CONFLICT DO NOTHING
        RETURNING queue)
    SELECT array_agg(DISTINCT q.queue) INTO v_queues FROM queued q;
    PERFORM pg_notify('orchwf_ready', q.name) FROM unnest(v_queues) AS q(name);
END;
$$;
