-- orchwf 017 down: history's columns at the server's statistics target again, and
-- orchwf_ensure_partitions without the lines that copy the parent's (its text of 016
-- back by an exact replacement, as 015's down does; a body without them stops the
-- rollback, changing nothing).
DO $$
DECLARE
    v_fn    constant text := 'orchwf_ensure_partitions(timestamp with time zone,timestamp with time zone)';
    v_def   text := pg_get_functiondef(v_fn::regprocedure);
    v_added constant text := $a$            -- The parent's statistics targets: a small sample, none of the documents (017);
            -- a table made by LIKE starts from the server's.
            SELECT string_agg(format('ALTER COLUMN %I SET STATISTICS %s', a.attname, a.attstattarget), ', ')
            INTO v_targets
            FROM pg_attribute a
            WHERE a.attrelid = v_parent::regclass AND a.attnum > 0 AND NOT a.attisdropped AND a.attstattarget >= 0;
            IF v_targets IS NOT NULL THEN
                EXECUTE format('ALTER TABLE %I ', v_parent || '_' || v_suffix) || v_targets;
            END IF;
$a$;
    v_declared constant text := $a$    v_parent   text;
    v_targets  text;
$a$;
    v_table regclass;
    v_reset text;
BEGIN
    IF position(v_added IN v_def) = 0 OR position(v_declared IN v_def) = 0 THEN
        RAISE EXCEPTION 'orchwf 017 down: % does not hold the lines 017 changed; re-apply the API of the '
                        'release you roll back to (orchwf migrate up with it) after this', v_fn;
    END IF;
    EXECUTE replace(replace(v_def, v_added, ''), v_declared, $a$    v_parent   text;
$a$);
    -- Every column of the three tables, their partitions with them (SET STATISTICS recurses).
    FOREACH v_table IN ARRAY ARRAY['orchwf_instance_history', 'orchwf_step_history',
                                   'orchwf_event_history']::regclass[] LOOP
        SELECT string_agg(format('ALTER COLUMN %I SET STATISTICS -1', a.attname), ', ' ORDER BY a.attnum)
        INTO v_reset
        FROM pg_attribute a
        WHERE a.attrelid = v_table AND a.attnum > 0 AND NOT a.attisdropped;
        EXECUTE format('ALTER TABLE %s ', v_table) || v_reset;
    END LOOP;
END;
$$;
