-- The in-process store (orchwf/stores/postgres.py, DBStateManager) and the readers that
-- share it (Client, the CLI). INSERT ... SELECT needs explicit casts: Postgres infers
-- parameter types from the target columns only for VALUES.

-- name: save_workflow
INSERT INTO {schema}.orchwf_workflow_instances (
    id, workflow_id, status, input, output, context, current_step_id, started_at, completed_at, error,
    retry_count, last_retry_at, metadata, trace_id, correlation_id, business_id, priority, queue,
    idempotency_key, run_mode, created_at, updated_at)
VALUES (%(id)s, %(workflow_id)s, %(status)s, %(input)s, %(output)s, %(context)s, %(current_step_id)s,
        %(started_at)s, %(completed_at)s, %(error)s, %(retry_count)s, %(last_retry_at)s, %(metadata)s,
        %(trace_id)s, %(correlation_id)s, %(business_id)s, %(priority)s, %(queue)s, %(idempotency_key)s,
        %(run_mode)s, %(created_at)s, %(updated_at)s)
ON CONFLICT (id) DO UPDATE SET
    workflow_id = EXCLUDED.workflow_id, status = EXCLUDED.status, input = EXCLUDED.input,
    output = EXCLUDED.output, context = EXCLUDED.context, current_step_id = EXCLUDED.current_step_id,
    started_at = EXCLUDED.started_at, completed_at = EXCLUDED.completed_at, error = EXCLUDED.error,
    retry_count = EXCLUDED.retry_count, last_retry_at = EXCLUDED.last_retry_at, metadata = EXCLUDED.metadata,
    trace_id = EXCLUDED.trace_id, correlation_id = EXCLUDED.correlation_id, business_id = EXCLUDED.business_id,
    priority = EXCLUDED.priority, queue = EXCLUDED.queue, idempotency_key = EXCLUDED.idempotency_key,
    run_mode = EXCLUDED.run_mode, created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at

-- name: get_workflow
SELECT id, workflow_id, status, input, output, context, current_step_id, started_at, completed_at, error,
       retry_count, last_retry_at, metadata, trace_id, correlation_id, business_id, priority, queue,
       idempotency_key, run_mode, created_at, updated_at
FROM {schema}.orchwf_workflow_instances WHERE id = %(id)s

-- name: workflow_exists
SELECT 1 FROM {schema}.orchwf_workflow_instances WHERE id = %(id)s

-- name: update_workflow_status
UPDATE {schema}.orchwf_workflow_instances
SET status = %(status)s, completed_at = CASE WHEN %(terminal)s THEN %(now)s ELSE completed_at END,
    updated_at = %(now)s
WHERE id = %(id)s

-- name: update_workflow_output
UPDATE {schema}.orchwf_workflow_instances SET output = %(output)s, updated_at = %(now)s WHERE id = %(id)s

-- name: update_workflow_error
UPDATE {schema}.orchwf_workflow_instances
SET error = %(error)s, status = 'failed', completed_at = %(now)s, updated_at = %(now)s
WHERE id = %(id)s

-- name: list_workflows
-- {where} is built from db/queries.py's constant filter columns; values are parameters.
SELECT id, workflow_id, status, input, output, context, current_step_id, started_at, completed_at, error,
       retry_count, last_retry_at, metadata, trace_id, correlation_id, business_id, priority, queue,
       idempotency_key, run_mode, created_at, updated_at
FROM {schema}.orchwf_workflow_instances {where}
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s OFFSET %(offset)s

-- name: count_workflows
SELECT count(*) AS n FROM {schema}.orchwf_workflow_instances {where}

-- name: save_step
-- The EXISTS guard turns a missing workflow into "0 rows" (WorkflowNotFoundError), and
-- its KEY SHARE lock keeps the instance from being deleted before this commits (what a
-- foreign key would do). created_at is set on insert only (clock_timestamp: insertion
-- order breaks execution_order ties, as in memory).
INSERT INTO {schema}.orchwf_step_instances (
    id, step_id, workflow_inst_id, status, input, output, started_at, completed_at, error, retry_count,
    last_retry_at, duration_ms, execution_order, priority, attempts, created_at, updated_at)
SELECT %(id)s::uuid, %(step_id)s::text, %(workflow_inst_id)s::uuid, %(status)s::text, %(input)s::jsonb,
       %(output)s::jsonb, %(started_at)s::timestamptz, %(completed_at)s::timestamptz, %(error)s::text,
       %(retry_count)s::integer, %(last_retry_at)s::timestamptz, %(duration_ms)s::bigint,
       %(execution_order)s::integer, %(priority)s::integer, %(attempts)s::integer, clock_timestamp(),
       %(now)s::timestamptz
WHERE EXISTS (SELECT 1 FROM {schema}.orchwf_workflow_instances WHERE id = %(workflow_inst_id)s::uuid FOR KEY SHARE)
ON CONFLICT (id) DO UPDATE SET
    step_id = EXCLUDED.step_id, workflow_inst_id = EXCLUDED.workflow_inst_id, status = EXCLUDED.status,
    input = EXCLUDED.input, output = EXCLUDED.output, started_at = EXCLUDED.started_at,
    completed_at = EXCLUDED.completed_at, error = EXCLUDED.error, retry_count = EXCLUDED.retry_count,
    last_retry_at = EXCLUDED.last_retry_at, duration_ms = EXCLUDED.duration_ms,
    execution_order = EXCLUDED.execution_order, priority = EXCLUDED.priority, attempts = EXCLUDED.attempts,
    updated_at = EXCLUDED.updated_at

-- name: get_step
SELECT id, step_id, workflow_inst_id, status, input, output, started_at, completed_at, error, retry_count,
       last_retry_at, duration_ms, execution_order, priority, attempts
FROM {schema}.orchwf_step_instances WHERE id = %(id)s

-- name: step_exists
SELECT 1 FROM {schema}.orchwf_step_instances WHERE id = %(id)s

-- name: workflow_steps
SELECT id, step_id, workflow_inst_id, status, input, output, started_at, completed_at, error, retry_count,
       last_retry_at, duration_ms, execution_order, priority, attempts
FROM {schema}.orchwf_step_instances WHERE workflow_inst_id = %(id)s
ORDER BY execution_order, created_at, id

-- name: update_step_status
UPDATE {schema}.orchwf_step_instances
SET status = %(status)s,
    started_at = CASE WHEN %(running)s THEN coalesce(started_at, %(now)s) ELSE started_at END,
    completed_at = CASE WHEN %(terminal)s THEN %(now)s ELSE completed_at END,
    updated_at = %(now)s
WHERE id = %(id)s

-- name: update_step_output
UPDATE {schema}.orchwf_step_instances SET output = %(output)s, updated_at = %(now)s WHERE id = %(id)s

-- name: update_step_error
UPDATE {schema}.orchwf_step_instances
SET error = %(error)s, status = 'failed', completed_at = %(now)s, updated_at = %(now)s
WHERE id = %(id)s

-- name: save_event
-- Saving the same event twice is a no-op (idempotent for retried writes).
INSERT INTO {schema}.orchwf_workflow_events (id, workflow_inst_id, step_inst_id, event_type, event_data, "timestamp")
SELECT %(id)s::uuid, %(workflow_inst_id)s::uuid, %(step_inst_id)s::uuid, %(event_type)s::text,
       %(event_data)s::jsonb, %(timestamp)s::timestamptz
WHERE EXISTS (SELECT 1 FROM {schema}.orchwf_workflow_instances WHERE id = %(workflow_inst_id)s::uuid)
  AND (%(step_inst_id)s::uuid IS NULL
       OR EXISTS (SELECT 1 FROM {schema}.orchwf_step_instances WHERE id = %(step_inst_id)s::uuid))
ON CONFLICT (id) DO NOTHING

-- name: workflow_events
SELECT id, workflow_inst_id, step_inst_id, event_type, event_data, "timestamp"
FROM {schema}.orchwf_workflow_events WHERE workflow_inst_id = %(id)s
ORDER BY "timestamp", seq
