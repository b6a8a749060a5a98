-- orchwf 004 (release 2): the DDL of a leaner hot path (docs/benchmarks.md, "Profile").
-- The functions it changed live in sql/api/.

-- Unique keys (created_at, id) and generated IDs: deduplication can only merge the old
-- and new versions of a row, which bottom-up deletion removes anyway.
ALTER INDEX orchwf_wi_created_idx SET (deduplicate_items = off);
ALTER INDEX orchwf_wi_trace_idx SET (deduplicate_items = off);
ALTER INDEX orchwf_wi_correlation_idx SET (deduplicate_items = off);

-- No foreign key from steps to instances: its check (a query and a KEY SHARE lock on the
-- instance for every step row) was 14% of enqueue's work. Deleting instances deletes
-- their steps through the statement-level trigger (sql/api/maintain.sql).
ALTER TABLE orchwf_step_instances DROP CONSTRAINT orchwf_step_instances_workflow_inst_id_fkey;

-- Suspects: ready steps that were running in a worker process that died. Only the
-- quarantine worker claims them (docs/reliability.md). The partial index is empty unless
-- a worker died: ordinary claims never touch it.
ALTER TABLE orchwf_ready_steps ADD COLUMN suspect boolean NOT NULL DEFAULT false;
CREATE INDEX orchwf_rs_suspect_idx ON orchwf_ready_steps (queue, priority DESC, ready_at, workflow_inst_id, step_inst_id)
    WHERE suspect;
-- A quarantine worker registers as such (orchwf workers, the dashboard, the metrics).
ALTER TABLE orchwf_workers DROP CONSTRAINT orchwf_workers_role_check,
    ADD CONSTRAINT orchwf_workers_role_check CHECK (role IN ('supervisor', 'worker', 'quarantine'));
