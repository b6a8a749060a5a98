-- orchwf 010: durable sleep (StepBuilder.with_delay, orchwf.sleep_step). A step with a
-- delay waits in run_after once its dependencies complete; the scheduler (orchwf_maintain)
-- makes it ready when due. A column of the runtime table only (history keeps no delay).
-- Adding a column with a constant default rewrites nothing: a brief lock, no copy.
ALTER TABLE orchwf_live_steps
    ADD COLUMN delay_seconds double precision NOT NULL DEFAULT 0 CHECK (delay_seconds >= 0);
