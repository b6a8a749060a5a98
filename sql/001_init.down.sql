DROP SEQUENCE IF EXISTS orchwf_lease_token_seq;
DROP TABLE IF EXISTS orchwf_workers;
DROP TABLE IF EXISTS orchwf_workflow_events;
DROP TABLE IF EXISTS orchwf_ready_steps;
DROP TABLE IF EXISTS orchwf_step_instances;
DROP TABLE IF EXISTS orchwf_workflow_instances;
DROP TABLE IF EXISTS orchwf_workflow_definitions;
