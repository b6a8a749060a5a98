-- orchwf 013 down: no concurrency keys. A rollback does not re-apply the API: the
-- functions of sql/api/keys.sql and the admission trigger go here, and the bodies that
-- name the new columns (enqueue, finish, promote, archive, restart) get their text of
-- release 4 back by an exact replacement of each line 013's API added (as 012's down
-- does); a body that does not hold the expected text stops the rollback, changing nothing.
-- A step that waited for a slot is made ready first: nothing is left behind.

INSERT INTO orchwf_ready_steps (step_inst_id, workflow_inst_id, workflow_id, queue, priority, definition_hash)
SELECT s.id, i.id, i.workflow_id, i.queue, s.priority + i.priority, i.definition_hash
FROM orchwf_key_waits w
CROSS JOIN LATERAL unnest(w.step_ids) AS u(id)
JOIN orchwf_live_steps s ON s.id = u.id
JOIN orchwf_live_instances i ON i.id = s.workflow_inst_id
WHERE s.status IN ('pending', 'retrying') AND i.status IN ('pending', 'running')
ON CONFLICT DO NOTHING;

DROP TRIGGER IF EXISTS orchwf_ready_steps_admit ON orchwf_ready_steps;
DROP FUNCTION IF EXISTS orchwf_admit_ready();
DROP FUNCTION IF EXISTS orchwf_key_stats(integer);
DROP FUNCTION IF EXISTS orchwf_release_instance_slots(uuid[], boolean);
DROP FUNCTION IF EXISTS orchwf_release_slots(uuid[]);
DROP FUNCTION IF EXISTS orchwf_admit_waiting(text[]);
DROP FUNCTION IF EXISTS orchwf_lock_keys(text[]);
DROP FUNCTION IF EXISTS orchwf_ready_key(text, text[], text);
DROP FUNCTION IF EXISTS orchwf_render_key(text, jsonb, text);
DROP TABLE orchwf_key_waits;
DROP TABLE orchwf_key_slots;
DROP TABLE orchwf_concurrency_keys;
ALTER TABLE orchwf_ready_steps DROP COLUMN concurrency_key;
ALTER TABLE orchwf_live_instances DROP COLUMN concurrency_keys, DROP COLUMN concurrency_limit,
    DROP COLUMN concurrency_key;
ALTER TABLE orchwf_live_steps DROP COLUMN concurrency_limit, DROP COLUMN concurrency_key;
