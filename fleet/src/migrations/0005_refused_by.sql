-- The hosts whose supervisors refused to start a job (a full disk, no free
-- uid, a limit over the host's maximum, a command missing there, a host
-- stopping): the job goes back to the queue for the others, none of these
-- claims it again, and it fails once every live host that may run it has
-- refused it.
ALTER TABLE jobworker_jobs ADD COLUMN refused_by TEXT[] NOT NULL DEFAULT '{}';
