-- orchwf 014: the live instances' listing index is on created_at alone. It held the ID as
-- a second column, and a lookup by ID could be planned as a scan of that whole index with
-- the ID as its condition: under statistics taken while the table was empty (a churning
-- table's usual state), the planner prices every index of it at a page, and it chose this
-- one for the claim's, the finish's and the events' lookups of instances, reading every
-- live instance (the backlog) per lookup: the soak's stalls of 10 s and more
-- (docs/benchmarks.md, "The soak's stalls, again"). Now only the primary key holds the ID.
-- The listing's order by (created_at, id) sorts the few rows that share a created_at.
-- A runtime table is as large as the work in flight: the rebuild is brief.
DROP INDEX orchwf_li_created_idx;
CREATE INDEX orchwf_li_created_idx ON orchwf_live_instances (created_at DESC);
