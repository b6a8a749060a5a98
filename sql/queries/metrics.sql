-- The Prometheus collector's one statement per scrape (orchwf/daemon/metrics.py).

-- name: database_metrics
-- Queue depth and oldest ready step per queue (a loose index scan of the claim index in
-- orchwf_queue_stats); the queues an operator set something on (paused, rate limit: a
-- few rows);
-- dead and live tuples and inserts from the statistics views; live
-- worker rows (a small table); and the instances that finished since the last scrape
-- (a BRIN range of history), up to a horizon %(lag)s seconds back, which the next
-- scrape starts from.
SELECT 'queue' AS kind, q.queue AS name, q.ready::float8 AS a,
       extract(epoch FROM now() - q.oldest_ready_at)::float8 AS b, NULL::timestamptz AS t
FROM {schema}.orchwf_queue_stats(%(cap)s) q
UNION ALL
SELECT 'paused', c.name, c.paused::integer::float8, c.rate_per_second, NULL
FROM {schema}.orchwf_queues c
UNION ALL
SELECT 'table', s.relname::text, s.n_dead_tup::float8, s.n_live_tup::float8, NULL
FROM pg_catalog.pg_stat_user_tables s
WHERE s.schemaname = %(schema)s AND s.relname = ANY (%(tables)s)
UNION ALL
SELECT 'inserted', s.relname::text, s.n_tup_ins::float8, NULL, NULL
FROM pg_catalog.pg_stat_user_tables s
WHERE s.schemaname = %(schema)s AND s.relname = 'orchwf_live_instances'
UNION ALL
SELECT 'workers', w.role, count(*)::float8, NULL, NULL
FROM {schema}.orchwf_workers w
WHERE w.heartbeat_at > now() - %(live)s * interval '1 second'
GROUP BY w.role
UNION ALL
SELECT 'finished:' || i.status, i.workflow_id, count(*)::float8, NULL, NULL
FROM {schema}.orchwf_instance_history i
WHERE %(since)s::timestamptz IS NOT NULL
  AND i.completed_at >= greatest(%(since)s::timestamptz, now() - %(gap)s * interval '1 second')
  AND i.completed_at < now() - %(lag)s * interval '1 second'
GROUP BY i.status, i.workflow_id
UNION ALL
-- Live instances waiting for a version no live worker has (sql/api/ops.sql).
SELECT 'unserved', u.workflow_id, sum(u.instances)::float8, max(u.oldest_age), NULL
FROM {schema}.orchwf_unserved_versions(%(live)s) u
GROUP BY u.workflow_id
UNION ALL
SELECT 'horizon', '', NULL, NULL, now() - %(lag)s * interval '1 second'
