-- The daemon's statements: worker processes and the supervisor (orchwf/daemon/).
-- Hot statements use the binary protocol (%(name)b): arrays of UUIDs, integers and JSON
-- cost half as much to send as text, and IDs come back as UUIDs, ready to send again.

-- name: register_process
-- A supervisor, worker or quarantine process, for operators and the release of a dead
-- process's claims. A worker that reconnects only refreshes its heartbeat.
INSERT INTO {schema}.orchwf_workers (worker_id, supervisor_id, host, pid, role, queues, workflows, concurrency,
                                     versions)
VALUES (%(worker_id)s, %(supervisor_id)s, %(host)s, %(pid)s, %(role)s, %(queues)s, %(workflows)s, %(concurrency)s,
        %(versions)s)
ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = now()

-- name: unregister_process
DELETE FROM {schema}.orchwf_workers WHERE worker_id = %(worker_id)s

-- name: forget_silent_processes
-- Rows of processes gone without unregistering (kill -9, a lost host).
DELETE FROM {schema}.orchwf_workers WHERE heartbeat_at < now() - %(older_than)s * interval '1 second'

-- name: forget_idle_keys
-- Concurrency keys with no slot held and nobody waiting for a while (sql/api/keys.sql).
SELECT {schema}.orchwf_forget_idle_keys(%(idle)s * interval '1 second') AS forgotten

-- name: release_orphans
-- After a reconnect: claims held in the database that the worker does not know about
-- (their reply was lost with the connection) go back to the queue.
SELECT {schema}.orchwf_release_orphans(%(worker_id)s, %(keep)s) AS released

-- name: claim_steps
SELECT step_inst_id, workflow_inst_id, workflow_id, step_id, lease_token, attempt, retry_count,
       workflow_input, metadata, trace_id, completed, step_input
FROM {schema}.orchwf_claim_steps(%(worker_id)b, %(queues)b, %(workflows)b, %(limit)b, %(lease_seconds)b,
                                 %(suspects)b, %(versions)b::text[])

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
                                      %(queues)b, %(workflows)b, %(limit)b, %(lease_seconds)b, %(suspects)b,
                                      %(versions)b::text[])

-- name: heartbeat
-- Renews the leases; returns the steps whose lease was lost (rescued, cancelled).
SELECT lost FROM {schema}.orchwf_heartbeat(%(worker_id)s, %(ids)s, %(tokens)s, %(lease_seconds)s) AS lost

-- name: steps_to_compensate
-- Completed steps with a compensator, not compensated since they last completed (a crash
-- during compensation re-runs it, and each undo runs once). lifecycle.compensation_order
-- orders them.
SELECT s.id AS step_inst_id, s.step_id, s.input, s.output, s.completed_at, s.execution_order
FROM {schema}.orchwf_live_steps s
JOIN {schema}.orchwf_live_instances i ON i.id = s.workflow_inst_id
WHERE s.workflow_inst_id = %(instance_id)s AND s.status = 'completed' AND s.has_compensator
  AND s.step_id <> '$compensate'
  AND NOT EXISTS (SELECT 1 FROM {schema}.orchwf_event_history e
                  WHERE e.instance_created_at = i.created_at
                    AND e.workflow_inst_id = s.workflow_inst_id AND e.step_inst_id = s.id
                    AND e.event_type IN ('step.compensated', 'step.compensation_failed')
                    AND e."timestamp" >= s.completed_at)

-- name: record_event
SELECT {schema}.orchwf_record_event(%(instance_id)s, %(step_inst_id)s, %(event_type)s, %(data)s)

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
-- Retention in one transaction (partitions detached without CONCURRENTLY, a bounded lock wait).
SELECT {schema}.orchwf_prune(%(older_than)s * interval '1 second', %(limit)s) AS pruned

-- name: roll_up_stats
-- The dashboard's per-minute trends (sql/api/stats.sql): minutes written, 0 when another
-- supervisor holds the rollup.
SELECT {schema}.orchwf_roll_up_stats(%(lag)s, %(keep)s * interval '1 second', 100000, %(if_older)s) AS minutes

-- name: expired_partitions
SELECT lower, upper, suffix FROM {schema}.orchwf_expired_partitions(%(older_than)s * interval '1 second')

-- name: partition_children
SELECT parent, child, state FROM {schema}.orchwf_partition_children(%(suffix)s)

-- name: partition_rows
SELECT {schema}.orchwf_partition_rows(%(lower)s) AS n

-- name: lock_history_range
-- Session-level (the detach runs outside a transaction); released by unlock_history_range,
-- or by the session's end if the process dies. A try: a resume of the range in a long
-- transaction must not stall the supervisor's loop (the range waits for the next run).
-- Returns the key, to unlock with (the range leaves orchwf_partitions, which the key is
-- computed from, before the unlock), and whether the lock was taken.
SELECT x.key, pg_try_advisory_lock(x.key) AS locked
FROM (SELECT {schema}.orchwf_history_range_key(%(lower)s) AS key OFFSET 0) x

-- name: unlock_history_range
SELECT pg_advisory_unlock(%(key)s)

-- name: partition_expired
SELECT {schema}.orchwf_partition_expired(%(lower)s, %(older_than)s * interval '1 second') AS expired

-- name: drop_expired_partitions
-- Retention without CONCURRENTLY (a role that does not own the tables; sql/api/util.sql).
SELECT {schema}.orchwf_drop_expired_partitions(%(older_than)s * interval '1 second') AS n

-- name: detach_partition
-- {parent} and {child} are names orchwf_partition_children returned, quoted by psycopg.
ALTER TABLE {schema}.{parent} DETACH PARTITION {schema}.{child} CONCURRENTLY

-- name: finalize_detach
ALTER TABLE {schema}.{parent} DETACH PARTITION {schema}.{child} FINALIZE

-- name: drop_partition
DROP TABLE IF EXISTS {schema}.{child}

-- name: forget_partition
DELETE FROM {schema}.orchwf_partitions WHERE lower = %(lower)s

-- name: extend_partitions
SELECT {schema}.orchwf_extend_partitions() AS made

-- name: rescue_expired
-- Every step whose lease expired (its worker presumed dead), up to 1,000 a call.
SELECT count(*) AS rescued FROM {schema}.orchwf_rescue_steps()

-- name: promote_scheduled
-- Steps whose retry backoff or start time is due go to the ready queue.
SELECT {schema}.orchwf_promote_scheduled() AS promoted

-- name: next_due
-- When the next scheduled step is due (seconds from now, NULL: none). A statement of its
-- own: it must see what promote_scheduled just changed.
-- The index's first entry (ORDER BY ... LIMIT 1, not min(): see orchwf_maintain).
SELECT extract(epoch FROM (SELECT s.run_after FROM {schema}.orchwf_live_steps s WHERE s.run_after IS NOT NULL
                           ORDER BY s.run_after LIMIT 1) - now())::float8 AS next_due

-- name: suspects_waiting
-- Suspects (steps a dead process was running) wait in these queues for these workflows
-- (a paused queue's suspects wait for its resume: no quarantine worker for them).
SELECT EXISTS (SELECT 1 FROM {schema}.orchwf_ready_steps r
               WHERE r.suspect AND r.queue = ANY (%(queues)s) AND r.workflow_id = ANY (%(workflows)s)
                 AND NOT EXISTS (SELECT 1 FROM {schema}.orchwf_queues c WHERE c.name = r.queue AND c.paused)) AS waiting

-- name: mark_processes_alive
UPDATE {schema}.orchwf_workers SET heartbeat_at = now() WHERE supervisor_id = %(supervisor_id)s

-- name: consume_signal
-- A waiting step takes the oldest signal of its name (NULL name: the one the step waits
-- for now, orchwf_live_steps.wait_signal: a child's report), in the transaction that
-- completes it: if the finish is fenced out, the signal stays for the next attempt. No
-- SKIP LOCKED: a stale run of the step that still holds the row must not make the
-- rescued run miss it (it waits, then takes it, or the next one).
UPDATE {schema}.orchwf_signals g SET consumed_by = %(step_inst_id)s, consumed_at = now()
WHERE g.id = (SELECT x.id FROM {schema}.orchwf_signals x
              WHERE x.workflow_inst_id = %(instance_id)s AND x.consumed_by IS NULL
                AND x.name = coalesce(%(name)s::text, (SELECT s.wait_signal FROM {schema}.orchwf_live_steps s
                                                       WHERE s.id = %(step_inst_id)s))
              ORDER BY x.id LIMIT 1
              FOR UPDATE)
RETURNING g.payload
-- name: rate_limited_poll
-- How often a worker of these queues polls while one of them is rate limited: half the
-- time its bucket takes to fill (so it never overflows between two claims), at least
-- %(floor)s seconds; NULL when none is (then the worker waits for wake-ups as usual).
SELECT min(greatest(c.burst / c.rate_per_second / 2, %(floor)s))::float8 AS seconds
FROM {schema}.orchwf_queues c
WHERE c.name = ANY (%(queues)s) AND c.rate_per_second IS NOT NULL AND NOT c.paused
