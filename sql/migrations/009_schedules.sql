-- orchwf 009: cron schedules (issue 15): one table, read and written by the daemon's
-- cron service and the Client. Workers of earlier releases ignore it: only the new
-- release's supervisors fire schedules (docs/schedules.md, "Rolling deploys").

-- Cron schedules (docs/schedules.md). The daemon's cron service (maintenance/cron.py)
-- starts an instance at each tick, with the idempotency key "cron:<name>:<tick>", in the
-- transaction that moves next_run_at on: one instance per tick across every host.
-- Times are instants; the expression is evaluated in the schedule's time zone.
CREATE TABLE orchwf_schedules (
    name             text PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 255),
    workflow_id      text NOT NULL,
    cron             text NOT NULL,
    timezone         text NOT NULL DEFAULT 'UTC',
    input            jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(input) = 'object'),
    misfire          text NOT NULL DEFAULT 'once' CHECK (misfire IN ('skip', 'once', 'all')),
    -- 'definition': WorkflowBuilder.with_schedule, kept in step with the registered
    -- definition; 'client': Client.add_schedule or the CLI.
    source           text NOT NULL DEFAULT 'client' CHECK (source IN ('client', 'definition')),
    paused           boolean NOT NULL DEFAULT false,
    next_run_at      timestamptz NOT NULL,
    last_run_at      timestamptz,                 -- the last tick that started an instance
    last_instance_id uuid,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
-- The cron service's question: which schedules are due.
CREATE INDEX orchwf_schedules_due_idx ON orchwf_schedules (next_run_at) WHERE NOT paused;

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
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON orchwf_schedules TO %I', v_role);
    END LOOP;
END;
$$;
