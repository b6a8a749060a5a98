-- orchwf 018 down: history partitions vacuumed after 50,000 + 5% of their rows again, those
-- there now and those orchwf_ensure_partitions makes (its text of 017 back by an exact
-- replacement of the lines 018 changed, as 017's down does; a body without them stops the
-- rollback, changing nothing).
DO $$
DECLARE
    v_fn       constant text := 'orchwf_ensure_partitions(timestamp with time zone,timestamp with time zone)';
    v_def      text := pg_get_functiondef(v_fn::regprocedure);
    v_added    constant text := $a$            -- Written once, read by key: vacuum when inserts pile up, in slices of a fixed
            -- size (a share of the partition grew with it, 018), and freeze at once, so
            -- later vacuums skip these pages for good; analyzed rarely: each analyze took
            -- a core from the queue for a second on a small host (015).
            EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS) WITH ('
                           'autovacuum_vacuum_insert_threshold = 50000, autovacuum_vacuum_insert_scale_factor = 0, '
$a$;
    v_original constant text := $a$            -- Written once, read by key: vacuum when inserts pile up, and freeze at once, so
            -- later vacuums skip these pages for good; analyzed rarely: each analyze took
            -- a core from the queue for a second on a small host (015).
            EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS INCLUDING CONSTRAINTS) WITH ('
                           'autovacuum_vacuum_insert_threshold = 50000, autovacuum_vacuum_insert_scale_factor = 0.05, '
$a$;
    v_table    regclass;
BEGIN
    IF position(v_added IN v_def) = 0 THEN
        RAISE EXCEPTION 'orchwf 018 down: % does not hold the lines 018 changed; re-apply the API of the '
                        'release you roll back to (orchwf migrate up with it) after this', v_fn;
    END IF;
    EXECUTE replace(v_def, v_added, v_original);
    FOR v_table IN
        SELECT i.inhrelid::regclass FROM pg_inherits i
        WHERE i.inhparent IN ('orchwf_instance_history'::regclass, 'orchwf_step_history'::regclass,
                              'orchwf_event_history'::regclass)
    LOOP
        EXECUTE format('ALTER TABLE %s SET (autovacuum_vacuum_insert_scale_factor = 0.05)', v_table);
    END LOOP;
END;
$$;
