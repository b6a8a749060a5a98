-- orchwf API: queue controls (orchwf_queues). Pause and resume a queue for every worker
-- on every host: the claim (claim.sql) skips a paused queue, in SQL, so the workers of
-- earlier releases obey it too. Steps already running finish; an enqueue into a paused
-- queue still works (the steps wait in orchwf_ready_steps).

-- The queue names enqueue accepts (orchwf_enqueue_many): 1 to 255 characters.
CREATE OR REPLACE FUNCTION orchwf_check_queue_name(p_queue text)
RETURNS text
LANGUAGE plpgsql
IMMUTABLE
SET search_path FROM CURRENT
AS $$
BEGIN
    IF p_queue IS NULL OR length(p_queue) NOT BETWEEN 1 AND 255 THEN
        RAISE EXCEPTION 'queue name must be 1 to 255 characters' USING ERRCODE = 'OW400';
    END IF;
    RETURN p_queue;
END;
$$;

-- Pause a queue: from the next claim on, no worker starts a step of it. Returns false
-- when it was paused already (then nothing changes, paused_at included).
CREATE OR REPLACE FUNCTION orchwf_pause_queue(p_queue text)
RETURNS boolean
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
BEGIN
    INSERT INTO orchwf_queues AS c (name, paused, paused_at)
    VALUES (orchwf_check_queue_name(p_queue), true, now())
    ON CONFLICT (name) DO UPDATE SET paused = true, paused_at = now(), updated_at = now()
        WHERE NOT c.paused;
    RETURN FOUND;
END;
$$;

-- Resume a paused queue. Its ready steps start at once: the notification wakes the
-- workers as an enqueue does (they would otherwise wait for their next poll). Returns
-- false when it was not paused. The row stays (a queue an operator has set something on).
CREATE OR REPLACE FUNCTION orchwf_resume_queue(p_queue text)
RETURNS boolean
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
BEGIN
    PERFORM orchwf_check_queue_name(p_queue);
    UPDATE orchwf_queues SET paused = false, paused_at = NULL, updated_at = now()
    WHERE name = p_queue AND paused;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM pg_notify('orchwf_ready', p_queue);
    RETURN true;
END;
$$;
