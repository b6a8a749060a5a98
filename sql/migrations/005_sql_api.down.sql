-- orchwf 005 down: nothing to restore for release 2, whose workers call the functions
-- sql/api/ defines. (The signatures dropped by 005 served release 1's workers.)
SELECT 1;
