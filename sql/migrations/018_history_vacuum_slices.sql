-- orchwf 018: a history partition is vacuumed in slices of a fixed size, not of a share of
-- the partition (docs/benchmarks.md, "The soak's late slow seconds: history's vacuums grow
-- with the day's partition").
--
-- Since 015 a partition was vacuumed when its new rows passed 50,000 + 5% of its rows, so
-- each vacuum processed 5% of what the partition held: the later in a day (or a range of
-- another interval), the bigger each one. In a 30-minute soak at 4,000 workflows/s the
-- longest grew from 0.11 to 0.54 s of a core, 13 of the soak's 22 slow seconds sat on one,
-- and by the end of a day a vacuum would take a core for seconds. With a scale factor of
-- 0 every vacuum takes the 50,000-odd rows inserted since the last (about what a
-- naptime brings): the same total work, in slices of a constant size.
--
-- orchwf_ensure_partitions (sql/api/util.sql) makes new partitions so; this sets it on
-- the partitions there now. Storage parameters only: a SHARE UPDATE EXCLUSIVE lock on
-- each partition for a moment, nothing rewritten, and the workers of earlier releases
-- run on.
DO $$
DECLARE
    v_table regclass;
BEGIN
    FOR v_table IN
        SELECT i.inhrelid::regclass FROM pg_inherits i
        WHERE i.inhparent IN ('orchwf_instance_history'::regclass, 'orchwf_step_history'::regclass,
                              'orchwf_event_history'::regclass)
    LOOP
        EXECUTE format('ALTER TABLE %s SET (autovacuum_vacuum_insert_scale_factor = 0)', v_table);
    END LOOP;
END;
$$;
