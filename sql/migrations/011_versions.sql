-- orchwf 011: versioned definitions (issue 16). A ready step carries the version of its
-- instance's definition, and a worker claims only the versions its code has (it lists
-- them in orchwf_workers.versions and passes them to the claim): during a rolling deploy
-- each instance runs only the code it started with. Constant defaults: no rewrite.
ALTER TABLE orchwf_ready_steps ADD COLUMN definition_hash text;   -- NULL: any version
ALTER TABLE orchwf_workers ADD COLUMN versions text[] NOT NULL DEFAULT '{}';
-- Instances by the version of their definition: who waits for a version no worker has
-- (orchwf stats, the metrics), a probe per registered version, never a scan.
CREATE INDEX orchwf_li_version_idx ON orchwf_live_instances (definition_hash, created_at);

-- Every version of every definition ever registered (the current one is in
-- orchwf_workflow_definitions): `orchwf workflows` lists them with their instances.
CREATE TABLE orchwf_workflow_versions (
    workflow_id        text NOT NULL,
    version_hash       text NOT NULL,
    version            text NOT NULL,
    first_registered_at timestamptz NOT NULL DEFAULT now(),
    last_registered_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, version_hash)
);
INSERT INTO orchwf_workflow_versions (workflow_id, version_hash, version, first_registered_at, last_registered_at)
SELECT workflow_id, version_hash, version, registered_at, updated_at FROM orchwf_workflow_definitions;

-- Roles that run the daemon on an existing install (those that may insert into the ready
-- queue) get the new tables' privileges, so a least-privilege runtime role keeps working
-- after this migration (docs/reliability.md, "Least privilege").
DO $$
DECLARE
    v_role name;
BEGIN
    FOR v_role IN
        SELECT DISTINCT r.rolname FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
        JOIN pg_roles r ON r.oid = a.grantee
        WHERE c.oid = 'orchwf_ready_steps'::regclass AND a.privilege_type = 'INSERT' AND a.grantee <> c.relowner
    LOOP
        EXECUTE format('GRANT SELECT, INSERT, UPDATE ON orchwf_workflow_versions TO %I', v_role);
    END LOOP;
END;
$$;
