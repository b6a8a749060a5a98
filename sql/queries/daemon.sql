-- The daemon's statements: worker processes and the supervisor (orchwf/daemon/).
-- Hot statements use the binary protocol (%(name)b): arrays of UUIDs, integers and JSON
-- cost half as much to send as text, and IDs come back as UUIDs, ready to send again.

-- name: register_process
-- A supervisor, worker or quarantine process, for operators and the release of a dead
-- process's claims. A worker that reconnects only refreshes its heartbeat.
INSERT INTO {schema}.orchwf_workers (worker_id, supervisor_id, host, pid, role, queues, workflows, concurrency)
VALUES (%(worker_id)s, %(supervisor_id)s, %(host)s, %(pid)s, %(role)s, %(queues)s, %(workflows)s, %(concurrency)s)
ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = now()

-- name: unregister_process
DELETE FROM {schema}.orchwf_workers WHERE worker_id = %(worker_id)s

-- name: forget_silent_processes
-- Rows of processes gone without unregistering (kill -9, a lost host).
DELETE FROM {schema}.orchwf_workers WHERE heartbeat_at < now() - %(older_than)s * interval '1 second'

-- name: release_orphans
-- After a reconnect: claims held in the database that the worker does not know about
-- (their reply was lost with the connection) go back to the queue.
SELECT {schema}.orchwf_release_orphans(%(worker_id)s, %(keep)s) AS released

-- name: claim_steps
SELECT step_inst_id, workflow_inst_id, workflow_id, step_id, lease_token, attempt, retry_count,
       workflow_input, metadata, trace_id, completed, step_input
FROM {schema}.orchwf_claim_steps(%(worker_id)b, %(queues)b, %(workflows)b, %(limit)b, %(lease_seconds)b,
                                 %(suspects)b)

-- name: finish_steps
SELECT step_inst_id, accepted
FROM {schema}.orchwf_finish_steps(%(ids)b, %(tokens)b, %(outcomes)b, %(outputs)b::jsonb[], %(errors)b,
                                  %(durations)b, %(delays)b, %(inputs)b::jsonb[])

-- name: finish_and_claim
-- Rows with accepted NOT NULL answer the results; the others are claimed steps.
SELECT step_inst_id, accepted, workflow_inst_id, workflow_id, step_id, lease_token, attempt, retry_count,
       workflow_input, metadata, trace_id, completed, step_input
FROM {schema}.orchwf_finish_and_claim(%(ids)b, %(tokens)b, %(outcomes)b, %(outputs)b::jsonb[], %(errors)b,
                                      %(durations)b, %(delays)b, %(inputs)b::jsonb[], %(worker_id)b,
                                      %(queues)b, %(workflows)b, %(limit)b, %(lease_seconds)b, %(suspects)b)

-- name: heartbeat
-- Renews the leases; returns the steps whose lease was lost (rescued, cancelled).
SELECT lost FROM {schema}.orchwf_heartbeat(%(worker_id)s, %(ids)s, %(tokens)s, %(lease_seconds)s) AS lost

-- name: steps_to_compensate
-- Completed steps with a compensator, not compensated since they last completed (a crash
-- during compensation re-runs it, and each undo runs once). lifecycle.compensation_order
-- orders them.
SELECT s.id AS step_inst_id, s.step_id, s.input, s.output, s.completed_at, s.execution_order
FROM {schema}.orchwf_step_instances s
WHERE s.workflow_inst_id = %(instance_id)s AND s.status = 'completed' AND s.has_compensator
  AND s.step_id <> '$compensate'
  AND NOT EXISTS (SELECT 1 FROM {schema}.orchwf_workflow_events e
                  WHERE e.workflow_inst_id = s.workflow_inst_id AND e.step_inst_id = s.id
                    AND e.event_type IN ('step.compensated', 'step.compensation_failed')
                    AND e."timestamp" >= s.completed_at)

-- name: record_event
INSERT INTO {schema}.orchwf_workflow_events (id, workflow_inst_id, step_inst_id, event_type, event_data)
VALUES ({schema}.orchwf_uuid7(), %(instance_id)s, %(step_inst_id)s, %(event_type)s, %(data)s)

-- name: maintain
-- The supervisor's periodic round in one statement: mark its processes alive, rescue
-- expired leases, promote due retries, when the next scheduled step is due, and whether
-- suspects wait for a quarantine worker.
SELECT promoted, rescued, next_due, suspects
FROM {schema}.orchwf_maintain(%(supervisor_id)s, %(rescue)s, %(queues)s, %(workflows)s)

-- name: rescue_process_steps
-- The claims of a dead process, at most 1,000 a call: back to the queue, or failed.
SELECT step_inst_id, outcome, cause FROM {schema}.orchwf_rescue_steps(%(worker_id)s)

-- name: prune
SELECT {schema}.orchwf_prune(%(older_than)s * interval '1 second', %(limit)s) AS pruned

-- name: rescue_expired
-- Every step whose lease expired (its worker presumed dead), up to 1,000 a call.
SELECT count(*) AS rescued FROM {schema}.orchwf_rescue_steps()

-- name: promote_scheduled
-- Steps whose retry backoff or start time is due go to the ready queue; and when the
-- next one is due (seconds from now, NULL: none).
SELECT {schema}.orchwf_promote_scheduled() AS promoted,
       (SELECT extract(epoch FROM min(s.run_after) - now())::float8
        FROM {schema}.orchwf_step_instances s WHERE s.run_after IS NOT NULL) AS next_due

-- name: suspects_waiting
-- Suspects (steps a dead process was running) wait in these queues for these workflows.
SELECT EXISTS (SELECT 1 FROM {schema}.orchwf_ready_steps r
               WHERE r.suspect AND r.queue = ANY (%(queues)s) AND r.workflow_id = ANY (%(workflows)s)) AS waiting

-- name: mark_processes_alive
UPDATE {schema}.orchwf_workers SET heartbeat_at = now() WHERE supervisor_id = %(supervisor_id)s
