-- orchwf 017: history partitions are analyzed from a small sample (docs/benchmarks.md,
-- "The soak's last spikes: analyzes of history").
--
-- An analyze reads 300 x the largest statistics target rows: 30,000 at the server's
-- default of 100, spread over as many pages, and sorts each column's values, jsonb
-- documents included. Of a day's partitions a few hours old (a few million rows) that
-- took 1-2.6 s of a core, and the three tables of a range reach their thresholds
-- together: on a 2-core host the queue waited behind them for seconds. History is read by
-- key and by time range, where a rough estimate serves the planner; nobody filters it by
-- the contents of a document. So: a target of 10 (a 3,000-row sample) on the columns
-- queries filter or join on, and none on the documents (the analyze skips them). A
-- partition of 1.5M instances: 660 ms to analyze before, 33 ms after.
--
-- ALTER COLUMN ... SET STATISTICS on the partitioned table reaches every partition there
-- now; orchwf_ensure_partitions (sql/api/util.sql) copies the parent's targets to each
-- partition it makes (a CREATE TABLE ... LIKE or PARTITION OF starts from the server's).
-- Catalog settings only: a SHARE UPDATE EXCLUSIVE lock for a moment, nothing rewritten,
-- and the workers of earlier releases run on.

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
