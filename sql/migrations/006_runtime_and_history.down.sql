-- orchwf 006 down: the tables of release 2 again, with every instance, step and event.
--
-- Release 2's code does not apply an API of its own (sql/api/ came after it), so this
-- file also restores the functions it calls, as release 2 shipped them. It is the one
-- place besides sql/api/ that defines functions: later migrations need none, because a
-- release from this one on re-applies its own API with `orchwf migrate up`.

DROP VIEW orchwf_workflow_events;
DROP VIEW orchwf_step_instances;
DROP VIEW orchwf_workflow_instances;

CREATE TABLE orchwf_workflow_instances (
    id              uuid PRIMARY KEY,
    workflow_id     text NOT NULL,
    status          text NOT NULL
        CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled', 'retrying')),
    input           jsonb NOT NULL DEFAULT '{}',
    output          jsonb NOT NULL DEFAULT '{}',
    context         jsonb NOT NULL DEFAULT '{}',
    current_step_id text,
    started_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz,
    error           text,
    retry_count     integer NOT NULL DEFAULT 0,
    last_retry_at   timestamptz,
    metadata        jsonb NOT NULL DEFAULT '{}',
    trace_id        text,
    correlation_id  text,
    business_id     text,
    -- added by orchwf (not in the seed):
    priority        integer NOT NULL DEFAULT 0,
    queue           text NOT NULL DEFAULT 'default',
    idempotency_key text,
    run_mode        text NOT NULL DEFAULT 'local' CHECK (run_mode IN ('local', 'daemon')),
    definition_hash text,
    steps_remaining integer NOT NULL DEFAULT 0,   -- daemon: non-terminal steps left
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
) WITH (
    -- Rows are updated a few times each (running -> completed): leave room for HOT updates.
    fillfactor = 85,
    autovacuum_vacuum_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.05
);

-- list_workflows: ORDER BY created_at DESC, id DESC, optionally filtered.
CREATE INDEX orchwf_wi_created_idx ON orchwf_workflow_instances (created_at DESC, id DESC)
    WITH (deduplicate_items = off);
CREATE INDEX orchwf_wi_workflow_idx ON orchwf_workflow_instances (workflow_id, created_at DESC);
CREATE INDEX orchwf_wi_status_idx ON orchwf_workflow_instances (status, created_at DESC);
-- Unique keys and generated IDs: deduplication could only merge a row's old and new
-- versions, which bottom-up deletion removes anyway.
CREATE INDEX orchwf_wi_trace_idx ON orchwf_workflow_instances (trace_id) WITH (deduplicate_items = off)
    WHERE trace_id IS NOT NULL;
CREATE INDEX orchwf_wi_correlation_idx ON orchwf_workflow_instances (correlation_id) WITH (deduplicate_items = off)
    WHERE correlation_id IS NOT NULL;
CREATE INDEX orchwf_wi_business_idx ON orchwf_workflow_instances (business_id) WHERE business_id IS NOT NULL AND business_id <> '';
-- prune: finished instances by age.
CREATE INDEX orchwf_wi_finished_idx ON orchwf_workflow_instances (completed_at)
    WHERE status IN ('completed', 'failed', 'cancelled');
-- enqueue: a duplicate idempotency key returns the existing instance.
CREATE UNIQUE INDEX orchwf_wi_idempotency_idx ON orchwf_workflow_instances (workflow_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE orchwf_step_instances (
    id               uuid PRIMARY KEY,
    step_id          text NOT NULL,
    workflow_inst_id uuid NOT NULL,   -- no foreign key: see below
    status           text NOT NULL
        CHECK (status IN ('pending', 'running', 'completed', 'failed', 'skipped', 'retrying', 'cancelled')),
    input            jsonb NOT NULL DEFAULT '{}',
    output           jsonb NOT NULL DEFAULT '{}',
    started_at       timestamptz,
    completed_at     timestamptz,
    error            text,
    retry_count      integer NOT NULL DEFAULT 0,
    last_retry_at    timestamptz,
    duration_ms      bigint NOT NULL DEFAULT 0,
    execution_order  integer NOT NULL DEFAULT 0,
    priority         integer NOT NULL DEFAULT 0,
    -- added by orchwf for the daemon:
    attempts         integer NOT NULL DEFAULT 0,     -- executions started (claims)
    crashes          integer NOT NULL DEFAULT 0,     -- executions lost to a dead worker or lease expiry
    max_attempts     integer NOT NULL DEFAULT 1,     -- copied from the definition at enqueue
    timeout_seconds  double precision,               -- per-attempt timeout, from the definition
    required         boolean NOT NULL DEFAULT true,
    crash_counts_as_attempt boolean NOT NULL DEFAULT false,
    has_compensator  boolean NOT NULL DEFAULT false,
    dependencies     text[] NOT NULL DEFAULT '{}',
    dependents       text[] NOT NULL DEFAULT '{}',
    pending_deps     integer NOT NULL DEFAULT 0,     -- dependencies not yet done; ready at 0
    run_after        timestamptz,                    -- set while waiting for a retry backoff / scheduled start
    lease_owner      text,                           -- worker identity (host:pid:start)
    lease_token      bigint,                         -- fencing token: every write by the holder checks it
    lease_expires_at timestamptz,                    -- renewed by heartbeats
    deadline_at      timestamptz,                    -- hard per-attempt deadline (step timeout)
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- Only a running step may hold a lease: finishing or requeueing a step must clear it.
    -- (Running steps of in-process runs have no lease, so running does not require one.)
    CONSTRAINT orchwf_si_lease_consistent CHECK (status = 'running' OR lease_token IS NULL)
) WITH (
    -- Each row is updated 2-4 times (claimed, heartbeats, finished). No index covers a
    -- column those updates change (status, lease_*, started_at, completed_at, output...),
    -- so they are HOT: the new row version goes on the same page and no index is written.
    -- That needs free room on the page: steps are inserted (and claimed) in bulk, so a
    -- page must hold a new version of most of its rows; fillfactor 70 leaves 30%.
    -- Vacuum early and without throttling: the default 20% scale factor lets dead tuples
    -- pile up to millions on a busy queue.
    fillfactor = 70,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.05,
    autovacuum_vacuum_cost_delay = 0
);

-- No foreign key to the instance: its check (a query and a KEY SHARE lock on the instance
-- for every step row) was 14% of enqueue's work. Deleting instances deletes their steps
-- through the statement-level trigger of sql/api/maintain.sql.
-- The lookup of a step by (instance, step id) when releasing dependents.
CREATE UNIQUE INDEX orchwf_si_workflow_step_idx ON orchwf_step_instances (workflow_inst_id, step_id);
-- No index on lease_owner or lease_expires_at (or with status in a predicate): it would
-- make every claim and finish a non-HOT update that writes every index of this table.
-- orchwf_running_steps lists the claimed steps instead.
-- Stager: steps whose backoff or scheduled start is due (run_after changes only on retries).
CREATE INDEX orchwf_si_run_after_idx ON orchwf_step_instances (run_after) WHERE run_after IS NOT NULL;

-- Append-only. No foreign keys: the daemon inserts 2 events per step and each FK check
-- is a per-row query plus a row lock on the parent; events of a deleted instance are
-- removed by orchwf_workflow_instances' delete trigger. (Events of a deleted step, such
-- as an earlier compensation run, stay: they are history.)
CREATE TABLE orchwf_workflow_events (
    id               uuid PRIMARY KEY DEFAULT orchwf_uuid7(),
    seq              bigint GENERATED ALWAYS AS IDENTITY,   -- ties in emission order
    workflow_inst_id uuid NOT NULL,
    step_inst_id     uuid,
    event_type       text NOT NULL,
    event_data       jsonb NOT NULL DEFAULT '{}',
    "timestamp"      timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now()
) WITH (
    autovacuum_vacuum_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.05
);

-- get_workflow_events: one instance's events, oldest first.
CREATE INDEX orchwf_we_workflow_idx ON orchwf_workflow_events (workflow_inst_id, "timestamp", seq);


INSERT INTO orchwf_workflow_instances (id, workflow_id, status, input, output, context, current_step_id, started_at, completed_at, error, retry_count, last_retry_at, metadata, trace_id, correlation_id, business_id, priority, queue, idempotency_key, run_mode, definition_hash, steps_remaining, created_at, updated_at)
SELECT id, workflow_id, status, input, output, context, current_step_id, started_at, completed_at, error, retry_count, last_retry_at, metadata, trace_id, correlation_id, business_id, priority, queue, idempotency_key, run_mode, definition_hash, steps_remaining, created_at, updated_at FROM orchwf_live_instances
UNION ALL
SELECT id, workflow_id, status, input, output, context, current_step_id, started_at, completed_at, error, retry_count, last_retry_at, metadata, trace_id, correlation_id, business_id, priority, queue, idempotency_key, run_mode, definition_hash, steps_remaining, created_at, updated_at FROM orchwf_instance_history;

INSERT INTO orchwf_step_instances (id, step_id, workflow_inst_id, status, input, output, started_at, completed_at, error, retry_count, last_retry_at, duration_ms, execution_order, priority, attempts, crashes, max_attempts, timeout_seconds, required, crash_counts_as_attempt, has_compensator, dependencies, dependents, pending_deps, run_after, lease_owner, lease_token, lease_expires_at, deadline_at, created_at, updated_at)
SELECT id, step_id, workflow_inst_id, status, input, output, started_at, completed_at, error, retry_count, last_retry_at, duration_ms, execution_order, priority, attempts, crashes, max_attempts, timeout_seconds, required, crash_counts_as_attempt, has_compensator, dependencies, dependents, pending_deps, run_after, lease_owner, lease_token, lease_expires_at, deadline_at, created_at, updated_at FROM orchwf_live_steps
UNION ALL
SELECT id, step_id, workflow_inst_id, status, input, output, started_at, completed_at, error, retry_count, last_retry_at, duration_ms, execution_order, priority, attempts, crashes, max_attempts, timeout_seconds, required, crash_counts_as_attempt, has_compensator, dependencies, dependents, pending_deps, run_after, lease_owner, lease_token, lease_expires_at, deadline_at, created_at, updated_at FROM orchwf_step_history;

INSERT INTO orchwf_workflow_events (id, workflow_inst_id, step_inst_id, event_type, event_data, "timestamp", created_at)
SELECT id, workflow_inst_id, step_inst_id, event_type, event_data, "timestamp", created_at
FROM orchwf_event_history ORDER BY seq;

DROP TABLE orchwf_event_history, orchwf_step_history, orchwf_instance_history;  -- and their partitions
DROP TABLE orchwf_live_steps, orchwf_live_instances, orchwf_partitions, orchwf_partitioning;
DROP SEQUENCE orchwf_event_seq;

-- The functions of this release that release 2 does not have.
DROP FUNCTION IF EXISTS orchwf_uuid7_time(uuid), orchwf_partition_floor(timestamptz, interval),
    orchwf_ensure_partitions(timestamptz, timestamptz), orchwf_extend_partitions(),
    orchwf_expired_partitions(interval), orchwf_partition_children(text), orchwf_partition_rows(timestamptz), orchwf_instance_documents(uuid),
    orchwf_drop_expired_partitions(interval, integer), orchwf_instance_created_at(uuid),
    orchwf_history_range_key(timestamptz), orchwf_partition_expired(timestamptz, interval),
    orchwf_notify_done(uuid[]), orchwf_watch_instance(uuid),
    orchwf_archive_instances(uuid[]), orchwf_unarchive_instance(uuid), orchwf_record_event(uuid, uuid, text, jsonb),
    orchwf_workflow_events_insert(), orchwf_reopen_instance(uuid, text), orchwf_restart_instance(uuid, jsonb),
    orchwf_store_cover(timestamptz), orchwf_store_gather_steps(uuid),
    orchwf_store_save_instance(uuid, text, text, jsonb, jsonb, jsonb, text, timestamptz, timestamptz, text, integer,
                               timestamptz, jsonb, text, text, text, integer, text, text, text, timestamptz, timestamptz),
    orchwf_store_save_step(uuid, text, uuid, text, jsonb, jsonb, timestamptz, timestamptz, text, integer,
                           timestamptz, bigint, integer, integer, integer, timestamptz),
    orchwf_store_update_instance(uuid, text, jsonb, text, timestamptz),
    orchwf_store_update_step(uuid, text, jsonb, text, timestamptz),
    orchwf_store_save_event(uuid, uuid, uuid, text, jsonb, timestamptz);

-- The functions release 2's code calls, as it shipped them.
-- ======== release 2's sql/api/util.sql
-- orchwf API: helpers used by the other API files.
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

-- Events get time-ordered IDs too (the table's DDL cannot name an API function).
DO $$
BEGIN
    IF (SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d
        JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
        WHERE d.adrelid = 'orchwf_workflow_events'::regclass AND a.attname = 'id')
       IS DISTINCT FROM 'orchwf_uuid7()' THEN
        ALTER TABLE orchwf_workflow_events ALTER COLUMN id SET DEFAULT orchwf_uuid7();
    END IF;
END;
$$;
-- ======== release 2's sql/api/enqueue.sql
-- orchwf API: enqueue (also the SQL producers' interface: SELECT orchwf_enqueue(...)).

CREATE OR REPLACE FUNCTION orchwf_enqueue_many(
    p_workflow_id      text,
    p_inputs           jsonb[],
    p_metadata         jsonb DEFAULT '{}',
    p_priority         integer DEFAULT NULL,
    p_idempotency_keys text[] DEFAULT NULL,
    p_queue            text DEFAULT NULL,
    p_run_after        timestamptz DEFAULT NULL
) RETURNS uuid[]
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_def      jsonb;
    v_hash     text;
    v_n        integer := coalesce(cardinality(p_inputs), 0);
    v_keys     text[];
    v_ids      uuid[];
    v_inserted uuid[];
    v_result   uuid[];
    v_queue    text := coalesce(p_queue, 'default');
    v_priority integer := coalesce(p_priority, 0);
    v_meta     jsonb := coalesce(p_metadata, '{}');
BEGIN
    SELECT d.definition, d.version_hash INTO v_def, v_hash
    FROM orchwf_workflow_definitions d WHERE d.workflow_id = p_workflow_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'workflow not found: %', p_workflow_id USING ERRCODE = 'OW404';
    END IF;
    IF v_n = 0 THEN
        RETURN '{}';
    END IF;
    IF jsonb_typeof(v_meta) <> 'object' THEN
        RAISE EXCEPTION 'metadata must be a JSON object' USING ERRCODE = 'OW400';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(p_inputs) AS x(v) WHERE x.v IS NULL OR jsonb_typeof(x.v) <> 'object') THEN
        RAISE EXCEPTION 'input must be a JSON object' USING ERRCODE = 'OW400';
    END IF;
    IF length(v_queue) NOT BETWEEN 1 AND 255 THEN
        RAISE EXCEPTION 'queue name must be 1 to 255 characters' USING ERRCODE = 'OW400';
    END IF;
    -- Priorities are summed (instance + step, + 1000 for a compensation) in int4: keep
    -- each term well inside it.
    IF abs(v_priority) > 536870912 THEN
        RAISE EXCEPTION 'priority % is out of range (at most 536870912 either way)', v_priority USING ERRCODE = 'OW400';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(p_idempotency_keys) AS k(v) WHERE length(k.v) NOT BETWEEN 1 AND 255)
       OR length(v_meta->>'trace_id') > 255 OR length(v_meta->>'correlation_id') > 255
       OR length(v_meta->>'business_id') > 255 THEN
        RAISE EXCEPTION 'idempotency keys and trace, correlation and business IDs must be 1 to 255 characters'
            USING ERRCODE = 'OW400';
    END IF;
    v_keys := coalesce(p_idempotency_keys, array_fill(NULL::text, ARRAY[v_n]));
    IF cardinality(v_keys) <> v_n THEN
        RAISE EXCEPTION 'got % idempotency keys for % inputs', cardinality(v_keys), v_n USING ERRCODE = 'OW400';
    END IF;

    SELECT array_agg(orchwf_uuid7()) INTO v_ids FROM generate_series(1, v_n);

    WITH ins AS (
        INSERT INTO orchwf_workflow_instances AS i (
            id, workflow_id, status, input, metadata, trace_id, correlation_id, business_id,
            priority, queue, idempotency_key, run_mode, definition_hash, steps_remaining)
        SELECT x.id, p_workflow_id, 'pending', x.input, v_meta,
               coalesce(nullif(v_meta->>'trace_id', ''), orchwf_uuid7()::text),
               coalesce(nullif(v_meta->>'correlation_id', ''), orchwf_uuid7()::text),
               coalesce(v_meta->>'business_id', ''),
               v_priority, v_queue, x.key, 'daemon', v_hash, jsonb_array_length(v_def->'steps')
        FROM unnest(v_ids, p_inputs, v_keys) AS x(id, input, key)
        ON CONFLICT (workflow_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
        RETURNING i.id)
    SELECT coalesce(array_agg(ins.id), '{}') INTO v_inserted FROM ins;

    IF cardinality(v_inserted) > 0 THEN
        -- MATERIALIZED: the definition is read once per call. Inlined (a CTE used once
        -- is), it was parsed again for every instance: a fifth of enqueue's work.
        WITH defsteps AS MATERIALIZED (
            SELECT st.value->>'id' AS step_id,
                   (st.ord - 1)::integer AS ord,
                   coalesce((st.value->>'priority')::integer, 0) AS priority,
                   ARRAY(SELECT jsonb_array_elements_text(st.value->'dependencies')) AS deps,
                   ARRAY(SELECT jsonb_array_elements_text(coalesce(st.value->'dependents', '[]'))) AS dependents,
                   coalesce((st.value->'retry_policy'->>'max_attempts')::integer, 1) AS max_attempts,
                   (st.value->>'timeout')::double precision AS timeout,
                   coalesce((st.value->>'required')::boolean, true) AS required,
                   coalesce((st.value->>'crash_counts_as_attempt')::boolean, false) AS crash_counts,
                   coalesce((st.value->>'has_compensator')::boolean, false) AS has_compensator
            FROM jsonb_array_elements(v_def->'steps') WITH ORDINALITY AS st(value, ord)),
        new_steps AS (
            INSERT INTO orchwf_step_instances AS s (
                id, step_id, workflow_inst_id, status, execution_order, priority, dependencies,
                dependents, pending_deps, run_after, max_attempts, timeout_seconds, required,
                crash_counts_as_attempt, has_compensator)
            SELECT orchwf_uuid7(), d.step_id, i.id, 'pending', d.ord, d.priority, d.deps,
                   d.dependents, cardinality(d.deps),
                   CASE WHEN cardinality(d.deps) = 0 AND p_run_after > now() THEN p_run_after END,
                   d.max_attempts, d.timeout, d.required, d.crash_counts, d.has_compensator
            FROM unnest(v_inserted) AS i(id) CROSS JOIN defsteps d
            RETURNING s.id, s.workflow_inst_id, s.priority, s.pending_deps, s.run_after),
        new_ready AS (
            INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority)
            SELECT n.id, n.workflow_inst_id, p_workflow_id, v_queue, n.priority + v_priority
            FROM new_steps n WHERE n.pending_deps = 0 AND n.run_after IS NULL
            RETURNING 1)
        INSERT INTO orchwf_workflow_events (workflow_inst_id, event_type, event_data)
        SELECT i.id, 'workflow.started', jsonb_build_object('workflow_id', p_workflow_id)
        FROM unnest(v_inserted) AS i(id);

        IF p_run_after IS NULL OR p_run_after <= now() THEN
            -- One notification per transaction and queue: Postgres folds identical payloads.
            PERFORM pg_notify('orchwf_ready', v_queue);
        ELSE
            PERFORM pg_notify('orchwf_scheduled', '');
        END IF;
    END IF;

    IF p_idempotency_keys IS NULL THEN
        RETURN v_ids;  -- no keys, no conflicts: every instance was inserted, in input order
    END IF;
    -- A new statement sees instances committed by a concurrent producer with the same key.
    SELECT array_agg(coalesce(ins.id, old.id) ORDER BY x.ord) INTO v_result
    FROM unnest(v_ids, v_keys) WITH ORDINALITY AS x(id, key, ord)
    LEFT JOIN unnest(v_inserted) AS ins(id) ON ins.id = x.id
    LEFT JOIN orchwf_workflow_instances old
           ON ins.id IS NULL AND old.workflow_id = p_workflow_id AND old.idempotency_key = x.key;
    RETURN v_result;
END;
$$;

CREATE OR REPLACE FUNCTION orchwf_enqueue(
    p_workflow_id     text,
    p_input           jsonb,
    p_metadata        jsonb DEFAULT '{}',
    p_priority        integer DEFAULT NULL,
    p_idempotency_key text DEFAULT NULL,
    p_queue           text DEFAULT NULL,
    p_run_after       timestamptz DEFAULT NULL
) RETURNS uuid
LANGUAGE sql
AS $$
    SELECT (orchwf_enqueue_many(p_workflow_id, ARRAY[p_input], p_metadata, p_priority,
                                CASE WHEN p_idempotency_key IS NULL THEN NULL ELSE ARRAY[p_idempotency_key] END,
                                p_queue, p_run_after))[1];
$$;
-- ======== release 2's sql/api/claim.sql
-- orchwf API: the claim (SELECT ... FOR UPDATE SKIP LOCKED on the ready queue).

CREATE OR REPLACE FUNCTION orchwf_claim_steps(
    p_worker        text,
    p_queues        text[],
    p_workflows     text[],
    p_limit         integer,
    p_lease_seconds double precision,
    p_suspects      boolean   -- a quarantine worker: suspects only (see above)
) RETURNS TABLE (
    step_inst_id     uuid,
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
-- Key lookups only. The ready and running lists are emptied and refilled thousands of
-- times between two autovacuum runs, so their statistics lag: a stale estimate must not
-- turn a lookup by key into a sequential scan over dead rows.
SET enable_seqscan = off
-- One plan, made once per connection: every join below is a key lookup whatever the
-- estimates, so the generic plan is as good as a custom one and costs no planning.
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    RETURN QUERY
    WITH picked AS MATERIALIZED (
        -- MATERIALIZED: the planner must not re-run this per row of the update (Oban's lesson).
        -- One ordered index scan per queue (LATERAL): "queue = ANY(...)" would defeat the
        -- index order and sort the whole ready table.
        -- Suspects (steps that were running in a process that died) are left to the
        -- quarantine worker, which takes them from their own partial index, one by one.
        SELECT x.step_inst_id
        FROM unnest(p_queues) AS q(name)
        CROSS JOIN LATERAL (
            SELECT * FROM (
                SELECT r.step_inst_id, r.priority, r.ready_at, r.workflow_inst_id
                FROM orchwf_ready_steps r
                WHERE NOT p_suspects AND r.queue = q.name AND r.workflow_id = ANY (p_workflows)
                  AND r.ready_at <= now() AND NOT r.suspect
                ORDER BY r.priority DESC, r.ready_at, r.workflow_inst_id, r.step_inst_id
                LIMIT p_limit
                FOR UPDATE SKIP LOCKED) ordinary
            UNION ALL
            SELECT * FROM (
                SELECT r.step_inst_id, r.priority, r.ready_at, r.workflow_inst_id
                FROM orchwf_ready_steps r
                WHERE p_suspects AND r.suspect AND r.queue = q.name AND r.workflow_id = ANY (p_workflows)
                  AND r.ready_at <= now()
                ORDER BY r.priority DESC, r.ready_at, r.workflow_inst_id, r.step_inst_id
                LIMIT p_limit
                FOR UPDATE SKIP LOCKED) suspects) x
        ORDER BY x.priority DESC, x.ready_at, x.workflow_inst_id, x.step_inst_id
        LIMIT p_limit),
    -- "= ANY (ARRAY(...))", not a join: a key lookup per row in the generic plan too.
    gone AS (
        DELETE FROM orchwf_ready_steps r
        WHERE r.step_inst_id = ANY (ARRAY(SELECT p.step_inst_id FROM picked p))
        RETURNING r.step_inst_id),
    claimed AS (
        UPDATE orchwf_step_instances s
        SET status = 'running',
            attempts = s.attempts + 1,
            lease_owner = p_worker,
            lease_token = nextval('orchwf_lease_token_seq'),
            lease_expires_at = now() + p_lease_seconds * interval '1 second',
            deadline_at = CASE WHEN s.timeout_seconds > 0 THEN now() + s.timeout_seconds * interval '1 second' END,
            started_at = coalesce(s.started_at, now()),
            updated_at = now()
        WHERE s.id = ANY (ARRAY(SELECT g.step_inst_id FROM gone g)) AND s.status IN ('pending', 'retrying')
        RETURNING s.id, s.workflow_inst_id, s.step_id, s.lease_token, s.attempts,
                  s.retry_count, s.input),
    leased AS (
        INSERT INTO orchwf_running_steps (step_inst_id, workflow_inst_id, lease_owner, lease_token)
        SELECT c.id, c.workflow_inst_id, p_worker, c.lease_token FROM claimed c
        ON CONFLICT ON CONSTRAINT orchwf_running_steps_pkey DO UPDATE
            SET lease_owner = EXCLUDED.lease_owner, lease_token = EXCLUDED.lease_token
        RETURNING 1),
    events AS (
        INSERT INTO orchwf_workflow_events (workflow_inst_id, step_inst_id, event_type, event_data)
        SELECT c.workflow_inst_id, c.id,
               CASE WHEN c.attempts = 1 THEN 'step.started' ELSE 'step.retry' END,
               CASE WHEN c.attempts = 1 THEN jsonb_build_object('step_id', c.step_id)
                    ELSE jsonb_build_object('attempt', c.attempts) END
        FROM claimed c
        RETURNING 1)
    -- Empty documents come back as NULL (the worker reads NULL as empty): nothing to
    -- decode for the metadata, inputs and predecessors a step often does not have.
    SELECT c.id, c.workflow_inst_id, i.workflow_id, c.step_id, c.lease_token, c.attempts,
           c.retry_count, nullif(i.input, '{}'::jsonb), nullif(i.metadata, '{}'::jsonb), i.trace_id,
           (SELECT jsonb_agg(jsonb_build_array(p.step_id, p.output) ORDER BY p.completed_at, p.execution_order)
            FROM orchwf_step_instances p
            WHERE p.workflow_inst_id = c.workflow_inst_id AND p.status = 'completed'),
           nullif(c.input, '{}'::jsonb)
    FROM claimed c
    JOIN orchwf_workflow_instances i ON i.id = c.workflow_inst_id;
END;
$$;
-- ======== release 2's sql/api/finish.sql
-- orchwf API: the finish. Results, retries, dependency release and instance completion,
-- in one transaction, each result fenced by its lease token.

-- Cancel what is left of an instance and end it (or hand it to its compensation step).
-- The caller holds the instance's row lock.
CREATE OR REPLACE FUNCTION orchwf_end_instance(p_inst uuid, p_final text, p_error text)
RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_queue text;
BEGIN
    DELETE FROM orchwf_ready_steps WHERE workflow_inst_id = p_inst;
    -- Running steps lose their lease here: whatever their workers return is discarded.
    DELETE FROM orchwf_running_steps WHERE workflow_inst_id = p_inst;
    UPDATE orchwf_step_instances
    SET status = 'cancelled', completed_at = now(), updated_at = now(), run_after = NULL,
        lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, deadline_at = NULL
    WHERE workflow_inst_id = p_inst AND status IN ('pending', 'running', 'retrying')
      AND step_id <> '$compensate';

    IF EXISTS (SELECT 1 FROM orchwf_step_instances
               WHERE workflow_inst_id = p_inst AND status = 'completed' AND has_compensator
                 AND step_id <> '$compensate') THEN
        -- Compensators are user code: a worker runs them as the '$compensate' step, which
        -- ends the instance with p_final when it finishes.
        INSERT INTO orchwf_step_instances AS s (
            id, step_id, workflow_inst_id, status, input, execution_order, max_attempts, required)
        VALUES (orchwf_uuid7(), '$compensate', p_inst, 'pending',
                jsonb_build_object('final_status', p_final, 'error', p_error), 1000000, 1, true)
        ON CONFLICT (workflow_inst_id, step_id) DO UPDATE
            SET status = 'pending', input = EXCLUDED.input, attempts = 0, retry_count = 0,
                crashes = 0, error = NULL, completed_at = NULL, updated_at = now();
        INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority)
        SELECT s.id, i.id, i.workflow_id, i.queue, i.priority + 1000
        FROM orchwf_step_instances s JOIN orchwf_workflow_instances i ON i.id = s.workflow_inst_id
        WHERE s.workflow_inst_id = p_inst AND s.step_id = '$compensate'
        ON CONFLICT DO NOTHING
        RETURNING queue INTO v_queue;
        UPDATE orchwf_workflow_instances
        SET error = p_error, steps_remaining = 1, updated_at = now() WHERE id = p_inst;
        PERFORM pg_notify('orchwf_ready', coalesce(v_queue, 'default'));
        RETURN;
    END IF;

    UPDATE orchwf_workflow_instances
    SET status = p_final, error = p_error, completed_at = now(), updated_at = now(),
        steps_remaining = 0, current_step_id = NULL
    WHERE id = p_inst;
    INSERT INTO orchwf_workflow_events (workflow_inst_id, event_type, event_data)
    VALUES (p_inst, 'workflow.' || p_final,
            CASE WHEN p_final = 'failed' THEN jsonb_build_object('error', p_error) ELSE '{}'::jsonb END);
    PERFORM pg_notify('orchwf_done', '');
END;
$$;

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
-- Key lookups only. The ready and running lists are emptied and refilled thousands of
-- times between two autovacuum runs, so their statistics lag: a stale estimate must not
-- turn a lookup by key into a sequential scan over dead rows.
SET enable_seqscan = off
AS $$
DECLARE
    v_accepted uuid[];
    v_insts    uuid[];
    v_row      record;
    v_released integer := 0;
    v_n        integer;
    v_requeue  boolean;  -- an accepted attempt goes back to the queue
    v_parents  boolean;  -- an accepted step completed (or was skipped) and has dependents
    v_failed   boolean;  -- a required step failed for good
    v_comp     boolean;  -- a compensation step finished
    v_later    boolean;  -- a failed attempt waits for a backoff
BEGIN
    IF EXISTS (SELECT 1 FROM unnest(p_outcomes) o
               WHERE o NOT IN ('completed', 'failed', 'skipped', 'retry', 'requeue', 'release')) THEN
        RAISE EXCEPTION 'unknown outcome in %', p_outcomes USING ERRCODE = 'OW400';
    END IF;

    -- Instances first, in id order (the global lock order).
    SELECT array_agg(DISTINCT s.workflow_inst_id) INTO v_insts
    FROM orchwf_step_instances s WHERE s.id = ANY (p_ids);
    -- NO KEY UPDATE, not UPDATE: the in-process store's step writes take KEY SHARE locks
    -- on these rows, and must not queue behind (or deadlock with) a finish.
    PERFORM 1 FROM orchwf_workflow_instances i WHERE i.id = ANY (v_insts) ORDER BY i.id FOR NO KEY UPDATE;

    WITH r AS (
        SELECT * FROM unnest(p_ids, p_tokens, p_outcomes, p_outputs, p_errors, p_durations, p_delays, p_inputs)
                 AS r(id, token, outcome, output, error, duration, delay, input)),
    done AS (
        UPDATE orchwf_step_instances s
        SET status = CASE r.outcome WHEN 'retry' THEN 'retrying' WHEN 'requeue' THEN 'retrying'
                                    WHEN 'release' THEN 'pending' ELSE r.outcome END,
            output = CASE WHEN r.outcome = 'completed' THEN coalesce(r.output, '{}') ELSE s.output END,
            input = coalesce(r.input, s.input),
            error = CASE WHEN r.outcome IN ('completed', 'release') THEN s.error ELSE r.error END,
            completed_at = CASE WHEN r.outcome IN ('completed', 'failed', 'skipped') THEN now() END,
            duration_ms = coalesce(r.duration, s.duration_ms),
            retry_count = s.retry_count + (r.outcome = 'retry')::integer,
            last_retry_at = CASE WHEN r.outcome IN ('retry', 'requeue') THEN now() ELSE s.last_retry_at END,
            run_after = CASE WHEN r.outcome = 'retry' AND r.delay > 0
                             THEN now() + r.delay * interval '1 second' END,
            lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, deadline_at = NULL,
            updated_at = now()
        FROM r
        WHERE s.id = r.id AND s.lease_token = r.token AND s.status = 'running'
        RETURNING s.id, s.workflow_inst_id, s.step_id, s.status, r.outcome, r.error, r.duration, r.delay,
                  s.retry_count, s.attempts, cardinality(s.dependents) > 0 AS has_dependents),
    events AS (
        -- One event per result, and a second one (step.skipped) for a skipped step. Only
        -- the document of the event written is built.
        INSERT INTO orchwf_workflow_events (workflow_inst_id, step_inst_id, event_type, event_data)
        SELECT d.workflow_inst_id, d.id,
               CASE d.outcome WHEN 'completed' THEN 'step.completed' WHEN 'retry' THEN 'step.attempt_failed'
                              WHEN 'requeue' THEN 'step.rescued' WHEN 'release' THEN 'step.released'
                              ELSE 'step.failed' END,
               CASE d.outcome WHEN 'completed' THEN jsonb_build_object('duration_ms', d.duration)
                              WHEN 'retry' THEN jsonb_build_object('error', d.error, 'attempt', d.attempts,
                                                                   'retry_in_seconds', d.delay)
                              WHEN 'requeue' THEN jsonb_build_object('cause', d.error)
                              WHEN 'release' THEN '{}'::jsonb
                              ELSE jsonb_build_object('error', d.error, 'retries', d.retry_count) END
        FROM done d
        UNION ALL
        SELECT d.workflow_inst_id, d.id, 'step.skipped', jsonb_build_object('error', d.error)
        FROM done d WHERE d.outcome = 'skipped'
        RETURNING 1),
    unlisted AS (
        -- "= ANY (p_ids)": an index scan whatever the planner guesses for r; the running
        -- list churns, and a sequential scan would wade through its dead rows.
        DELETE FROM orchwf_running_steps x USING r
        WHERE x.step_inst_id = ANY (p_ids) AND x.step_inst_id = r.id AND x.lease_token = r.token
        RETURNING 1)
    SELECT coalesce(array_agg(d.id), '{}'),
           coalesce(bool_or(d.outcome IN ('retry', 'requeue', 'release')), false),
           coalesce(bool_or(d.status IN ('completed', 'skipped') AND d.has_dependents), false),
           coalesce(bool_or(d.status = 'failed' AND d.step_id <> '$compensate'), false),
           coalesce(bool_or(d.step_id = '$compensate' AND d.status IN ('completed', 'failed', 'skipped')), false),
           coalesce(bool_or(d.outcome = 'retry' AND d.delay > 0), false)
    INTO v_accepted, v_requeue, v_parents, v_failed, v_comp, v_later
    FROM done d;

    -- The statements below only run when the batch needs them: each costs a plan
    -- execution even when it matches nothing.

    -- Retries that wait for a backoff: tell the supervisors when to promote them.
    IF v_later THEN
        PERFORM pg_notify('orchwf_scheduled', '');
    END IF;

    -- Attempts that go straight back to the queue.
    IF v_requeue THEN
        -- A step that was running in a process that died is a suspect (see 004's header).
        INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority, suspect)
        SELECT s.id, i.id, i.workflow_id, i.queue, s.priority + i.priority, s.crashes > 0
        FROM orchwf_step_instances s JOIN orchwf_workflow_instances i ON i.id = s.workflow_inst_id
        WHERE s.id = ANY (v_accepted) AND s.status IN ('retrying', 'pending') AND s.run_after IS NULL
          AND i.status IN ('pending', 'running')
        ON CONFLICT DO NOTHING;
        GET DIAGNOSTICS v_n = ROW_COUNT;
        v_released := v_released + v_n;
    END IF;

    -- Release dependents: completed and skipped (optional, failed) steps satisfy them.
    IF v_parents THEN
        WITH dec AS (
            SELECT s.workflow_inst_id, c.child, count(*)::integer AS n
            FROM orchwf_step_instances s, unnest(s.dependents) AS c(child)
            WHERE s.id = ANY (v_accepted) AND s.status IN ('completed', 'skipped')
            GROUP BY 1, 2),
        released AS (
            UPDATE orchwf_step_instances s
            SET pending_deps = s.pending_deps - dec.n, updated_at = now()
            FROM dec
            WHERE s.workflow_inst_id = dec.workflow_inst_id AND s.step_id = dec.child AND s.status = 'pending'
            RETURNING s.id, s.workflow_inst_id, s.priority, s.pending_deps)
        INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority)
        SELECT r.id, i.id, i.workflow_id, i.queue, r.priority + i.priority
        FROM released r JOIN orchwf_workflow_instances i ON i.id = r.workflow_inst_id
        WHERE r.pending_deps = 0 AND i.status IN ('pending', 'running')
        ON CONFLICT DO NOTHING;
        GET DIAGNOSTICS v_n = ROW_COUNT;
        v_released := v_released + v_n;
    END IF;

    -- Count finished steps against their instances and, in the same UPDATE (one new row
    -- version per instance, not two), complete the instances with nothing left to run:
    -- output is the flat merge of step outputs in completion order; context adds each
    -- output under its step ID. An instance with a required step that failed for good is
    -- not completed here: the failure handling below ends it.
    WITH f AS (
        SELECT s.workflow_inst_id AS inst, count(*)::integer AS n, bool_or(s.status = 'failed') AS failed
        FROM orchwf_step_instances s
        WHERE s.id = ANY (v_accepted) AND s.status IN ('completed', 'skipped', 'failed')
          AND s.step_id <> '$compensate'
        GROUP BY 1),
    c AS (
        SELECT f.inst, f.n, x.completing, m.output, m.context
        FROM f
        JOIN orchwf_workflow_instances i ON i.id = f.inst
        CROSS JOIN LATERAL (SELECT i.steps_remaining - f.n <= 0 AND NOT f.failed
                                   AND i.status IN ('pending', 'running') AS completing) x
        -- One pass over the completed steps of a completing instance gives both documents
        -- (a later key wins, as in a sequential merge).
        LEFT JOIN LATERAL (
            SELECT coalesce(jsonb_object_agg(o.k, o.v ORDER BY s.completed_at, s.execution_order, o.ord)
                                FILTER (WHERE o.ord = 1), '{}') AS output,
                   coalesce(jsonb_object_agg(o.k, o.v ORDER BY s.completed_at, s.execution_order, o.ord), '{}') AS context
            FROM orchwf_step_instances s
            CROSS JOIN LATERAL (SELECT s.step_id AS k, s.output AS v, 0 AS ord
                                UNION ALL SELECT e.key, e.value, 1 FROM jsonb_each(s.output) e) o
            WHERE x.completing AND s.workflow_inst_id = f.inst AND s.status = 'completed') m ON true),
    counted AS (
        UPDATE orchwf_workflow_instances i
        SET steps_remaining = i.steps_remaining - c.n,
            status = CASE WHEN c.completing THEN 'completed'
                          WHEN i.status = 'pending' THEN 'running' ELSE i.status END,
            completed_at = CASE WHEN c.completing THEN now() ELSE i.completed_at END,
            current_step_id = CASE WHEN c.completing THEN NULL ELSE i.current_step_id END,
            output = CASE WHEN c.completing THEN c.output ELSE i.output END,
            context = CASE WHEN c.completing THEN c.context ELSE i.context END,
            updated_at = now()
        FROM c
        WHERE i.id = c.inst
        RETURNING i.id, i.started_at, c.completing)
    INSERT INTO orchwf_workflow_events (workflow_inst_id, event_type, event_data)
    SELECT f.id, 'workflow.completed',
           jsonb_build_object('duration_ms', (extract(epoch FROM now() - f.started_at) * 1000)::bigint)
    FROM counted f
    WHERE f.completing;
    IF FOUND THEN
        PERFORM pg_notify('orchwf_done', '');
    END IF;

    -- A required step that failed for good ends its instance.
    IF v_failed THEN
        FOR v_row IN
            SELECT s.workflow_inst_id AS inst, min(s.step_id) AS step_id, min(s.error) AS error,
                   min(s.attempts) AS attempts
            FROM orchwf_step_instances s JOIN orchwf_workflow_instances i ON i.id = s.workflow_inst_id
            WHERE s.id = ANY (v_accepted) AND s.status = 'failed' AND s.step_id <> '$compensate'
              AND i.status IN ('pending', 'running') AND NOT EXISTS (
                  SELECT 1 FROM orchwf_step_instances c
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
            FROM orchwf_step_instances s
            WHERE s.id = ANY (v_accepted) AND s.step_id = '$compensate'
              AND s.status IN ('completed', 'failed', 'skipped')
            ORDER BY s.workflow_inst_id
        LOOP
            UPDATE orchwf_workflow_instances
            SET status = v_row.final, completed_at = now(), updated_at = now(), steps_remaining = 0
            WHERE id = v_row.inst;
            INSERT INTO orchwf_workflow_events (workflow_inst_id, event_type, event_data)
            VALUES (v_row.inst, 'workflow.' || v_row.final,
                    CASE WHEN v_row.final = 'failed' THEN jsonb_build_object('error', v_row.error)
                         ELSE '{}'::jsonb END);
            PERFORM pg_notify('orchwf_done', '');
        END LOOP;
    END IF;

    IF v_released > 0 THEN
        PERFORM pg_notify('orchwf_ready', q.queue)
        FROM (SELECT DISTINCT i.queue FROM orchwf_workflow_instances i WHERE i.id = ANY (v_insts)) q;
    END IF;

    RETURN QUERY
    SELECT x.id, x.id = ANY (v_accepted) FROM unnest(p_ids) AS x(id);
END;
$$;

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
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
BEGIN
    RETURN QUERY
    SELECT f.step_inst_id, f.accepted, NULL::uuid, NULL::text, NULL::text, NULL::bigint, NULL::integer,
           NULL::integer, NULL::jsonb, NULL::jsonb, NULL::text, NULL::jsonb, NULL::jsonb
    FROM orchwf_finish_steps(p_ids, p_tokens, p_outcomes, p_outputs, p_errors, p_durations, p_delays, p_inputs) f;
    IF p_limit > 0 THEN
        RETURN QUERY
        SELECT c.step_inst_id, NULL::boolean, c.workflow_inst_id, c.workflow_id, c.step_id, c.lease_token,
               c.attempt, c.retry_count, c.workflow_input, c.metadata, c.trace_id, c.completed, c.step_input
        FROM orchwf_claim_steps(p_worker, p_queues, p_workflows, p_limit, p_lease_seconds, p_suspects) c;
    END IF;
END;
$$;
-- ======== release 2's sql/api/leases.sql
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
AS $$
BEGIN
    UPDATE orchwf_workers SET heartbeat_at = now() WHERE worker_id = p_worker;
    -- SKIP LOCKED: a step row locked by a finish, cancel or rescue is not waited for (that
    -- would invert the lock order); it is either being finished or will be renewed next tick.
    UPDATE orchwf_step_instances s
    SET lease_expires_at = now() + p_lease_seconds * interval '1 second'
    WHERE s.id IN (
        SELECT l.id FROM orchwf_step_instances l
        JOIN unnest(p_ids, p_tokens) AS h(id, token) ON l.id = h.id AND l.lease_token = h.token
        WHERE l.status = 'running'
        FOR NO KEY UPDATE OF l SKIP LOCKED);
    -- Lost: the token no longer matches (rescued, cancelled or finished elsewhere).
    RETURN QUERY
    SELECT h.id FROM unnest(p_ids, p_tokens) AS h(id, token)
    WHERE NOT EXISTS (SELECT 1 FROM orchwf_step_instances s
                      WHERE s.id = h.id AND s.lease_token = h.token AND s.status = 'running');
END;
$$;

-- Take back the steps of a dead worker (p_owner) or, with p_owner NULL, every step
-- whose lease expired. Retried if budget remains, else failed, through the same
-- fenced finish as a worker's own result.
CREATE OR REPLACE FUNCTION orchwf_rescue_steps(p_owner text DEFAULT NULL, p_limit integer DEFAULT 1000)
RETURNS TABLE (step_inst_id uuid, outcome text, cause text)
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_insts uuid[]; v_ids uuid[]; v_tokens bigint[]; v_outcomes text[]; v_errors text[]; v_n integer;
BEGIN
    -- Candidates, without locks; then the instances in lock order; then re-check under them
    -- (a heartbeat may have renewed the lease, or a finish taken the step, meanwhile).
    SELECT array_agg(DISTINCT s.workflow_inst_id) INTO v_insts
    FROM (SELECT c.workflow_inst_id FROM orchwf_step_instances c
          WHERE c.status = 'running'
            AND ((p_owner IS NOT NULL AND c.lease_owner = p_owner)
                 OR (p_owner IS NULL AND c.lease_expires_at < now()))
          LIMIT p_limit) s;
    IF v_insts IS NULL THEN
        RETURN;
    END IF;
    PERFORM 1 FROM orchwf_workflow_instances i WHERE i.id = ANY (v_insts) ORDER BY i.id FOR NO KEY UPDATE;

    -- A crash has its own budget, max(3, max_attempts), and does not use up the retry
    -- budget unless the step opted in (crash_counts_as_attempt).
    WITH lost AS (
        SELECT s.id, s.lease_token, s.lease_owner, s.lease_expires_at, s.crashes, s.retry_count,
               s.max_attempts, s.required, s.crash_counts_as_attempt
        FROM orchwf_step_instances s
        WHERE s.workflow_inst_id = ANY (v_insts) AND s.status = 'running'
          AND ((p_owner IS NOT NULL AND s.lease_owner = p_owner)
               OR (p_owner IS NULL AND s.lease_expires_at < now()))
        ORDER BY s.id
        FOR NO KEY UPDATE OF s),
    counted AS (
        UPDATE orchwf_step_instances s SET crashes = s.crashes + 1
        FROM lost WHERE s.id = lost.id
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
AS $$
DECLARE
    v_ids uuid[]; v_tokens bigint[]; v_n integer;
BEGIN
    SELECT array_agg(s.id), array_agg(s.lease_token) INTO v_ids, v_tokens
    FROM orchwf_step_instances s
    WHERE s.lease_owner = p_worker AND s.status = 'running' AND s.id <> ALL (coalesce(p_keep, '{}'));
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
-- ======== release 2's sql/api/maintain.sql
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
-- ======== release 2's sql/api/ops.sql
-- orchwf API: operator actions (cancel, resume, retry one step) and queue statistics.

CREATE OR REPLACE FUNCTION orchwf_cancel_workflow(p_inst uuid)
RETURNS text
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_status text;
BEGIN
    SELECT status INTO v_status FROM orchwf_workflow_instances WHERE id = p_inst FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'workflow not found: %', p_inst USING ERRCODE = 'OW404';
    END IF;
    IF v_status = 'cancelled' THEN
        RETURN v_status;
    END IF;
    IF v_status IN ('completed', 'failed') THEN
        RAISE EXCEPTION 'workflow % is already %', p_inst, v_status USING ERRCODE = 'OW409';
    END IF;
    IF EXISTS (SELECT 1 FROM orchwf_step_instances WHERE workflow_inst_id = p_inst
               AND step_id = '$compensate' AND status IN ('pending', 'running', 'retrying')) THEN
        RETURN v_status;  -- already compensating: let it finish
    END IF;
    PERFORM orchwf_end_instance(p_inst, 'cancelled', NULL);
    SELECT status INTO v_status FROM orchwf_workflow_instances WHERE id = p_inst;
    RETURN v_status;
END;
$$;

-- Re-run the failed, cancelled and pending steps of a failed or cancelled instance.
CREATE OR REPLACE FUNCTION orchwf_resume_workflow(p_inst uuid)
RETURNS text
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_status text;
    v_mode text;
BEGIN
    SELECT status, run_mode INTO v_status, v_mode FROM orchwf_workflow_instances WHERE id = p_inst FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'workflow not found: %', p_inst USING ERRCODE = 'OW404';
    END IF;
    IF v_mode <> 'daemon' THEN
        RAISE EXCEPTION 'workflow % runs in-process; resume it with Orchestrator.resume_workflow', p_inst USING ERRCODE = 'OW409';
    END IF;
    IF v_status NOT IN ('failed', 'cancelled') THEN
        RAISE EXCEPTION 'workflow % is %; only failed or cancelled instances can be resumed', p_inst, v_status USING ERRCODE = 'OW409';
    END IF;

    DELETE FROM orchwf_ready_steps WHERE workflow_inst_id = p_inst;
    DELETE FROM orchwf_step_instances WHERE workflow_inst_id = p_inst AND step_id = '$compensate';
    -- A completed step whose effect a compensator undid runs again.
    UPDATE orchwf_step_instances s
    SET status = 'pending', output = '{}', completed_at = NULL, updated_at = now()
    WHERE s.workflow_inst_id = p_inst AND s.status = 'completed' AND EXISTS (
        SELECT 1 FROM orchwf_workflow_events e
        WHERE e.workflow_inst_id = p_inst AND e.step_inst_id = s.id
          AND e.event_type = 'step.compensated' AND e."timestamp" >= s.completed_at);
    UPDATE orchwf_step_instances s
    SET status = 'pending', error = NULL, completed_at = NULL, run_after = NULL, retry_count = 0,
        attempts = 0, crashes = 0, updated_at = now()
    WHERE s.workflow_inst_id = p_inst AND s.status IN ('failed', 'cancelled', 'pending', 'retrying');
    UPDATE orchwf_step_instances s
    SET pending_deps = (SELECT count(*) FROM orchwf_step_instances d
                        WHERE d.workflow_inst_id = p_inst AND d.step_id = ANY (s.dependencies)
                          AND d.status NOT IN ('completed', 'skipped'))
    WHERE s.workflow_inst_id = p_inst AND s.status = 'pending';
    UPDATE orchwf_workflow_instances
    SET status = 'running', error = NULL, completed_at = NULL, retry_count = retry_count + 1,
        last_retry_at = now(), updated_at = now(),
        steps_remaining = (SELECT count(*) FROM orchwf_step_instances
                           WHERE workflow_inst_id = p_inst AND status = 'pending')
    WHERE id = p_inst;
    INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority)
    SELECT s.id, i.id, i.workflow_id, i.queue, s.priority + i.priority
    FROM orchwf_step_instances s JOIN orchwf_workflow_instances i ON i.id = s.workflow_inst_id
    WHERE s.workflow_inst_id = p_inst AND s.status = 'pending' AND s.pending_deps = 0
    ON CONFLICT DO NOTHING;
    INSERT INTO orchwf_workflow_events (workflow_inst_id, event_type, event_data)
    VALUES (p_inst, 'workflow.resumed', '{}');
    PERFORM pg_notify('orchwf_ready', (SELECT queue FROM orchwf_workflow_instances WHERE id = p_inst));
    RETURN 'running';
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
    v_status      text;
    v_mode        text;
    v_step_status text;
    v_others      text;
BEGIN
    SELECT status, run_mode INTO v_status, v_mode
    FROM orchwf_workflow_instances WHERE id = p_inst FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'workflow not found: %', p_inst USING ERRCODE = 'OW404';
    END IF;
    IF v_mode <> 'daemon' THEN
        RAISE EXCEPTION 'workflow % runs in-process; resume it with Orchestrator.resume_workflow', p_inst
            USING ERRCODE = 'OW409';
    END IF;
    IF v_status NOT IN ('failed', 'cancelled') THEN
        RAISE EXCEPTION 'workflow % is %; only steps of failed or cancelled instances can be retried', p_inst, v_status
            USING ERRCODE = 'OW409';
    END IF;
    SELECT status INTO v_step_status
    FROM orchwf_step_instances
    WHERE workflow_inst_id = p_inst AND step_id = p_step AND step_id <> '$compensate';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'step not found: % (workflow %)', p_step, p_inst USING ERRCODE = 'OW400';
    END IF;
    IF v_step_status NOT IN ('failed', 'skipped', 'cancelled') THEN
        RAISE EXCEPTION 'step % is %; only failed, skipped or cancelled steps can be retried', p_step, v_step_status
            USING ERRCODE = 'OW409';
    END IF;
    SELECT string_agg(step_id, ', ' ORDER BY step_id) INTO v_others
    FROM orchwf_step_instances
    WHERE workflow_inst_id = p_inst AND status = 'failed' AND step_id <> p_step AND step_id <> '$compensate';
    IF v_others IS NOT NULL THEN
        RAISE EXCEPTION 'other steps of workflow % failed too (%); resume the workflow to re-run them all', p_inst, v_others
            USING ERRCODE = 'OW409';
    END IF;

    DELETE FROM orchwf_step_instances WHERE workflow_inst_id = p_inst AND step_id = '$compensate';
    UPDATE orchwf_step_instances s
    SET status = 'pending', error = NULL, completed_at = NULL, run_after = NULL, retry_count = 0,
        attempts = 0, crashes = 0, updated_at = now()
    WHERE s.workflow_inst_id = p_inst
      AND (s.step_id = p_step OR s.status IN ('cancelled', 'pending', 'retrying'));
    UPDATE orchwf_step_instances s
    SET pending_deps = (SELECT count(*) FROM orchwf_step_instances d
                        WHERE d.workflow_inst_id = p_inst AND d.step_id = ANY (s.dependencies)
                          AND d.status NOT IN ('completed', 'skipped'))
    WHERE s.workflow_inst_id = p_inst AND s.status = 'pending';
    UPDATE orchwf_workflow_instances
    SET status = 'running', error = NULL, completed_at = NULL, retry_count = retry_count + 1,
        last_retry_at = now(), updated_at = now(),
        steps_remaining = (SELECT count(*) FROM orchwf_step_instances
                           WHERE workflow_inst_id = p_inst AND status = 'pending')
    WHERE id = p_inst;
    INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority)
    SELECT s.id, i.id, i.workflow_id, i.queue, s.priority + i.priority
    FROM orchwf_step_instances s JOIN orchwf_workflow_instances i ON i.id = s.workflow_inst_id
    WHERE s.workflow_inst_id = p_inst AND s.status = 'pending' AND s.pending_deps = 0
    ON CONFLICT DO NOTHING;
    INSERT INTO orchwf_workflow_events (workflow_inst_id, event_type, event_data)
    VALUES (p_inst, 'workflow.resumed', jsonb_build_object('retry_step', p_step));
    PERFORM pg_notify('orchwf_ready', (SELECT queue FROM orchwf_workflow_instances WHERE id = p_inst));
    RETURN 'running';
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
