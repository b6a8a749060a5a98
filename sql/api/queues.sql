-- orchwf API: queue controls (orchwf_queues). Pause and resume a queue, and limit its
-- rate, for every worker on every host: the claim (claim.sql) applies them in SQL, so the
-- workers of earlier releases obey them too. Steps already running finish; an enqueue into a paused
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

-- Rate limits. A rate-limited queue has a token bucket in its orchwf_queues row: up to
-- `burst` starts at once, refilled at rate_per_second. Each claim of the queue takes its
-- starts from the bucket under the row's lock (FOR NO KEY UPDATE), so the claims of that
-- queue, on every host and of every release, are serialised and never start more than
-- burst + rate x T steps in any T seconds. Claims of queues without a limit never call
-- this (claim.sql reads rate_per_second first): no lock, no extra statement for them.
--
-- The claim limits the queue's ordered scan to the number returned here, which is also
-- what the bucket is charged. More steps never start than are charged; fewer may (a ready
-- row another transaction holds, a claim for several queues cut at its overall
-- limit): then the tokens are spent without a start, the safe side of the limit. The
-- ready steps are counted first (at most the tokens there are) so that a worker polling an
-- empty or short queue takes only what it can start.
--
-- now() is the claim's transaction start, the steps' started_at: the bucket's clock
-- follows it, and never goes back (a claim that waited for the lock behind a younger one).
CREATE OR REPLACE FUNCTION orchwf_take_starts(p_queue text, p_workflows text[], p_want integer,
                                              p_suspects boolean)
RETURNS integer
LANGUAGE plpgsql
SET search_path FROM CURRENT
SET enable_seqscan = off
SET enable_bitmapscan = off
SET jit = off
AS $$
DECLARE
    v_tokens double precision;
    v_at     timestamptz;
    v_ready  integer;
BEGIN
    SELECT least(c.burst::double precision,
                 c.tokens + c.rate_per_second * greatest(0, extract(epoch FROM now() - c.tokens_at))),
           greatest(c.tokens_at, now())
    INTO v_tokens, v_at
    FROM orchwf_queues c
    WHERE c.name = p_queue AND c.rate_per_second IS NOT NULL
    FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN p_want;  -- the limit was removed since the claim read it
    END IF;
    SELECT count(*) INTO v_ready
    FROM (SELECT 1 FROM orchwf_ready_steps r
          WHERE r.queue = p_queue AND r.workflow_id = ANY (p_workflows) AND r.ready_at <= now()
            AND r.suspect = p_suspects
          LIMIT least(p_want, floor(v_tokens)::integer)) ready;
    UPDATE orchwf_queues SET tokens = v_tokens - v_ready, tokens_at = v_at WHERE name = p_queue;
    RETURN v_ready;
END;
$$;

-- Set a queue's rate limit (p_per_second NULL: remove it). The burst defaults to one
-- second's worth (at least 1). A new limit starts with a full bucket; a changed one keeps
-- the tokens it has, up to the new burst.
CREATE OR REPLACE FUNCTION orchwf_set_queue_rate_limit(p_queue text, p_per_second double precision,
                                                       p_burst integer DEFAULT NULL)
RETURNS void
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
DECLARE
    v_burst integer;
BEGIN
    PERFORM orchwf_check_queue_name(p_queue);
    IF p_per_second IS NULL THEN
        IF p_burst IS NOT NULL THEN
            RAISE EXCEPTION 'a burst needs a rate' USING ERRCODE = 'OW400';
        END IF;
        UPDATE orchwf_queues SET rate_per_second = NULL, burst = NULL, tokens = 0, updated_at = now()
        WHERE name = p_queue;
        RETURN;
    END IF;
    IF p_per_second = 'NaN' OR p_per_second <= 0 OR p_per_second > 1000000 THEN
        RAISE EXCEPTION 'rate must be more than 0 and at most 1000000 per second, got %', p_per_second
            USING ERRCODE = 'OW400';
    END IF;
    v_burst := coalesce(p_burst, greatest(1, ceil(p_per_second))::integer);
    IF v_burst NOT BETWEEN 1 AND 1000000 THEN
        RAISE EXCEPTION 'burst must be 1 to 1000000, got %', v_burst USING ERRCODE = 'OW400';
    END IF;
    INSERT INTO orchwf_queues AS c (name, rate_per_second, burst, tokens, tokens_at)
    VALUES (p_queue, p_per_second, v_burst, v_burst, now())
    ON CONFLICT (name) DO UPDATE
        SET rate_per_second = EXCLUDED.rate_per_second, burst = EXCLUDED.burst,
            tokens = CASE WHEN c.rate_per_second IS NULL THEN EXCLUDED.burst
                          ELSE least(c.tokens, EXCLUDED.burst) END,
            tokens_at = CASE WHEN c.rate_per_second IS NULL THEN now() ELSE c.tokens_at END,
            updated_at = now();
END;
$$;
