-- orchwf 001 down: no orchwf table or function is left in the schema.
DROP SEQUENCE IF EXISTS orchwf_lease_token_seq;
DROP TABLE IF EXISTS orchwf_workers;
DROP TABLE IF EXISTS orchwf_workflow_events;
DROP TABLE IF EXISTS orchwf_running_steps;
DROP TABLE IF EXISTS orchwf_ready_steps;
DROP TABLE IF EXISTS orchwf_step_instances;
DROP TABLE IF EXISTS orchwf_workflow_instances;
DROP TABLE IF EXISTS orchwf_workflow_definitions;
-- Every function of sql/api/ (whatever its version), found by name in this schema.
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
             WHERE p.pronamespace = current_schema()::regnamespace AND p.proname LIKE 'orchwf\_%'
    LOOP
        EXECUTE format('DROP FUNCTION %s', f);
    END LOOP;
END;
$$;
