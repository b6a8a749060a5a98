-- Cron schedules (orchwf/schedules.py, daemon/maintenance/cron.py): every value a parameter.

-- name: db_now
-- The database's clock: every host fires schedules by this one clock, not its own.
SELECT now() AS now

-- name: upsert_schedule
-- Add or replace a schedule by name. Its next run is kept when its timing is unchanged
-- (a supervisor re-registering its definitions must not move or repeat a tick).
INSERT INTO {schema}.orchwf_schedules AS s (name, workflow_id, cron, timezone, input, misfire, source, next_run_at)
VALUES (%(name)s, %(workflow_id)s, %(cron)s, %(timezone)s, %(input)s, %(misfire)s, %(source)s, %(next_run_at)s)
ON CONFLICT (name) DO UPDATE
    SET workflow_id = EXCLUDED.workflow_id, cron = EXCLUDED.cron, timezone = EXCLUDED.timezone,
        input = EXCLUDED.input, misfire = EXCLUDED.misfire, source = EXCLUDED.source,
        next_run_at = CASE WHEN (s.cron, s.timezone) = (EXCLUDED.cron, EXCLUDED.timezone) THEN s.next_run_at
                           ELSE EXCLUDED.next_run_at END,
        updated_at = now()
    WHERE (s.workflow_id, s.cron, s.timezone, s.input, s.misfire, s.source)
          IS DISTINCT FROM (EXCLUDED.workflow_id, EXCLUDED.cron, EXCLUDED.timezone, EXCLUDED.input,
                            EXCLUDED.misfire, EXCLUDED.source)

-- name: forget_definition_schedules
-- The schedules a registered definition no longer has.
DELETE FROM {schema}.orchwf_schedules
WHERE workflow_id = %(workflow_id)s AND source = 'definition' AND name <> ALL (%(keep)s::text[])

-- name: delete_schedule
DELETE FROM {schema}.orchwf_schedules WHERE name = %(name)s RETURNING name

-- name: list_schedules
SELECT name, workflow_id, cron, timezone, input, misfire, source, paused, next_run_at, last_run_at,
       last_instance_id, last_error
FROM {schema}.orchwf_schedules
ORDER BY name
LIMIT %(limit)s

-- name: get_schedule
SELECT name, workflow_id, cron, timezone, input, misfire, source, paused, next_run_at, last_run_at,
       last_instance_id, last_error
FROM {schema}.orchwf_schedules
WHERE name = %(name)s
FOR UPDATE

-- name: set_schedule_paused
-- Pausing keeps the next run; resuming starts from the next tick after now (ticks that
-- passed while paused are skipped, whatever the misfire policy).
UPDATE {schema}.orchwf_schedules
SET paused = %(paused)s, next_run_at = coalesce(%(next_run_at)s, next_run_at), updated_at = now()
WHERE name = %(name)s
RETURNING name

-- name: due_schedules
-- Due at %(now)s (the database's clock), locked: another host skips them (SKIP LOCKED)
-- and finds them moved on once this transaction commits.
SELECT name, workflow_id, cron, timezone, input, misfire, source, paused, next_run_at, last_run_at,
       last_instance_id, last_error
FROM {schema}.orchwf_schedules
WHERE NOT paused AND next_run_at <= %(now)s
ORDER BY next_run_at
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED

-- name: schedule_fired
UPDATE {schema}.orchwf_schedules
SET next_run_at = %(next_run_at)s, last_run_at = coalesce(%(last_run_at)s, last_run_at),
    last_instance_id = coalesce(%(last_instance_id)s, last_instance_id), last_error = %(last_error)s,
    updated_at = now()
WHERE name = %(name)s

-- name: next_schedule_due
SELECT min(next_run_at) AS next_run_at FROM {schema}.orchwf_schedules WHERE NOT paused

-- name: workflow_registered
SELECT EXISTS (SELECT 1 FROM {schema}.orchwf_workflow_definitions WHERE workflow_id = %(workflow_id)s) AS registered
