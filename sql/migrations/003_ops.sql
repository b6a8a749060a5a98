-- orchwf 003 (release 1): operator functions. They now live in sql/api/ops.sql; this
-- version stays in the sequence so that databases at 002 move on as before.
SELECT 1;
