-- orchwf 015 down: vacuum may truncate the runtime tables again, history partitions are
-- analyzed at the server's thresholds, and
-- orchwf_ensure_partitions makes them so (its text of release 4 back by an exact
-- replacement of the lines 015 changed, as 012's down does; a body without them stops the
-- rollback, changing nothing).
DO $$
DECLARE
    v_fn    constant text := 'orchwf_ensure_partitions(timestamp with time zone,timestamp with time zone)';
    v_def   text := pg_get_functiondef(v_fn::regprocedure);
    v_added constant text := $a$            -- Written once, read by key: vacuum when inserts pile up, and freeze at once, so
            -- later vacuums skip these pages for good; analyzed rarely: each analyze took
            -- a core from the queue for a second on a small host (015).
            EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS) WITH ('
                           'autovacuum_vacuum_insert_threshold = 50000, autovacuum_vacuum_insert_scale_factor = 0.05, '
                           'autovacuum_freeze_min_age = 0, autovacuum_vacuum_cost_delay = 0, '
                           'autovacuum_analyze_threshold = 100000, autovacuum_analyze_scale_factor = 0.5)',
$a$;
    v_original constant text := $a$            -- Written once, read by key: vacuum when inserts pile up, and freeze at once, so
            -- later vacuums skip these pages for good.
            EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS) WITH ('
                           'autovacuum_vacuum_insert_threshold = 50000, autovacuum_vacuum_insert_scale_factor = 0.05, '
                           'autovacuum_freeze_min_age = 0, autovacuum_vacuum_cost_delay = 0)',
$a$;
    v_part regclass;
BEGIN
    IF position(v_added IN v_def) = 0 THEN
        RAISE EXCEPTION 'orchwf 015 down: % does not hold the lines 015 changed; re-apply the API of the '
                        'release you roll back to (orchwf migrate up with it) after this', v_fn;
    END IF;
    EXECUTE replace(v_def, v_added, v_original);
    FOR v_part IN
        SELECT i.inhrelid::regclass FROM pg_inherits i
        WHERE i.inhparent IN ('orchwf_instance_history'::regclass, 'orchwf_step_history'::regclass,
                              'orchwf_event_history'::regclass)
    LOOP
        EXECUTE format('ALTER TABLE %s RESET (autovacuum_analyze_threshold, autovacuum_analyze_scale_factor)',
                       v_part);
    END LOOP;
END;
$$;

ALTER TABLE orchwf_live_instances RESET (vacuum_truncate);
ALTER TABLE orchwf_live_steps RESET (vacuum_truncate);
ALTER TABLE orchwf_ready_steps RESET (vacuum_truncate);
ALTER TABLE orchwf_running_steps RESET (vacuum_truncate);
ALTER TABLE orchwf_wait_samples RESET (vacuum_truncate);
ALTER TABLE orchwf_queues RESET (vacuum_truncate);
ALTER TABLE orchwf_concurrency_keys RESET (vacuum_truncate);
ALTER TABLE orchwf_key_slots RESET (vacuum_truncate);
ALTER TABLE orchwf_key_waits RESET (vacuum_truncate);
