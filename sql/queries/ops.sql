-- Operators' reads: the CLI (orchwf/cli/), the demo's summary. They stay cheap on a big
-- history: indexes and the small runtime tables, never a scan of finished history
-- (docs/schema.md lists which index serves which).

-- name: step_details
-- What the store's StepInstance does not carry: budgets, lease and schedule.
SELECT id AS step_inst_id, crashes, max_attempts, required, lease_owner, lease_expires_at, run_after,
       extract(epoch FROM lease_expires_at - now())::float8 AS lease_expires_in,
       extract(epoch FROM run_after - now())::float8 AS due_in
FROM {schema}.orchwf_live_steps WHERE workflow_inst_id = %(id)s
UNION ALL
SELECT id AS step_inst_id, crashes, max_attempts, required, NULL, NULL, NULL, NULL, NULL
FROM {schema}.orchwf_step_history
WHERE workflow_inst_id = %(id)s AND instance_created_at = {schema}.orchwf_instance_created_at(%(id)s)

-- name: stats
SELECT
  -- Queues with ready steps, and the queues an operator has set something on (paused).
  (SELECT coalesce(jsonb_agg(jsonb_build_array(coalesce(q.queue, c.name), coalesce(q.ready, 0),
                                               extract(epoch FROM now() - q.oldest_ready_at)::float8,
                                               coalesce(c.paused, false), c.rate_per_second, c.burst)
                             ORDER BY coalesce(q.queue, c.name)), '[]')
   FROM {schema}.orchwf_queue_stats(%(cap)s) q
   FULL JOIN {schema}.orchwf_queues c ON c.name = q.queue) AS queues,
  (SELECT count(*) FROM {schema}.orchwf_running_steps r
   JOIN {schema}.orchwf_live_steps s
     ON s.id = r.step_inst_id AND s.lease_token = r.lease_token AND s.status = 'running') AS running_steps,
  (SELECT count(*) FROM {schema}.orchwf_live_steps WHERE run_after IS NOT NULL) AS scheduled_steps,
  (SELECT count(*) FROM {schema}.orchwf_live_instances WHERE status = 'pending') AS pending,
  (SELECT count(*) FROM {schema}.orchwf_live_instances WHERE status = 'running') AS running,
  (SELECT coalesce(jsonb_object_agg(f.status, f.n), '{{}}') FROM (
      SELECT status, count(*) AS n FROM {schema}.orchwf_instance_history
      WHERE completed_at >= now() - %(window)s * interval '1 second'
      GROUP BY status) f) AS finished,
  (SELECT coalesce(jsonb_object_agg(w.role, w.n), '{{}}') FROM (
      SELECT role, count(*) AS n FROM {schema}.orchwf_workers
      WHERE heartbeat_at > now() - %(live)s * interval '1 second' GROUP BY role) w) AS live_processes

-- name: processes
SELECT w.worker_id, w.role, w.host, w.pid, w.supervisor_id, w.queues, w.workflows, w.concurrency,
       w.started_at, w.heartbeat_at, extract(epoch FROM now() - w.heartbeat_at)::float8 AS heartbeat_age
FROM {schema}.orchwf_workers w
ORDER BY w.host, w.supervisor_id, w.role DESC, w.started_at

-- name: running_claims
-- Running steps are listed in orchwf_running_steps (the step table has no index for
-- them); a row whose token no longer matches its step is stale and skipped.
SELECT r.lease_owner, s.workflow_inst_id, i.workflow_id, s.step_id, s.attempts AS attempt,
       s.started_at, extract(epoch FROM now() - s.updated_at)::float8 AS running_for,
       extract(epoch FROM s.lease_expires_at - now())::float8 AS lease_expires_in
FROM {schema}.orchwf_running_steps r
JOIN {schema}.orchwf_live_steps s ON s.id = r.step_inst_id AND s.lease_token = r.lease_token
                                 AND s.status = 'running'
JOIN {schema}.orchwf_live_instances i ON i.id = s.workflow_inst_id
ORDER BY r.lease_owner, s.lease_expires_at
LIMIT %(limit)s

-- name: instance_outcomes
-- The demo's summary of the instances it enqueued.
SELECT i.status, count(*) AS n FROM {schema}.orchwf_workflow_instances i
WHERE i.id = ANY (%(ids)s) GROUP BY i.status

-- name: instance_step_totals
SELECT count(*) AS finished_steps, coalesce(sum(s.retry_count), 0)::bigint AS retries
FROM {schema}.orchwf_step_instances s
WHERE s.workflow_inst_id = ANY (%(ids)s) AND s.status IN ('completed', 'failed', 'skipped')

-- name: instance_queue_waits
-- Milliseconds from ready (the last dependency's completion, else the enqueue) to start.
SELECT extract(epoch FROM s.started_at - coalesce(p.completed_at, i.created_at)) * 1000 AS wait_ms
FROM {schema}.orchwf_step_instances s
JOIN {schema}.orchwf_workflow_instances i ON i.id = s.workflow_inst_id
LEFT JOIN LATERAL (SELECT max(d.completed_at) AS completed_at FROM {schema}.orchwf_step_instances d
                   WHERE d.workflow_inst_id = s.workflow_inst_id AND d.step_id = ANY (s.dependencies)) p ON true
WHERE s.workflow_inst_id = ANY (%(ids)s) AND s.status = 'completed' AND s.step_id <> '$compensate'

-- name: instance_event_count
SELECT count(*) AS n FROM {schema}.orchwf_workflow_events e
WHERE e.workflow_inst_id = ANY (%(ids)s) AND e.event_type = %(event_type)s

-- name: finished_count
SELECT count(*) AS n FROM {schema}.orchwf_workflow_instances i
WHERE i.id = ANY (%(ids)s) AND i.status IN ('completed', 'failed', 'cancelled')

-- name: database_exists
SELECT 1 FROM pg_database WHERE datname = %(name)s

-- name: create_database
CREATE DATABASE {database}

-- name: unserved_versions
-- Live instances waiting for a version no live worker has (sql/api/ops.sql).
SELECT workflow_id, version_hash, instances, oldest_age FROM {schema}.orchwf_unserved_versions(%(live)s)

-- name: workflow_versions
-- orchwf workflows: every registered version, whether it is the current one, its live
-- instances and the live workers whose code has it.
SELECT v.workflow_id, v.version, v.version_hash, coalesce(d.version_hash = v.version_hash, false) AS current,
       v.first_registered_at, v.last_registered_at, coalesce(l.n, 0) AS live_instances,
       (SELECT count(*) FROM {schema}.orchwf_workers w
        WHERE w.role IN ('worker', 'quarantine') AND w.heartbeat_at > now() - %(live)s * interval '1 second'
          AND v.workflow_id = ANY (w.workflows) AND v.version_hash = ANY (w.versions)) AS workers
FROM {schema}.orchwf_workflow_versions v
LEFT JOIN {schema}.orchwf_workflow_definitions d ON d.workflow_id = v.workflow_id
LEFT JOIN (SELECT i.workflow_id, i.definition_hash, count(*) AS n FROM {schema}.orchwf_live_instances i
           WHERE i.status IN ('pending', 'running') GROUP BY 1, 2) l
       ON l.workflow_id = v.workflow_id AND l.definition_hash = v.version_hash
ORDER BY v.workflow_id, v.first_registered_at
