-- orchwf 004 down: the DDL of 001 again. The functions in place stay those of sql/api/;
-- a database taken further back than the previous release needs that release's code.
DROP INDEX orchwf_rs_suspect_idx;
ALTER TABLE orchwf_ready_steps DROP COLUMN suspect;
DELETE FROM orchwf_workers WHERE role = 'quarantine';
ALTER TABLE orchwf_workers DROP CONSTRAINT orchwf_workers_role_check,
    ADD CONSTRAINT orchwf_workers_role_check CHECK (role IN ('supervisor', 'worker'));

DELETE FROM orchwf_step_instances s
WHERE NOT EXISTS (SELECT 1 FROM orchwf_workflow_instances i WHERE i.id = s.workflow_inst_id);
ALTER TABLE orchwf_step_instances ADD CONSTRAINT orchwf_step_instances_workflow_inst_id_fkey
    FOREIGN KEY (workflow_inst_id) REFERENCES orchwf_workflow_instances (id) ON DELETE CASCADE;

ALTER INDEX orchwf_wi_created_idx RESET (deduplicate_items);
ALTER INDEX orchwf_wi_trace_idx RESET (deduplicate_items);
ALTER INDEX orchwf_wi_correlation_idx RESET (deduplicate_items);
