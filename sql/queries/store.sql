-- The in-process store (orchwf/stores/postgres.py, DBStateManager) and the readers that
-- share it (Client, the CLI). Writes go through sql/api/store.sql, which keeps the
-- runtime/history split; reads find an instance's history partition from its ID.

-- name: save_workflow
SELECT {schema}.orchwf_store_save_instance(
    %(id)s, %(workflow_id)s, %(status)s, %(input)s, %(output)s, %(context)s, %(current_step_id)s,
    %(started_at)s, %(completed_at)s, %(error)s, %(retry_count)s, %(last_retry_at)s, %(metadata)s,
    %(trace_id)s, %(correlation_id)s, %(business_id)s, %(priority)s, %(queue)s, %(idempotency_key)s,
    %(run_mode)s, %(created_at)s, %(updated_at)s)

-- name: get_workflow
-- Live first, then its history partition (created_at from the ID, or its index).
SELECT id, workflow_id, status, input, output, context, current_step_id, started_at, completed_at, error,
       retry_count, last_retry_at, metadata, trace_id, correlation_id, business_id, priority, queue,
       idempotency_key, run_mode, created_at, updated_at
FROM {schema}.orchwf_workflow_instances
WHERE id = %(id)s AND created_at = {schema}.orchwf_instance_created_at(%(id)s)

-- name: workflow_exists
SELECT {schema}.orchwf_instance_created_at(%(id)s) IS NOT NULL AS found

-- name: update_workflow
SELECT {schema}.orchwf_store_update_instance(%(id)s, %(status)s, %(output)s, %(error)s, %(now)s) AS changed

-- name: list_workflows
-- {where} is built from db/queries.py's constant filter columns; values are parameters.
-- Live and finished apart, each newest first and cut at the page, then merged: history's
-- partitions are read newest first and no further than the page needs. (Through the view,
-- the planner merged every partition at once and read each of them.)
SELECT id, workflow_id, status, input, output, context, current_step_id, started_at, completed_at, error,
       retry_count, last_retry_at, metadata, trace_id, correlation_id, business_id, priority, queue,
       idempotency_key, run_mode, created_at, updated_at
FROM ((SELECT id, workflow_id, status, input, output, context, current_step_id, started_at, completed_at,
               error, retry_count, last_retry_at, metadata, trace_id, correlation_id, business_id, priority,
               queue, idempotency_key, run_mode, created_at, updated_at
       FROM {schema}.orchwf_live_instances {where}
       ORDER BY created_at DESC, id DESC LIMIT %(limit)s::bigint + %(offset)s::bigint)
      UNION ALL
      (SELECT id, workflow_id, status, input, output, context, current_step_id, started_at, completed_at,
               error, retry_count, last_retry_at, metadata, trace_id, correlation_id, business_id, priority,
               queue, idempotency_key, run_mode, created_at, updated_at
       FROM {schema}.orchwf_instance_history {where}
       ORDER BY created_at DESC, id DESC LIMIT %(limit)s::bigint + %(offset)s::bigint)) i
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s OFFSET %(offset)s

-- name: count_workflows
SELECT count(*) AS n FROM {schema}.orchwf_workflow_instances {where}

-- name: save_step
SELECT {schema}.orchwf_store_save_step(
    %(id)s, %(step_id)s, %(workflow_inst_id)s, %(status)s, %(input)s, %(output)s, %(started_at)s,
    %(completed_at)s, %(error)s, %(retry_count)s, %(last_retry_at)s, %(duration_ms)s, %(execution_order)s,
    %(priority)s, %(attempts)s, %(now)s) AS saved

-- name: get_step
SELECT id, step_id, workflow_inst_id, status, input, output, started_at, completed_at, error, retry_count,
       last_retry_at, duration_ms, execution_order, priority, attempts
FROM {schema}.orchwf_step_instances WHERE id = %(id)s
LIMIT 1

-- name: step_exists
SELECT 1 FROM {schema}.orchwf_step_instances WHERE id = %(id)s LIMIT 1

-- name: workflow_steps
SELECT id, step_id, workflow_inst_id, status, input, output, started_at, completed_at, error, retry_count,
       last_retry_at, duration_ms, execution_order, priority, attempts, created_at
FROM {schema}.orchwf_live_steps WHERE workflow_inst_id = %(id)s
UNION ALL
SELECT id, step_id, workflow_inst_id, status, input, output, started_at, completed_at, error, retry_count,
       last_retry_at, duration_ms, execution_order, priority, attempts, created_at
FROM {schema}.orchwf_step_history
WHERE workflow_inst_id = %(id)s AND instance_created_at = {schema}.orchwf_instance_created_at(%(id)s)
ORDER BY execution_order, created_at, id

-- name: update_step
SELECT {schema}.orchwf_store_update_step(%(id)s, %(status)s, %(output)s, %(error)s, %(now)s) AS changed

-- name: save_event
SELECT {schema}.orchwf_store_save_event(%(id)s, %(workflow_inst_id)s, %(step_inst_id)s, %(event_type)s,
                                        %(event_data)s, %(timestamp)s) AS saved

-- name: workflow_events
SELECT id, workflow_inst_id, step_inst_id, event_type, event_data, "timestamp"
FROM {schema}.orchwf_event_history
WHERE workflow_inst_id = %(id)s AND instance_created_at = {schema}.orchwf_instance_created_at(%(id)s)
ORDER BY "timestamp", seq
