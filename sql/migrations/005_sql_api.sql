-- orchwf 005: functions leave the migrations for sql/api/ (one current definition each,
-- applied by `orchwf migrate up` after the migrations, every time).
--
-- Drops the signatures that release 2 (migration 004) kept for the workers of release 1
-- during its rolling upgrade: the workers of release 2 call the current ones.
DROP FUNCTION IF EXISTS orchwf_claim_steps(text, text[], text[], integer, double precision);
DROP FUNCTION IF EXISTS orchwf_finish_and_claim(uuid[], bigint[], text[], jsonb[], text[], bigint[],
    double precision[], jsonb[], text, text[], text[], integer, double precision);
DROP FUNCTION IF EXISTS orchwf_maintain(text, boolean);
