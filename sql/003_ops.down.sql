DROP FUNCTION IF EXISTS orchwf_retry_step(uuid, text);
DROP FUNCTION IF EXISTS orchwf_queue_stats(integer, integer);
