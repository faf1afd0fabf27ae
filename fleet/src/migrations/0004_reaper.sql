-- The reaper's marks on the jobs of a host whose lease ran out: since when
-- (the job may still run there: "host unreachable"), and whether it was
-- declared FAILED for it after the grace ("host lost"), which the host's
-- own report replaces if it comes back.
ALTER TABLE jobworker_jobs ADD COLUMN unreachable_since TIMESTAMPTZ;
ALTER TABLE jobworker_jobs ADD COLUMN lost BOOLEAN NOT NULL DEFAULT false;
