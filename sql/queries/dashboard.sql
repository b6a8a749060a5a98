-- The web dashboard's reads (orchwf/dashboard/). Big JSON documents are cut in the
-- database (%(max_json)s bytes) so a 100 MB output is never shipped to a browser: each
-- document comes as X (if small), X_head (pretty text, cut) and X_size.

-- name: dashboard_overview
-- Active instances are the runtime table; finished ones the per-minute rollup of the
-- last hour (orchwf_stats_minutes, kept by maintenance: never a read of history).
SELECT
  now() AS now,
  (SELECT coalesce(jsonb_object_agg(a.status, a.n), '{{}}') FROM (
      SELECT status, count(*) AS n FROM {schema}.orchwf_live_instances
      WHERE status IN ('pending', 'running', 'retrying') GROUP BY status) a) AS active,
  (SELECT jsonb_build_object('completed', coalesce(sum(m.completed), 0), 'failed', coalesce(sum(m.failed), 0),
                             'cancelled', coalesce(sum(m.cancelled), 0))
   FROM {schema}.orchwf_stats_minutes m
   WHERE m.minute >= date_trunc('minute', now() - %(hour)s * interval '1 second', 'UTC')) AS last_hour,
  (SELECT jsonb_build_object('completed', coalesce(sum(m.completed), 0), 'failed', coalesce(sum(m.failed), 0),
                             'cancelled', coalesce(sum(m.cancelled), 0))
   FROM {schema}.orchwf_stats_minutes m
   WHERE m.minute >= date_trunc('minute', now() - %(window)s * interval '1 second', 'UTC')) AS last_window,
  -- the span the last window's minutes cover: from the start of its first minute to now
  extract(epoch FROM now() - date_trunc('minute', now() - %(window)s * interval '1 second', 'UTC'))::float8
    AS window_span,
  -- Queues with ready steps, and the queues an operator has set something on (paused).
  (SELECT coalesce(jsonb_agg(jsonb_build_object(
        'queue', coalesce(q.queue, c.name), 'ready', coalesce(q.ready, 0),
        'oldest_age', extract(epoch FROM now() - q.oldest_ready_at)::float8,
        'paused', coalesce(c.paused, false), 'rate_per_second', c.rate_per_second,
        'burst', c.burst) ORDER BY coalesce(q.queue, c.name)), '[]')
   FROM {schema}.orchwf_queue_stats(%(cap)s) q
   FULL JOIN {schema}.orchwf_queues c ON c.name = q.queue) AS queues,
  (SELECT count(*) FROM {schema}.orchwf_running_steps r
   JOIN {schema}.orchwf_live_steps s
     ON s.id = r.step_inst_id AND s.lease_token = r.lease_token AND s.status = 'running') AS running_steps,
  (SELECT count(*) FROM {schema}.orchwf_live_steps WHERE run_after IS NOT NULL) AS scheduled_steps,
  (SELECT count(*) FROM {schema}.orchwf_workers
   WHERE role = 'worker' AND heartbeat_at > now() - %(live)s * interval '1 second') AS live_workers

-- name: dashboard_trend
-- The overview's charts: one row per minute of the last %(minutes)s (the rollup's rows;
-- a minute without one, before the first rollup or in an outage, is absent).
SELECT m.minute, m.completed, m.failed, m.cancelled, m.started, m.wait_p50_ms, m.wait_p99_ms, m.closed
FROM {schema}.orchwf_stats_minutes m
WHERE m.minute >= date_trunc('minute', now(), 'UTC') - %(minutes)s * interval '1 minute'
ORDER BY m.minute

-- name: dashboard_backlog_trend
-- Each queue's backlog per minute over the same span (the rollup's samples).
SELECT q.minute, q.queue, q.ready
FROM {schema}.orchwf_queue_minutes q
WHERE q.minute >= date_trunc('minute', now(), 'UTC') - %(minutes)s * interval '1 minute'
ORDER BY q.minute, q.queue

-- name: dashboard_schedules
-- The overview's schedules (a small table): the soonest first.
SELECT name, workflow_id, cron, timezone, paused, next_run_at, last_run_at, last_instance_id::text AS last_instance_id,
       last_error, extract(epoch FROM next_run_at - now())::float8 AS next_in
FROM {schema}.orchwf_schedules
ORDER BY paused, next_run_at, name
LIMIT %(limit)s

-- name: dashboard_list
-- {where} is built from db/queries.py's constant filter columns; values are parameters.
-- Live and finished apart, each newest first and cut at the page, then merged (as the
-- store's list_workflows): history's partitions are read newest first, no further than needed.
SELECT id::text AS id, workflow_id, status, queue, priority, run_mode, created_at, started_at,
       completed_at, left(error, 300) AS error, retry_count, trace_id, correlation_id, business_id
FROM ((SELECT id, workflow_id, status, queue, priority, run_mode, created_at, started_at, completed_at, error,
               retry_count, trace_id, correlation_id, business_id
       FROM {schema}.orchwf_live_instances {where}
       ORDER BY created_at DESC, id DESC LIMIT %(limit)s::bigint + %(offset)s::bigint)
      UNION ALL
      (SELECT id, workflow_id, status, queue, priority, run_mode, created_at, started_at, completed_at, error,
               retry_count, trace_id, correlation_id, business_id
       FROM {schema}.orchwf_instance_history {where}
       ORDER BY created_at DESC, id DESC LIMIT %(limit)s::bigint + %(offset)s::bigint)) i
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s OFFSET %(offset)s

-- name: dashboard_count
SELECT count(*) AS n FROM (SELECT 1 FROM {schema}.orchwf_workflow_instances {where} LIMIT %(cap)s) c

-- name: dashboard_workflow_ids
SELECT workflow_id FROM {schema}.orchwf_workflow_definitions ORDER BY workflow_id LIMIT 500

-- name: dashboard_instance
SELECT i.id::text AS id, i.workflow_id, i.status, i.queue, i.priority, i.run_mode, i.created_at,
       i.started_at, i.completed_at, left(i.error, %(max_error)s) AS error, i.retry_count,
       i.trace_id, i.correlation_id, i.business_id, i.idempotency_key, i.steps_remaining,
       CASE WHEN pg_column_size(i.input) <= %(max_json)s THEN i.input END AS input,
       CASE WHEN pg_column_size(i.input) > %(max_json)s THEN left(jsonb_pretty(i.input), %(max_json)s) END AS input_head,
       pg_column_size(i.input) AS input_size,
       CASE WHEN pg_column_size(i.output) <= %(max_json)s THEN i.output END AS output,
       CASE WHEN pg_column_size(i.output) > %(max_json)s THEN left(jsonb_pretty(i.output), %(max_json)s) END AS output_head,
       pg_column_size(i.output) AS output_size,
       CASE WHEN pg_column_size(i.metadata) <= %(max_json)s THEN i.metadata END AS metadata,
       CASE WHEN pg_column_size(i.metadata) > %(max_json)s THEN left(jsonb_pretty(i.metadata), %(max_json)s) END AS metadata_head,
       pg_column_size(i.metadata) AS metadata_size,
       d.name AS workflow_name,
       (SELECT jsonb_object_agg(s->>'id', s->'dependencies')
        FROM jsonb_array_elements(d.definition->'steps') s) AS definition_deps
FROM {schema}.orchwf_workflow_instances i
LEFT JOIN {schema}.orchwf_workflow_definitions d ON d.workflow_id = i.workflow_id
WHERE i.id = %(id)s AND i.created_at = {schema}.orchwf_instance_created_at(%(id)s)

-- name: dashboard_steps
SELECT s.id::text AS id, s.step_id, s.status, s.attempts, s.max_attempts, s.retry_count, s.crashes,
       s.required, s.duration_ms, s.started_at, s.completed_at, s.last_retry_at, s.run_after,
       s.lease_owner, s.lease_expires_at, s.dependencies, s.execution_order,
       left(s.error, %(max_error)s) AS error,
       CASE WHEN pg_column_size(s.input) <= %(max_json)s THEN s.input END AS input,
       CASE WHEN pg_column_size(s.input) > %(max_json)s THEN left(jsonb_pretty(s.input), %(max_json)s) END AS input_head,
       pg_column_size(s.input) AS input_size,
       CASE WHEN pg_column_size(s.output) <= %(max_json)s THEN s.output END AS output,
       CASE WHEN pg_column_size(s.output) > %(max_json)s THEN left(jsonb_pretty(s.output), %(max_json)s) END AS output_head,
       pg_column_size(s.output) AS output_size, s.wait_signal, s.delay_seconds
FROM (SELECT id, step_id, workflow_inst_id, status, input, output, started_at, completed_at, error, retry_count,
             last_retry_at, duration_ms, execution_order, priority, attempts, crashes, max_attempts,
             timeout_seconds, required, crash_counts_as_attempt, has_compensator, dependencies, dependents,
             pending_deps, run_after, lease_owner, lease_token, lease_expires_at, deadline_at, created_at, updated_at,
             wait_signal, delay_seconds
      FROM {schema}.orchwf_live_steps WHERE workflow_inst_id = %(id)s
      UNION ALL
      SELECT id, step_id, workflow_inst_id, status, input, output, started_at, completed_at, error, retry_count,
             last_retry_at, duration_ms, execution_order, priority, attempts, crashes, max_attempts,
             timeout_seconds, required, crash_counts_as_attempt, has_compensator, dependencies, dependents,
             pending_deps, run_after, lease_owner, lease_token, lease_expires_at, deadline_at, created_at, updated_at,
             NULL::text, 0::float8
      FROM {schema}.orchwf_step_history
      WHERE workflow_inst_id = %(id)s AND instance_created_at = {schema}.orchwf_instance_created_at(%(id)s)) s
ORDER BY s.execution_order, s.step_id

-- name: dashboard_events
SELECT * FROM (
    SELECT e.seq, e.step_inst_id::text AS step_inst_id, e.event_type, e."timestamp" AS at,
           CASE WHEN pg_column_size(e.event_data) <= %(max_json)s THEN e.event_data END AS data,
           CASE WHEN pg_column_size(e.event_data) > %(max_json)s
                THEN left(jsonb_pretty(e.event_data), %(max_json)s) END AS data_head,
           pg_column_size(e.event_data) AS data_size
    FROM {schema}.orchwf_event_history e
    WHERE e.workflow_inst_id = %(id)s AND e.instance_created_at = {schema}.orchwf_instance_created_at(%(id)s)
    ORDER BY e."timestamp" DESC, e.seq DESC
    LIMIT %(max_events)s) newest
ORDER BY at, seq

-- name: dashboard_event_count
SELECT count(*) AS n FROM {schema}.orchwf_event_history
WHERE workflow_inst_id = %(id)s AND instance_created_at = {schema}.orchwf_instance_created_at(%(id)s)

-- name: dashboard_claims
SELECT s.lease_owner, s.workflow_inst_id::text AS instance_id, i.workflow_id, s.step_id, s.attempts,
       s.started_at, extract(epoch FROM s.lease_expires_at - now())::float8 AS lease_expires_in
FROM {schema}.orchwf_running_steps r
JOIN {schema}.orchwf_live_steps s ON s.id = r.step_inst_id AND s.lease_token = r.lease_token
                                 AND s.status = 'running'
JOIN {schema}.orchwf_live_instances i ON i.id = s.workflow_inst_id
ORDER BY s.lease_owner, s.lease_expires_at
LIMIT %(max_claims)s

-- name: snapshot
-- Several reads that must see one state (an instance, its steps and its events).
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY
