-- The producer and operator API (orchwf/client.py, the CLI, the dashboard's actions).

-- name: register_workflow
-- Upsert a definition so producers can enqueue it by ID without importing its code (the
-- current version), and record the version (every version ever registered).
WITH seen AS (
    INSERT INTO {schema}.orchwf_workflow_versions (workflow_id, version_hash, version)
    VALUES (%(workflow_id)s, %(version_hash)s, %(version)s)
    ON CONFLICT (workflow_id, version_hash) DO UPDATE SET last_registered_at = now(), version = EXCLUDED.version)
INSERT INTO {schema}.orchwf_workflow_definitions (workflow_id, name, version, version_hash, definition)
VALUES (%(workflow_id)s, %(name)s, %(version)s, %(version_hash)s, %(definition)s)
ON CONFLICT (workflow_id) DO UPDATE SET name = EXCLUDED.name, version = EXCLUDED.version,
    version_hash = EXCLUDED.version_hash, definition = EXCLUDED.definition, updated_at = now()
WHERE orchwf_workflow_definitions.version_hash IS DISTINCT FROM EXCLUDED.version_hash

-- name: enqueue_many
SELECT {schema}.orchwf_enqueue_many(%(workflow_id)b, %(inputs)b::jsonb[], %(metadata)b, %(priority)b::integer,
                                    %(keys)b::text[], %(queue)b::text, %(run_after)b::timestamptz) AS ids

-- name: cancel_workflow
SELECT {schema}.orchwf_cancel_workflow(%(id)s) AS status

-- name: resume_workflow
SELECT {schema}.orchwf_resume_workflow(%(id)s) AS status

-- name: retry_step
SELECT {schema}.orchwf_retry_step(%(id)s, %(step_id)s) AS status

-- name: listen
-- Channels are constants of db/queries.py (LISTEN takes no parameters).
LISTEN {channel}

-- name: watch_instance
-- Client.wait, on its LISTEN connection: orchwf_done is sent for this instance from now
-- on (sql/api/finish.sql, orchwf_notify_done). Held until the connection closes.
SELECT {schema}.orchwf_watch_instance(%(id)s::uuid)

-- name: send_signals
-- orchwf_signal_many (sql/api/signals.sql) in the caller's transaction: the ids in order.
SELECT m.signal_id FROM {schema}.orchwf_signal_many(%(instance_ids)s::uuid[], %(names)s::text[],
                                                    %(payloads)s::jsonb[]) m
-- name: pause_queue
SELECT {schema}.orchwf_pause_queue(%(queue)s) AS changed

-- name: resume_queue
SELECT {schema}.orchwf_resume_queue(%(queue)s) AS changed

-- name: set_queue_rate_limit
SELECT {schema}.orchwf_set_queue_rate_limit(%(queue)s, %(per_second)s::float8, %(burst)s::integer)

-- name: queue_controls
-- Queues an operator has set something on (orchwf_queues: a few rows).
SELECT c.name, c.paused, c.paused_at, c.rate_per_second, c.burst
FROM {schema}.orchwf_queues c
ORDER BY c.name

-- name: concurrency_keys
-- Concurrency keys with slots held or holders waiting, the busiest first (sql/api/keys.sql).
SELECT k.key, k.concurrency_limit, k.held, k.waiting, k.updated_at
FROM {schema}.orchwf_key_stats(%(limit)s) k

-- name: child_workflows_of
-- The workflows a registered definition's child_workflow_steps start (client.py's cycle check).
SELECT DISTINCT x.child #>> '{{}}' AS child
FROM {schema}.orchwf_workflow_definitions d,
     jsonb_path_query(d.definition, '$.steps[*].child_workflow') AS x(child)
WHERE d.workflow_id = %(workflow_id)s AND jsonb_typeof(x.child) = 'string'
