-- orchwf API: helpers used by the other API files.
--
-- Every file in sql/api/ holds the one current definition of its functions (CREATE OR
-- REPLACE). `orchwf migrate up` applies them all after the migrations, every time, in
-- file-name order, in one transaction. Names are unqualified: the migrator sets
-- search_path to the target schema, and "SET search_path FROM CURRENT" pins each function
-- to it, so callers with another search_path still reach orchwf's tables.
--
-- Error codes raised by the API (mapped to Python exceptions by orchwf/db/errors.py):
--   OW404  unknown workflow or instance        -> WorkflowNotFoundError
--   OW400  invalid argument                    -> ValidationError
--   OW409  operation invalid in current state  -> InvalidStateError
--
-- Lock order, everywhere: workflow instance rows (by id, FOR NO KEY UPDATE), then step
-- rows, then ready and running rows. The claim is the one exception and cannot wait in a
-- cycle: it takes ready rows first but with SKIP LOCKED, then steps that nothing else
-- locks while they are ready, and it locks no instance row.

-- Time-ordered UUIDs (the UUIDv7 layout): new rows land at the right edge of their
-- B-tree indexes, so inserts touch a few hot pages however large history grows. The
-- random bits come from random() (the session's generator, seeded from strong randomness
-- when a backend starts): 0.6 us an ID instead of gen_random_uuid's 2.6 us. IDs are
-- unique, not secret (docs/schema.md).
CREATE OR REPLACE FUNCTION orchwf_uuid7() RETURNS uuid
LANGUAGE sql
VOLATILE PARALLEL SAFE
AS $$
    -- 48 bits of Unix milliseconds, version 7, 12 random bits; variant 10, 62 random bits.
    SELECT encode(int8send((floor(date_part('epoch', clock_timestamp()) * 1000)::bigint << 16)
                           | floor(random() * 4096)::bigint | 28672)
                  || int8send((floor(random() * 2147483648)::bigint << 31)
                              | floor(random() * 2147483648)::bigint | (-9223372036854775807 - 1)),
                  'hex')::uuid
$$;

-- Events get time-ordered IDs too (the table's DDL cannot name an API function).
DO $$
BEGIN
    IF (SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d
        JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
        WHERE d.adrelid = 'orchwf_workflow_events'::regclass AND a.attname = 'id')
       IS DISTINCT FROM 'orchwf_uuid7()' THEN
        ALTER TABLE orchwf_workflow_events ALTER COLUMN id SET DEFAULT orchwf_uuid7();
    END IF;
END;
$$;
