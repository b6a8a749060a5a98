-- orchwf 002 (release 1): the daemon's SQL API. Its functions now live in sql/api/;
-- this version stays in the sequence so that databases at 001 move on as before.
SELECT 1;
