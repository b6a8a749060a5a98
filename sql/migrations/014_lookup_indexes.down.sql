-- orchwf 014 down: the listing index as it was before, (created_at DESC, id DESC).
DROP INDEX orchwf_li_created_idx;
CREATE INDEX orchwf_li_created_idx ON orchwf_live_instances (created_at DESC, id DESC);
