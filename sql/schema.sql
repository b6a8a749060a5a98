-- orchwf: the current schema, in one picture.
--
-- A fresh install runs this file (then sql/api/); a database of an earlier release runs
-- the migrations in sql/migrations/ instead (then sql/api/). tests/test_schema.py checks
-- that both end with the same catalog. Functions and triggers live in sql/api/.
--
-- Migrations hold DDL and data moves only. Functions and triggers live in sql/api/, which
-- `orchwf migrate up` applies after the migrations, every time; sql/schema.sql is the
-- current picture of the tables (what a fresh install runs instead of 001..latest).
--
-- Names are unqualified: the migrator sets search_path to the target schema
-- (default public, e.g. --schema orchwf), so orchwf can live beside an app's tables.
--
-- Layout (see docs/schema.md):
--   orchwf_workflow_definitions  registered graphs, so producers enqueue by ID without step code
--   orchwf_workflow_instances    one row per run                       (warm: updated a few times)
--   orchwf_step_instances        one row per step per run              (hot: updated on every transition)
--   orchwf_ready_steps           the claim queue: only runnable steps  (hottest: insert + delete)
--   orchwf_running_steps         the claimed steps, for lease rescue    (hottest: insert + delete)
--   orchwf_workflow_events       append-only history
--   orchwf_workers               live worker processes (for operators and lease release)

CREATE TABLE orchwf_workflow_definitions (
    workflow_id   text PRIMARY KEY CHECK (length(workflow_id) BETWEEN 1 AND 255),
    name          text NOT NULL,
    version       text NOT NULL DEFAULT '1.0.0',
    version_hash  text NOT NULL,
    definition    jsonb NOT NULL,          -- {"steps": [{id, dependencies, retry_policy, ...}], ...}
    registered_at timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

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

-- The claim queue. Only steps that can run now (or at ready_at) live here, so the claim
-- scans a small table whatever the size of history. Rows are inserted when a step becomes
-- runnable and deleted by the claim that takes them.
-- No foreign key: a per-row FK check on every insert costs more than the insert. Rows of
-- a deleted instance are removed by orchwf_workflow_instances' delete trigger.
CREATE TABLE orchwf_ready_steps (
    step_inst_id     uuid PRIMARY KEY,
    workflow_inst_id uuid NOT NULL,
    workflow_id      text NOT NULL,
    queue            text NOT NULL,
    priority         integer NOT NULL,
    ready_at         timestamptz NOT NULL DEFAULT now(),
    -- A suspect was running in a worker process that died: only the quarantine worker
    -- claims it (docs/reliability.md).
    suspect          boolean NOT NULL DEFAULT false
) WITH (
    -- Pure insert/delete churn: vacuum after ~1% dead rows (with a floor), unthrottled,
    -- so the claim's index scan never wades through dead entries.
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);

-- The claim: per queue, highest priority first, then oldest. Among steps that became
-- ready together (a fan-out released by one finish), one instance's steps come out
-- together: they are then finished together too, with one update of their instance
-- and of their join step instead of one per step.
CREATE INDEX orchwf_rs_claim_idx ON orchwf_ready_steps (queue, priority DESC, ready_at, workflow_inst_id, step_inst_id);

-- The quarantine worker's claim; empty unless a worker died, so ordinary claims never touch it.
CREATE INDEX orchwf_rs_suspect_idx ON orchwf_ready_steps (queue, priority DESC, ready_at, workflow_inst_id, step_inst_id)
    WHERE suspect;

-- The claimed (running) steps of the daemon: a row is inserted by the claim and deleted
-- by the finish, in the same transactions that change the step's status. The lease
-- itself (owner, token, expiry, deadline) lives on the step row, which stays the truth;
-- this small table lets the supervisor and the rescuer find running steps without an
-- index on the step table (see above). A row whose token no longer matches its step
-- is ignored, and removed by the rescuer.
CREATE TABLE orchwf_running_steps (
    step_inst_id     uuid PRIMARY KEY,
    workflow_inst_id uuid NOT NULL,
    lease_owner      text NOT NULL,
    lease_token      bigint NOT NULL
) WITH (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);

-- Append-only. No foreign keys: the daemon inserts 2 events per step and each FK check
-- is a per-row query plus a row lock on the parent; events of a deleted instance are
-- removed by orchwf_workflow_instances' delete trigger. (Events of a deleted step, such
-- as an earlier compensation run, stay: they are history.)
CREATE TABLE orchwf_workflow_events (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),  -- sql/api/util.sql makes it orchwf_uuid7()
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

CREATE TABLE orchwf_workers (
    worker_id     text PRIMARY KEY,                -- host:pid:start, unique per start
    supervisor_id text,
    host          text NOT NULL,
    pid           integer NOT NULL,
    role          text NOT NULL,
    queues        text[] NOT NULL DEFAULT '{}',
    workflows     text[] NOT NULL DEFAULT '{}',
    concurrency   integer NOT NULL DEFAULT 1,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT orchwf_workers_role_check CHECK (role IN ('supervisor', 'worker', 'quarantine'))
);
CREATE INDEX orchwf_workers_supervisor_idx ON orchwf_workers (supervisor_id);

CREATE SEQUENCE orchwf_lease_token_seq AS bigint CACHE 100;
