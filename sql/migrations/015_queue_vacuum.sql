-- orchwf 015: vacuum that does not stall the queue (docs/benchmarks.md, "The soak's
-- spikes: vacuum's truncation, analyzes, and NOTIFY").
-- 1. The churning tables are never truncated by vacuum. Their size swings with the
--    backlog; a vacuum that found empty pages at the end took an ACCESS EXCLUSIVE lock to
--    cut them off, and every claim and finish queued behind it (the soak's probe saw a
--    vacuum of the live instances take 1.4 s, mostly in that wait). The pages are reused.
-- 2. History partitions are analyzed rarely: after 100,000 rows and then at every 50% of
--    growth, not every 10%. A partition is written once and read by key, so a rough
--    estimate serves the planner, while each analyze of a growing partition (a new one
--    every day, analyzed every few seconds while it is small) took a core for most of a
--    second, which a 2-core host's workers felt at once as queue wait.
-- Storage parameters only: no lock beyond a brief SHARE UPDATE EXCLUSIVE, nothing moved,
-- and the workers of earlier releases run on.
ALTER TABLE orchwf_live_instances SET (vacuum_truncate = false);
ALTER TABLE orchwf_live_steps SET (vacuum_truncate = false);
ALTER TABLE orchwf_ready_steps SET (vacuum_truncate = false);
ALTER TABLE orchwf_running_steps SET (vacuum_truncate = false);
ALTER TABLE orchwf_wait_samples SET (vacuum_truncate = false);
ALTER TABLE orchwf_queues SET (vacuum_truncate = false);
ALTER TABLE orchwf_concurrency_keys SET (vacuum_truncate = false);
ALTER TABLE orchwf_key_slots SET (vacuum_truncate = false);
ALTER TABLE orchwf_key_waits SET (vacuum_truncate = false);

-- The partitions made before this migration; orchwf_ensure_partitions (sql/api/util.sql)
-- makes new ones with the same settings.
DO $$
DECLARE
    v_part regclass;
BEGIN
    FOR v_part IN
        SELECT i.inhrelid::regclass FROM pg_inherits i
        WHERE i.inhparent IN ('orchwf_instance_history'::regclass, 'orchwf_step_history'::regclass,
                              'orchwf_event_history'::regclass)
    LOOP
        EXECUTE format('ALTER TABLE %s SET (autovacuum_analyze_threshold = 100000, '
                       'autovacuum_analyze_scale_factor = 0.5)', v_part);
    END LOOP;
END;
$$;
