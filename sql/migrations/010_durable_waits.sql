-- orchwf 010: durable waits (issue 16): delays, signals and child workflows. A step with a delay (StepBuilder.with_delay,
-- orchwf.sleep_step) waits in run_after once its dependencies complete, and the scheduler
-- makes it ready when due. A step that waits for a signal (orchwf.wait_for_signal) is
-- made ready by the signal (orchwf_signal), or by its timeout through run_after. Neither
-- holds a slot, a lease or a connection while it waits.
-- Columns of the runtime table only (history keeps neither), with constant defaults: no
-- rewrite, but the CHECK and the index read the runtime tables once under their lock
-- (the work in flight, never history). Workers of release 3 run on: the functions they
-- call are sql/api's.
ALTER TABLE orchwf_live_steps
    ADD COLUMN delay_seconds double precision NOT NULL DEFAULT 0 CHECK (delay_seconds >= 0),
    ADD COLUMN wait_signal   text,
    ADD COLUMN wait_timeout  double precision;

-- The children of an instance (child_workflow_step), to cancel them with it.
CREATE INDEX orchwf_li_parent_idx ON orchwf_live_instances ((metadata->>'orchwf_parent'))
    WHERE metadata ? 'orchwf_parent';

-- Signals (Client.signal, orchwf_signal): kept until a step of the instance that waits
-- for that name consumes one, in the transaction that completes it (exactly once), and
-- deleted with their instance when it finishes.
CREATE TABLE orchwf_signals (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow_inst_id uuid NOT NULL,
    name             text NOT NULL,
    payload          jsonb NOT NULL DEFAULT '{}',
    created_at       timestamptz NOT NULL DEFAULT now(),
    consumed_by      uuid,                 -- the step instance that received it
    consumed_at      timestamptz
);
-- A waiting step's question ("is there one for me?"), oldest first; and the cleanup.
CREATE INDEX orchwf_signals_instance_idx ON orchwf_signals (workflow_inst_id, name, id);

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
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON orchwf_signals TO %I', v_role);
    END LOOP;
END;
$$;
