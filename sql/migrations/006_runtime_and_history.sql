-- orchwf 006: work in flight apart from history; history partitioned by time.
--
-- Instances that have not finished move to the runtime tables (orchwf_live_instances,
-- orchwf_live_steps); finished ones, their steps and every event to history tables
-- partitioned by the instance's created_at (one partition per day of data), written once.
-- The old tables' names become views over both. The copy takes about as long as reading
-- the old tables once: plan it like a VACUUM FULL of them (docs/operations.md, "Upgrades").

-- Workers of release 2 may be running (a rolling upgrade): the tables are locked first,
-- so the copy below sees everything they committed and they write nothing after it; they
-- wait, then go on against the new tables. A lock race with them (a deadlock) rolls this
-- back, and the migrator tries again (orchwf/db/migrations.py).
LOCK TABLE orchwf_workflow_instances, orchwf_step_instances, orchwf_workflow_events, orchwf_ready_steps,
    orchwf_running_steps IN ACCESS EXCLUSIVE MODE;

DO $$
BEGIN
    IF current_setting('server_version_num')::integer < 140000 THEN
        RAISE EXCEPTION 'orchwf needs PostgreSQL 14 or newer (this server is %)', current_setting('server_version');
    END IF;
END;
$$;

-- An instance lives here from its creation until it finishes, then moves to
-- orchwf_instance_history in the transaction that finishes it. created_at is the time
-- of its (time-ordered) ID: orchwf_uuid7_time(id) for every instance orchwf creates, so
-- a lookup by ID finds its history partition without a search.
CREATE TABLE orchwf_live_instances (
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
    priority        integer NOT NULL DEFAULT 0,
    queue           text NOT NULL DEFAULT 'default',
    idempotency_key text,
    run_mode        text NOT NULL DEFAULT 'local' CHECK (run_mode IN ('local', 'daemon')),
    definition_hash text,
    steps_remaining integer NOT NULL DEFAULT 0,   -- daemon: non-terminal steps left
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
) WITH (
    -- Inserted, updated a few times (the step counter) and deleted: a churning table whose
    -- size is the work in flight. HOT room on the page, and a vacuum after 1% dead rows.
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);
-- Listing (live instances first in created_at order) and retention's question "does any
-- instance of this partition's range still run?".
CREATE INDEX orchwf_li_created_idx ON orchwf_live_instances (created_at DESC, id DESC);
-- A duplicate idempotency key among live instances: ON CONFLICT DO NOTHING (history is
-- checked under an advisory lock, sql/api/enqueue.sql).
CREATE UNIQUE INDEX orchwf_li_idempotency_idx ON orchwf_live_instances (workflow_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE orchwf_live_steps (
    id               uuid PRIMARY KEY,
    step_id          text NOT NULL,
    workflow_inst_id uuid NOT NULL,    -- no foreign key: every writer holds the instance
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
    CONSTRAINT orchwf_ls_lease_consistent CHECK (status = 'running' OR lease_token IS NULL)
) WITH (
    -- Each row is updated 2-4 times (claimed, heartbeats, finished). No index covers a
    -- column those updates change, so they are HOT; fillfactor 70 leaves the room.
    fillfactor = 70,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);
CREATE UNIQUE INDEX orchwf_ls_workflow_step_idx ON orchwf_live_steps (workflow_inst_id, step_id);
-- The scheduler: steps whose backoff or scheduled start is due.
CREATE INDEX orchwf_ls_run_after_idx ON orchwf_live_steps (run_after) WHERE run_after IS NOT NULL;

-- ---------------------------------------------------------------------------------
-- History: partitioned by the instance's created_at (RANGE), one partition per
-- orchwf_partitioning.interval. Written once, never updated (an operator's resume moves
-- an instance back to the runtime tables). Partitions get their storage settings when
-- orchwf_ensure_partitions creates them: a partitioned table holds none.
-- ---------------------------------------------------------------------------------

CREATE TABLE orchwf_instance_history (
    id              uuid NOT NULL,
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
    priority        integer NOT NULL DEFAULT 0,
    queue           text NOT NULL DEFAULT 'default',
    idempotency_key text,
    run_mode        text NOT NULL DEFAULT 'local' CHECK (run_mode IN ('local', 'daemon')),
    definition_hash text,
    steps_remaining integer NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- The lookup by ID with its created_at (pruned to one partition), and the listing in
    -- created_at order (partitions in order: the newest first, and no further than needed).
    CONSTRAINT orchwf_instance_history_pkey PRIMARY KEY (created_at, id)
) PARTITION BY RANGE (created_at);
-- An ID whose created_at is unknown (not one of orchwf's time-ordered IDs): one probe per partition.
CREATE INDEX orchwf_ih_id_idx ON orchwf_instance_history (id);
CREATE INDEX orchwf_ih_workflow_idx ON orchwf_instance_history (workflow_id, created_at DESC);
CREATE INDEX orchwf_ih_status_idx ON orchwf_instance_history (status, created_at DESC);
CREATE INDEX orchwf_ih_trace_idx ON orchwf_instance_history (trace_id) WHERE trace_id IS NOT NULL;
CREATE INDEX orchwf_ih_correlation_idx ON orchwf_instance_history (correlation_id) WHERE correlation_id IS NOT NULL;
CREATE INDEX orchwf_ih_business_idx ON orchwf_instance_history (business_id)
    WHERE business_id IS NOT NULL AND business_id <> '';
CREATE INDEX orchwf_ih_idempotency_idx ON orchwf_instance_history (workflow_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- Finished since T (metrics, stats, the dashboard, retention). Rows arrive in completion
-- order, so a BRIN index of a few pages answers "completed after T" by skipping the rest.
CREATE INDEX orchwf_ih_completed_idx ON orchwf_instance_history USING brin (completed_at)
    WITH (pages_per_range = 32);

CREATE TABLE orchwf_step_history (
    id               uuid NOT NULL,
    step_id          text NOT NULL,
    workflow_inst_id uuid NOT NULL,
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
    attempts         integer NOT NULL DEFAULT 0,
    crashes          integer NOT NULL DEFAULT 0,
    max_attempts     integer NOT NULL DEFAULT 1,
    timeout_seconds  double precision,
    required         boolean NOT NULL DEFAULT true,
    crash_counts_as_attempt boolean NOT NULL DEFAULT false,
    has_compensator  boolean NOT NULL DEFAULT false,
    dependencies     text[] NOT NULL DEFAULT '{}',
    dependents       text[] NOT NULL DEFAULT '{}',
    pending_deps     integer NOT NULL DEFAULT 0,
    run_after        timestamptz,
    lease_owner      text,
    lease_token      bigint,
    lease_expires_at timestamptz,
    deadline_at      timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    instance_created_at timestamptz NOT NULL,     -- the partition key: its instance's created_at
    -- An instance's steps: one probe per partition, or one in all with instance_created_at.
    CONSTRAINT orchwf_step_history_pkey PRIMARY KEY (workflow_inst_id, step_id, instance_created_at)
) PARTITION BY RANGE (instance_created_at);
CREATE INDEX orchwf_sh_id_idx ON orchwf_step_history (id);

-- Every event, written once: an in-flight instance's partition stays until it finishes.
CREATE SEQUENCE orchwf_event_seq AS bigint;  -- no cache: seq orders events of one instance across sessions
CREATE TABLE orchwf_event_history (
    id               uuid NOT NULL DEFAULT gen_random_uuid(),  -- orchwf's own writers pass orchwf_uuid7()
    seq              bigint NOT NULL DEFAULT nextval('orchwf_event_seq'),   -- ties in emission order
    workflow_inst_id uuid NOT NULL,
    step_inst_id     uuid,
    event_type       text NOT NULL,
    event_data       jsonb NOT NULL DEFAULT '{}',
    "timestamp"      timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    instance_created_at timestamptz NOT NULL      -- the partition key: its instance's created_at
) PARTITION BY RANGE (instance_created_at);
-- One instance's events, oldest first (pruned to its partition by instance_created_at).
CREATE INDEX orchwf_eh_workflow_idx ON orchwf_event_history (workflow_inst_id, "timestamp", seq);

-- How history is cut: one partition per interval, created premake intervals ahead.
CREATE TABLE orchwf_partitioning (
    singleton bool PRIMARY KEY DEFAULT true CHECK (singleton),
    "interval" interval NOT NULL DEFAULT '1 day' CHECK ("interval" >= '1 minute'),
    premake    integer NOT NULL DEFAULT 3 CHECK (premake BETWEEN 1 AND 366),
    horizon    timestamptz NOT NULL DEFAULT '-infinity'   -- partitions cover created_at up to here
);
INSERT INTO orchwf_partitioning DEFAULT VALUES;

-- The partitions orchwf made: one row per range, for its three history tables.
CREATE TABLE orchwf_partitions (
    lower      timestamptz PRIMARY KEY,
    upper      timestamptz NOT NULL,
    suffix     text NOT NULL UNIQUE,          -- orchwf_instance_history_<suffix>, ...
    created_at timestamptz NOT NULL DEFAULT now(),
    CHECK (upper > lower)
);


-- One partition per day (UTC) that holds an instance, made as orchwf_ensure_partitions
-- makes them (sql/api/util.sql): a table attached to each history table, and a row in
-- orchwf_partitions. Later days come from the API after this migration.
DO $$
DECLARE
    v_day    timestamptz;
    v_suffix text;
    v_parent text;
BEGIN
    FOR v_day IN
        SELECT DISTINCT 'epoch'::timestamptz
                        + floor(extract(epoch FROM i.created_at) / 86400) * interval '1 day'
        FROM orchwf_workflow_instances i ORDER BY 1
    LOOP
        v_suffix := 'p' || to_char(v_day AT TIME ZONE 'UTC', 'YYYYMMDD"t"HH24MISS');
        FOREACH v_parent IN ARRAY ARRAY['orchwf_instance_history', 'orchwf_step_history', 'orchwf_event_history'] LOOP
            EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS) WITH ('
                           'autovacuum_vacuum_insert_threshold = 50000, autovacuum_vacuum_insert_scale_factor = 0.05, '
                           'autovacuum_freeze_min_age = 0, autovacuum_vacuum_cost_delay = 0)',
                           v_parent || '_' || v_suffix, v_parent);
            EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                           v_parent, v_parent || '_' || v_suffix, v_day, v_day + interval '1 day');
        END LOOP;
        INSERT INTO orchwf_partitions (lower, upper, suffix) VALUES (v_day, v_day + interval '1 day', v_suffix);
    END LOOP;
    UPDATE orchwf_partitioning SET horizon = coalesce((SELECT max(x.upper) FROM orchwf_partitions x), '-infinity');
END;
$$;

-- The moves. Work in flight keeps its leases and tokens: workers of release 2 that hold
-- claims finish them against the new tables (sql/api/ keeps every signature they call).
INSERT INTO orchwf_live_instances (id, workflow_id, status, input, output, context, current_step_id, started_at, completed_at, error, retry_count, last_retry_at, metadata, trace_id, correlation_id, business_id, priority, queue, idempotency_key, run_mode, definition_hash, steps_remaining, created_at, updated_at)
SELECT id, workflow_id, status, input, output, context, current_step_id, started_at, completed_at, error, retry_count, last_retry_at, metadata, trace_id, correlation_id, business_id, priority, queue, idempotency_key, run_mode, definition_hash, steps_remaining, created_at, updated_at FROM orchwf_workflow_instances WHERE status NOT IN ('completed', 'failed', 'cancelled');

INSERT INTO orchwf_live_steps (id, step_id, workflow_inst_id, status, input, output, started_at, completed_at, error, retry_count, last_retry_at, duration_ms, execution_order, priority, attempts, crashes, max_attempts, timeout_seconds, required, crash_counts_as_attempt, has_compensator, dependencies, dependents, pending_deps, run_after, lease_owner, lease_token, lease_expires_at, deadline_at, created_at, updated_at)
SELECT s.id, s.step_id, s.workflow_inst_id, s.status, s.input, s.output, s.started_at, s.completed_at, s.error, s.retry_count, s.last_retry_at, s.duration_ms, s.execution_order, s.priority, s.attempts, s.crashes, s.max_attempts, s.timeout_seconds, s.required, s.crash_counts_as_attempt, s.has_compensator, s.dependencies, s.dependents, s.pending_deps, s.run_after, s.lease_owner, s.lease_token, s.lease_expires_at, s.deadline_at, s.created_at, s.updated_at
FROM orchwf_step_instances s JOIN orchwf_live_instances i ON i.id = s.workflow_inst_id;

INSERT INTO orchwf_instance_history (id, workflow_id, status, input, output, context, current_step_id, started_at, completed_at, error, retry_count, last_retry_at, metadata, trace_id, correlation_id, business_id, priority, queue, idempotency_key, run_mode, definition_hash, steps_remaining, created_at, updated_at)
SELECT id, workflow_id, status, input, output, context, current_step_id, started_at, completed_at, error, retry_count, last_retry_at, metadata, trace_id, correlation_id, business_id, priority, queue, idempotency_key, run_mode, definition_hash, steps_remaining, created_at, updated_at FROM orchwf_workflow_instances WHERE status IN ('completed', 'failed', 'cancelled');

INSERT INTO orchwf_step_history (id, step_id, workflow_inst_id, status, input, output, started_at, completed_at, error, retry_count, last_retry_at, duration_ms, execution_order, priority, attempts, crashes, max_attempts, timeout_seconds, required, crash_counts_as_attempt, has_compensator, dependencies, dependents, pending_deps, run_after, lease_owner, lease_token, lease_expires_at, deadline_at, created_at, updated_at, instance_created_at)
SELECT s.id, s.step_id, s.workflow_inst_id, s.status, s.input, s.output, s.started_at, s.completed_at, s.error, s.retry_count, s.last_retry_at, s.duration_ms, s.execution_order, s.priority, s.attempts, s.crashes, s.max_attempts, s.timeout_seconds, s.required, s.crash_counts_as_attempt, s.has_compensator, s.dependencies, s.dependents, s.pending_deps, s.run_after, s.lease_owner, s.lease_token, s.lease_expires_at, s.deadline_at, s.created_at, s.updated_at, i.created_at
FROM orchwf_step_instances s JOIN orchwf_workflow_instances i ON i.id = s.workflow_inst_id
WHERE i.status IN ('completed', 'failed', 'cancelled') AND s.step_id <> '$compensate';

-- Events keep their IDs and order; events of instances deleted long ago are not kept.
INSERT INTO orchwf_event_history (id, seq, workflow_inst_id, step_inst_id, event_type, event_data, "timestamp",
                                  created_at, instance_created_at)
SELECT e.id, e.seq, e.workflow_inst_id, e.step_inst_id, e.event_type, e.event_data, e."timestamp", e.created_at,
       i.created_at
FROM orchwf_workflow_events e JOIN orchwf_workflow_instances i ON i.id = e.workflow_inst_id;
SELECT setval('orchwf_event_seq', coalesce((SELECT max(seq) FROM orchwf_event_history), 0) + 1, false);

DROP TABLE orchwf_workflow_events;
DROP TABLE orchwf_step_instances;
DROP TABLE orchwf_workflow_instances;
DROP FUNCTION IF EXISTS orchwf_instances_deleted();

-- ---------------------------------------------------------------------------------
-- Readers: live and finished together, live first (an instance is in exactly one).
-- ---------------------------------------------------------------------------------

CREATE VIEW orchwf_workflow_instances AS
    SELECT id, workflow_id, status, input, output, context, current_step_id, started_at, completed_at, error,
           retry_count, last_retry_at, metadata, trace_id, correlation_id, business_id, priority, queue,
           idempotency_key, run_mode, definition_hash, steps_remaining, created_at, updated_at
    FROM orchwf_live_instances
    UNION ALL
    SELECT id, workflow_id, status, input, output, context, current_step_id, started_at, completed_at, error,
           retry_count, last_retry_at, metadata, trace_id, correlation_id, business_id, priority, queue,
           idempotency_key, run_mode, definition_hash, steps_remaining, created_at, updated_at
    FROM orchwf_instance_history;

CREATE VIEW orchwf_step_instances AS
    SELECT id, step_id, workflow_inst_id, status, input, output, started_at, completed_at, error, retry_count,
           last_retry_at, duration_ms, execution_order, priority, attempts, crashes, max_attempts,
           timeout_seconds, required, crash_counts_as_attempt, has_compensator, dependencies, dependents,
           pending_deps, run_after, lease_owner, lease_token, lease_expires_at, deadline_at, created_at, updated_at
    FROM orchwf_live_steps
    UNION ALL
    SELECT id, step_id, workflow_inst_id, status, input, output, started_at, completed_at, error, retry_count,
           last_retry_at, duration_ms, execution_order, priority, attempts, crashes, max_attempts,
           timeout_seconds, required, crash_counts_as_attempt, has_compensator, dependencies, dependents,
           pending_deps, run_after, lease_owner, lease_token, lease_expires_at, deadline_at, created_at, updated_at
    FROM orchwf_step_history;

-- Insertable (sql/api/events.sql fills in instance_created_at): writers of release 2 add
-- compensation events through it during a rolling upgrade.
CREATE VIEW orchwf_workflow_events AS
    SELECT id, seq, workflow_inst_id, step_inst_id, event_type, event_data, "timestamp", created_at
    FROM orchwf_event_history;
