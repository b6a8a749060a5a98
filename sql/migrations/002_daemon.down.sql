-- orchwf 002 down: nothing (its functions live in sql/api/).
SELECT 1;
