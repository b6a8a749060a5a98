-- orchwf: the current schema, in one picture.
--
-- A fresh install runs this file, then sql/api/; a database of an earlier release runs
-- the migrations of sql/migrations/ instead, then sql/api/. tests/upgrade/ checks that
-- both end with the same catalog. Functions and triggers live in sql/api/ (the history
-- tables' partitions too: orchwf_ensure_partitions creates them ahead of time).
--
-- Names are unqualified: the migrator sets search_path to the target schema (default
-- public, e.g. --schema orchwf), so orchwf can live beside an application's tables.
--
-- Work in flight apart from history (docs/schema.md):
--
--   runtime: small, updated and deleted all the time; their size is the work in flight
--     orchwf_live_instances     instances not finished yet (pending, running)
--     orchwf_live_steps         the steps of those instances, with leases and pending deps
--     orchwf_ready_steps        the claim queue: only steps that can run now
--     orchwf_running_steps      the claimed steps, for lease rescue
--     orchwf_workers            live processes
--   signals: orchwf_signals, sent to instances and not yet consumed (or consumed, until
--     their instance finishes)
--   schedules: orchwf_schedules, cron schedules and when each fires next
--   trends: per-minute rollups for the dashboard, kept two days, and the claim's samples
--     orchwf_wait_samples       queue waits of each claim, until rolled up
--     orchwf_stats_minutes      finishes, failures and queue wait p50/p99 per minute
--     orchwf_wait_buckets       the open minutes' queue waits, as histograms
--     orchwf_queue_minutes      each queue's backlog per minute
--     orchwf_queues             queue controls: paused queues, rate limits
--     orchwf_concurrency_keys   concurrency keys: limit and slots held
--     orchwf_key_slots          the slots held (a step or instance admitted under its key)
--     orchwf_key_waits          keyed steps waiting for a slot (not in the ready queue)
--   history: written once when an instance finishes, never updated; partitioned by the
--   instance's created_at, so retention drops whole partitions
--     orchwf_instance_history   finished instances
--     orchwf_step_history       their steps
--     orchwf_event_history      every event, of live and finished instances (insert-only)
--   readers: orchwf_workflow_instances, orchwf_step_instances, orchwf_workflow_events are
--   views over both (live first), for operators' SQL and the readers of earlier releases.

CREATE TABLE orchwf_workflow_definitions (
    workflow_id   text PRIMARY KEY CHECK (length(workflow_id) BETWEEN 1 AND 255),
    name          text NOT NULL,
    version       text NOT NULL DEFAULT '1.0.0',
    version_hash  text NOT NULL,
    definition    jsonb NOT NULL,          -- {"steps": [{id, dependencies, retry_policy, ...}], ...}
    registered_at timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Every version of every definition ever registered (the current one is in
-- orchwf_workflow_definitions): `orchwf workflows` lists them with their instances.
CREATE TABLE orchwf_workflow_versions (
    workflow_id        text NOT NULL,
    version_hash       text NOT NULL,
    version            text NOT NULL,
    first_registered_at timestamptz NOT NULL DEFAULT now(),
    last_registered_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, version_hash)
);

-- ---------------------------------------------------------------------------------
-- Runtime
-- ---------------------------------------------------------------------------------

-- Every churning table below carries vacuum_truncate = false: its size swings with the
-- backlog, and a vacuum that cut empty pages off its end held an ACCESS EXCLUSIVE lock
-- that stalled every claim and finish meanwhile (015). The pages are reused instead.

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
    updated_at      timestamptz NOT NULL DEFAULT now(),
    -- Its workflow-level concurrency key (WorkflowBuilder.with_concurrency), rendered from
    -- its input at enqueue, and the limit. NULL: none.
    concurrency_key   text,
    concurrency_limit integer CHECK (concurrency_limit >= 1),
    -- Every key of the instance and its steps, sorted: the key rows a finish locks (after
    -- the instances, in key order). NULL: no key; the finish then does nothing more.
    concurrency_keys  text[]
) WITH (
    -- Inserted, updated a few times (the step counter) and deleted: a churning table whose
    -- size is the work in flight. HOT room on the page, and a vacuum after 1% dead rows.
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0,
    vacuum_truncate = false
);
-- Listing (live instances first in created_at order) and retention's question "does any
-- instance of this partition's range still run?". Not the ID: only the primary key may
-- answer a lookup by ID (014_lookup_indexes).
CREATE INDEX orchwf_li_created_idx ON orchwf_live_instances (created_at DESC);
-- Instances by the version of their definition: who waits for a version no worker has
-- (orchwf stats, the metrics), a probe per registered version, never a scan.
CREATE INDEX orchwf_li_version_idx ON orchwf_live_instances (definition_hash, created_at);
-- The children of an instance (child_workflow_step), to cancel them with it.
CREATE INDEX orchwf_li_parent_idx ON orchwf_live_instances ((metadata->>'orchwf_parent'))
    WHERE metadata ? 'orchwf_parent';
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
    -- with_delay (durable sleep): once its dependencies complete, the step waits this long
    -- in run_after (no slot, lease or connection held), then the scheduler makes it ready.
    delay_seconds    double precision NOT NULL DEFAULT 0 CHECK (delay_seconds >= 0),
    -- wait_for_signal: the name it waits for; made ready by orchwf_signal, or by its
    -- timeout (seconds, NULL: none) through run_after.
    wait_signal      text,
    wait_timeout     double precision,
    -- Only a running step may hold a lease: finishing or requeueing a step must clear it.
    -- (Running steps of in-process runs have no lease, so running does not require one.)
    CONSTRAINT orchwf_ls_lease_consistent CHECK (status = 'running' OR lease_token IS NULL),
    -- Its concurrency key (StepBuilder.with_concurrency), rendered from the instance's
    -- input at enqueue, and the limit. NULL: none.
    concurrency_key   text,
    concurrency_limit integer CHECK (concurrency_limit >= 1)
) WITH (
    -- Each row is updated 2-4 times (claimed, heartbeats, finished). No index covers a
    -- column those updates change, so they are HOT; fillfactor 70 leaves the room.
    fillfactor = 70,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0,
    vacuum_truncate = false
);
CREATE UNIQUE INDEX orchwf_ls_workflow_step_idx ON orchwf_live_steps (workflow_inst_id, step_id);
-- The scheduler: steps whose backoff or scheduled start is due.
CREATE INDEX orchwf_ls_run_after_idx ON orchwf_live_steps (run_after) WHERE run_after IS NOT NULL;

-- The claim queue. Only steps that can run now (or at ready_at) live here, so the claim
-- scans a small table whatever the size of history. Inserted when a step becomes
-- runnable, deleted by the claim that takes it.
CREATE TABLE orchwf_ready_steps (
    step_inst_id     uuid PRIMARY KEY,
    workflow_inst_id uuid NOT NULL,
    workflow_id      text NOT NULL,
    queue            text NOT NULL,
    priority         integer NOT NULL,
    ready_at         timestamptz NOT NULL DEFAULT now(),
    -- A suspect was running in a worker process that died: only the quarantine worker
    -- claims it (docs/reliability.md).
    suspect          boolean NOT NULL DEFAULT false,
    -- The version of its instance's definition: a worker claims only the versions its
    -- code has (orchwf_claim_steps' p_versions). NULL: any.
    definition_hash  text,
    -- The concurrency key to admit under (NULL for every unkeyed step): the admission
    -- trigger (orchwf_admit_ready, sql/api/keys.sql) runs only for rows that carry one.
    concurrency_key  text
) WITH (
    -- Pure insert/delete churn: vacuum after ~1% dead rows (with a floor), unthrottled,
    -- so the claim's index scan never wades through dead entries.
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0,
    vacuum_truncate = false
);
-- The claim: per queue, highest priority first, then oldest; one instance's steps together.
CREATE INDEX orchwf_rs_claim_idx ON orchwf_ready_steps (queue, priority DESC, ready_at, workflow_inst_id, step_inst_id);
-- The quarantine worker's claim; empty unless a worker died, so ordinary claims never touch it.
CREATE INDEX orchwf_rs_suspect_idx ON orchwf_ready_steps (queue, priority DESC, ready_at, workflow_inst_id, step_inst_id)
    WHERE suspect;

-- The claimed steps of the daemon: inserted by the claim, deleted by the finish. The lease
-- itself lives on the step row, which stays the truth; this small table lets the rescuer
-- and the supervisor find running steps without an index on the step table.
CREATE TABLE orchwf_running_steps (
    step_inst_id     uuid PRIMARY KEY,
    workflow_inst_id uuid NOT NULL,
    lease_owner      text NOT NULL,
    lease_token      bigint NOT NULL
) WITH (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0,
    vacuum_truncate = false
);

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
    versions      text[] NOT NULL DEFAULT '{}',    -- the definition versions (hashes) its code has
    CONSTRAINT orchwf_workers_role_check CHECK (role IN ('supervisor', 'worker', 'quarantine'))
);
CREATE INDEX orchwf_workers_supervisor_idx ON orchwf_workers (supervisor_id);

CREATE SEQUENCE orchwf_lease_token_seq AS bigint CACHE 100;

-- Signals (Client.signal, orchwf_signal): kept until a step of the instance that waits
-- for that name consumes one, in the transaction that completes it (exactly once), and
-- deleted with their instance when it finishes.
CREATE TABLE orchwf_signals (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow_inst_id uuid NOT NULL,
    name             text NOT NULL,
    payload          jsonb NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT now(),
    consumed_by      uuid,                 -- the step instance that received it
    consumed_at      timestamptz
);
-- A waiting step's question ("is there one for me?"), oldest first; and the cleanup.
CREATE INDEX orchwf_signals_instance_idx ON orchwf_signals (workflow_inst_id, name, id);

-- Cron schedules (docs/schedules.md). The daemon's cron service (maintenance/cron.py)
-- starts an instance at each tick, with the idempotency key "cron:<name>:<tick>", in the
-- transaction that moves next_run_at on: one instance per tick across every host.
-- Times are instants; the expression is evaluated in the schedule's time zone.
CREATE TABLE orchwf_schedules (
    name             text PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 255),
    workflow_id      text NOT NULL,
    cron             text NOT NULL,
    timezone         text NOT NULL DEFAULT 'UTC',
    input            jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(input) = 'object'),
    misfire          text NOT NULL DEFAULT 'once' CHECK (misfire IN ('skip', 'once', 'all')),
    -- 'definition': WorkflowBuilder.with_schedule, kept in step with the registered
    -- definition; 'client': Client.add_schedule or the CLI.
    source           text NOT NULL DEFAULT 'client' CHECK (source IN ('client', 'definition')),
    paused           boolean NOT NULL DEFAULT false,
    next_run_at      timestamptz NOT NULL,
    last_run_at      timestamptz,                 -- the last tick that started an instance
    last_instance_id uuid,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
-- The cron service's question: which schedules are due.
CREATE INDEX orchwf_schedules_due_idx ON orchwf_schedules (next_run_at) WHERE NOT paused;

-- ---------------------------------------------------------------------------------
-- Trends: small tables the dashboard draws the last hour from (sql/api/stats.sql).
-- ---------------------------------------------------------------------------------

-- How long the steps each claim took had waited in the ready queue: one row per claim
-- (sql/api/claim.sql), read and deleted by the rollup below within a minute or so.
-- Insert/delete churn like the ready queue; no index (the rollup reads it whole).
CREATE TABLE orchwf_wait_samples (
    claimed_at timestamptz NOT NULL DEFAULT now(),
    waits_ms   real[] NOT NULL
) WITH (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0,
    vacuum_truncate = false
);

-- The dashboard's trends, one row per minute (UTC), kept two days: the instances that
-- finished in it (from history's BRIN index on completed_at) and the queue waits of
-- the steps claimed in it. Rolled up by the supervisors' maintenance (orchwf_roll_up_stats),
-- which counts each finish and each sample once: a minute stays open until the settled
-- count (counted_to, p_lag_seconds behind) has passed its end.
CREATE TABLE orchwf_stats_minutes (
    minute      timestamptz PRIMARY KEY,
    completed   bigint NOT NULL DEFAULT 0,   -- including the unsettled_* below
    failed      bigint NOT NULL DEFAULT 0,
    cancelled   bigint NOT NULL DEFAULT 0,
    started     bigint NOT NULL DEFAULT 0,   -- step attempts claimed
    wait_p50_ms real,                        -- NULL: nothing claimed in that minute
    wait_p99_ms real,
    closed      boolean NOT NULL DEFAULT false,
    rolled_at   timestamptz NOT NULL DEFAULT now(),
    -- finishes of the last p_lag_seconds: counted again by the next run (a late commit) (016)
    unsettled_completed bigint NOT NULL DEFAULT 0,
    unsettled_failed    bigint NOT NULL DEFAULT 0,
    unsettled_cancelled bigint NOT NULL DEFAULT 0,
    counted_to  timestamptz                  -- finishes before this are counted for good
);

-- The queue waits of each open minute as a histogram (016): bucket b holds the waits w
-- (ms) with floor(16 * log2(w + 1)) = b, so p50 and p99 are read within one bucket (4.4%). A minute's
-- rows are deleted when it closes.
CREATE TABLE orchwf_wait_buckets (
    minute timestamptz NOT NULL,
    bucket smallint NOT NULL,
    n      bigint NOT NULL,
    PRIMARY KEY (minute, bucket)
) WITH (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_cost_delay = 0,
    vacuum_truncate = false
);

-- Each queue's backlog (ready steps), sampled by the same rollup: the most seen in the minute.
CREATE TABLE orchwf_queue_minutes (
    minute timestamptz NOT NULL,
    queue  text NOT NULL,
    ready  bigint NOT NULL,
    PRIMARY KEY (minute, queue)
);

-- ---------------------------------------------------------------------------------
-- Queue controls: one row per queue an operator has set something on (pause, rate
-- limit). A queue
-- without a row runs as it always did; the claim reads this table by key
-- (sql/api/claim.sql, sql/api/queues.sql).
-- ---------------------------------------------------------------------------------

CREATE TABLE orchwf_queues (
    name            text PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 255),
    paused          boolean NOT NULL DEFAULT false,   -- the claim takes nothing from a paused queue
    paused_at       timestamptz,                      -- when it was paused; NULL while it runs
    -- A rate limit: a token bucket of `burst` starts, refilled at rate_per_second, taken
    -- by the claims of this queue under this row's lock (orchwf_take_starts). NULL: none.
    rate_per_second double precision CHECK (rate_per_second > 0 AND rate_per_second <= 1000000),
    burst           integer CHECK (burst BETWEEN 1 AND 1000000),
    tokens          double precision NOT NULL DEFAULT 0,     -- starts allowed as of tokens_at
    tokens_at       timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT orchwf_queues_rate_limit_check CHECK ((rate_per_second IS NULL) = (burst IS NULL))
) WITH (
    -- A few rows, read by every claim; the row of a rate-limited queue is updated by each
    -- of its claims: room for HOT updates on the page, dead rows vacuumed early.
    fillfactor = 50,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0,
    vacuum_truncate = false
);

-- ---------------------------------------------------------------------------------
-- Concurrency keys (StepBuilder.with_concurrency, WorkflowBuilder.with_concurrency):
-- admission control per key (sql/api/keys.sql). A keyed step enters the ready queue only
-- while its key has a free slot; otherwise it waits in orchwf_key_waits, holding no
-- worker slot.
-- ---------------------------------------------------------------------------------

-- A row per key ever used: its limit and the slots held (steps ready or running under it).
CREATE TABLE orchwf_concurrency_keys (
    key               text PRIMARY KEY,
    concurrency_limit integer NOT NULL CHECK (concurrency_limit >= 1),
    held              integer NOT NULL DEFAULT 0 CHECK (held >= 0),
    updated_at        timestamptz NOT NULL DEFAULT now()
) WITH (
    -- Updated when a keyed step is admitted or released without a waiter taking its slot:
    -- HOT room on the page, early vacuum.
    fillfactor = 50,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0,
    vacuum_truncate = false
);

-- The slots held: a step (step-level key) or an instance (workflow-level key) admitted
-- and not yet released. Inserted by the admission, deleted by the release.
CREATE TABLE orchwf_key_slots (
    holder           uuid PRIMARY KEY,   -- the step's ID, or the instance's for a workflow-level key
    key              text NOT NULL,
    workflow_inst_id uuid NOT NULL,
    admitted_at      timestamptz NOT NULL DEFAULT now()
) WITH (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0,
    vacuum_truncate = false
);

-- Holders waiting for a slot of their key, with the steps to make ready once admitted.
CREATE TABLE orchwf_key_waits (
    holder           uuid PRIMARY KEY,
    key              text NOT NULL,
    workflow_inst_id uuid NOT NULL,
    priority         integer NOT NULL,
    step_ids         uuid[] NOT NULL,
    parked_at        timestamptz NOT NULL DEFAULT now()
) WITH (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0,
    vacuum_truncate = false
);
-- The release admits the next waiters of a key: highest priority first, then oldest
-- (holder IDs are time-ordered).
CREATE INDEX orchwf_key_waits_next_idx ON orchwf_key_waits (key, priority DESC, holder);

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

-- Statistics from a small sample (017): a target of 10 (3,000 rows) on the columns queries
-- filter or join on, none on the documents. An analyze at the server's default read 30,000
-- rows of a growing partition and sorted every document: 1-2.6 s of a core, three tables
-- at a time, which the queue felt on a small host. orchwf_ensure_partitions copies these
-- targets to each partition it makes.
ALTER TABLE orchwf_instance_history
    ALTER COLUMN id SET STATISTICS 10,
    ALTER COLUMN workflow_id SET STATISTICS 10,
    ALTER COLUMN status SET STATISTICS 10,
    ALTER COLUMN input SET STATISTICS 0,
    ALTER COLUMN output SET STATISTICS 0,
    ALTER COLUMN context SET STATISTICS 0,
    ALTER COLUMN current_step_id SET STATISTICS 10,
    ALTER COLUMN started_at SET STATISTICS 10,
    ALTER COLUMN completed_at SET STATISTICS 10,
    ALTER COLUMN error SET STATISTICS 0,
    ALTER COLUMN retry_count SET STATISTICS 10,
    ALTER COLUMN last_retry_at SET STATISTICS 10,
    ALTER COLUMN metadata SET STATISTICS 0,
    ALTER COLUMN trace_id SET STATISTICS 10,
    ALTER COLUMN correlation_id SET STATISTICS 10,
    ALTER COLUMN business_id SET STATISTICS 10,
    ALTER COLUMN priority SET STATISTICS 10,
    ALTER COLUMN queue SET STATISTICS 10,
    ALTER COLUMN idempotency_key SET STATISTICS 10,
    ALTER COLUMN run_mode SET STATISTICS 10,
    ALTER COLUMN definition_hash SET STATISTICS 10,
    ALTER COLUMN steps_remaining SET STATISTICS 10,
    ALTER COLUMN created_at SET STATISTICS 10,
    ALTER COLUMN updated_at SET STATISTICS 10;

ALTER TABLE orchwf_step_history
    ALTER COLUMN id SET STATISTICS 10,
    ALTER COLUMN step_id SET STATISTICS 10,
    ALTER COLUMN workflow_inst_id SET STATISTICS 10,
    ALTER COLUMN status SET STATISTICS 10,
    ALTER COLUMN input SET STATISTICS 0,
    ALTER COLUMN output SET STATISTICS 0,
    ALTER COLUMN started_at SET STATISTICS 10,
    ALTER COLUMN completed_at SET STATISTICS 10,
    ALTER COLUMN error SET STATISTICS 0,
    ALTER COLUMN retry_count SET STATISTICS 10,
    ALTER COLUMN last_retry_at SET STATISTICS 10,
    ALTER COLUMN duration_ms SET STATISTICS 10,
    ALTER COLUMN execution_order SET STATISTICS 10,
    ALTER COLUMN priority SET STATISTICS 10,
    ALTER COLUMN attempts SET STATISTICS 10,
    ALTER COLUMN crashes SET STATISTICS 10,
    ALTER COLUMN max_attempts SET STATISTICS 10,
    ALTER COLUMN timeout_seconds SET STATISTICS 10,
    ALTER COLUMN required SET STATISTICS 10,
    ALTER COLUMN crash_counts_as_attempt SET STATISTICS 10,
    ALTER COLUMN has_compensator SET STATISTICS 10,
    ALTER COLUMN dependencies SET STATISTICS 0,
    ALTER COLUMN dependents SET STATISTICS 0,
    ALTER COLUMN pending_deps SET STATISTICS 10,
    ALTER COLUMN run_after SET STATISTICS 10,
    ALTER COLUMN lease_owner SET STATISTICS 10,
    ALTER COLUMN lease_token SET STATISTICS 10,
    ALTER COLUMN lease_expires_at SET STATISTICS 10,
    ALTER COLUMN deadline_at SET STATISTICS 10,
    ALTER COLUMN created_at SET STATISTICS 10,
    ALTER COLUMN updated_at SET STATISTICS 10,
    ALTER COLUMN instance_created_at SET STATISTICS 10;

ALTER TABLE orchwf_event_history
    ALTER COLUMN id SET STATISTICS 10,
    ALTER COLUMN seq SET STATISTICS 10,
    ALTER COLUMN workflow_inst_id SET STATISTICS 10,
    ALTER COLUMN step_inst_id SET STATISTICS 10,
    ALTER COLUMN event_type SET STATISTICS 10,
    ALTER COLUMN event_data SET STATISTICS 0,
    ALTER COLUMN "timestamp" SET STATISTICS 10,
    ALTER COLUMN created_at SET STATISTICS 10,
    ALTER COLUMN instance_created_at SET STATISTICS 10;

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
