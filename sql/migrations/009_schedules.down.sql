-- orchwf 009 down: the schedules go (instances they started stay).
DROP TABLE IF EXISTS orchwf_schedules;
