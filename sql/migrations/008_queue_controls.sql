-- orchwf 008: queue controls. A row per queue an operator has set something on: pause
-- (orchwf_pause_queue / orchwf_resume_queue, sql/api/queues.sql). The claim reads it by
-- key; a queue without a row runs as before. New table only: nothing to lock, nothing
-- to move, and the workers of release 3 go on through the new function bodies.

CREATE TABLE orchwf_queues (
    name       text PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 255),
    paused     boolean NOT NULL DEFAULT false,   -- the claim takes nothing from a paused queue
    paused_at  timestamptz,                      -- when it was paused; NULL while it runs
    updated_at timestamptz NOT NULL DEFAULT now()
) WITH (
    -- A few rows, read by every claim: room for HOT updates, dead rows vacuumed early.
    fillfactor = 50,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);
