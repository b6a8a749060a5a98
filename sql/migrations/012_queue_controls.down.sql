-- orchwf 012 down: no queue controls. A rollback does not re-apply the API, and the
-- workers of release 3 go on calling orchwf_claim_steps and orchwf_maintain, whose
-- current bodies read orchwf_queues: each gets its body back without the lines 012's
-- API added (an exact text replacement, so whatever else a later release changed in
-- those functions stays), and the functions of sql/api/queues.sql go. A body that does
-- not hold the expected text stops the rollback: nothing is changed.

DO $$
DECLARE
    v_fn   regprocedure;
    v_def  text;
    v_edit record;
BEGIN
    FOR v_edit IN
        SELECT * FROM (VALUES
            ('orchwf_claim_steps(text, text[], text[], integer, double precision, boolean, text[])',
             $a$        -- Queue controls, for the workers of every release (sql/api/queues.sql): a paused
        -- queue claims nothing; a rate-limited one at most n, taken from its token bucket.
        FROM (SELECT u.name, CASE WHEN c.rate_per_second IS NULL THEN p_limit
                                  ELSE orchwf_take_starts(u.name, p_workflows, p_limit, p_suspects) END
              FROM unnest(p_queues) AS u(name) LEFT JOIN orchwf_queues c ON c.name = u.name
              WHERE c.paused IS NOT TRUE) AS q(name, n)
$a$,
             $a$        FROM unnest(p_queues) AS q(name)
$a$),
            ('orchwf_claim_steps(text, text[], text[], integer, double precision, boolean, text[])',
             $a$                LIMIT q.n
                FOR UPDATE SKIP LOCKED)$a$,
             $a$                LIMIT p_limit
                FOR UPDATE SKIP LOCKED)$a$),
            ('orchwf_maintain(text, boolean, text[], text[])',
             $a$WHERE r.suspect AND r.queue = ANY (p_queues) AND r.workflow_id = ANY (p_workflows)
                          AND NOT EXISTS (SELECT 1 FROM orchwf_queues c WHERE c.name = r.queue AND c.paused));$a$,
             $a$WHERE r.suspect AND r.queue = ANY (p_queues) AND r.workflow_id = ANY (p_workflows));$a$)
        ) AS e(fn, added, original)
    LOOP
        v_fn := v_edit.fn::regprocedure;
        v_def := pg_get_functiondef(v_fn);
        IF position(v_edit.added IN v_def) = 0 THEN
            RAISE EXCEPTION 'orchwf 012 down: % does not hold the lines 012 added; re-apply the API of the '
                            'release you roll back to (orchwf migrate up with it) after this', v_fn;
        END IF;
        EXECUTE replace(v_def, v_edit.added, v_edit.original);
    END LOOP;
END;
$$;

DROP FUNCTION IF EXISTS orchwf_set_queue_rate_limit(text, double precision, integer);
DROP FUNCTION IF EXISTS orchwf_take_starts(text, text[], integer, boolean);
DROP FUNCTION IF EXISTS orchwf_resume_queue(text);
DROP FUNCTION IF EXISTS orchwf_pause_queue(text);
DROP FUNCTION IF EXISTS orchwf_check_queue_name(text);
DROP TABLE orchwf_queues;
