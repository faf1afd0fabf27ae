-- The fleet's jobs. Any gateway inserts one (queued); the agent of one host
-- claims it (starting) with FOR UPDATE SKIP LOCKED, starts it on its
-- supervisor and reports what the supervisor says (running, then how it
-- ended). A host's reports name the generation it claimed with; one whose
-- generation has moved on is refused (fencing).
CREATE TABLE jobworker_jobs (
    id UUID PRIMARY KEY,
    -- The queue's order.
    seq BIGINT GENERATED ALWAYS AS IDENTITY,
    owner TEXT NOT NULL,
    -- The role the owner started it with, asserted again to the host's
    -- supervisor.
    role TEXT NOT NULL,
    request_id TEXT,
    -- What to run: the ipc JobSpec as JSON (checked again when read).
    spec JSONB NOT NULL,
    -- key=value labels a host must carry to claim it.
    placement TEXT[] NOT NULL DEFAULT '{}',
    -- key=value labels to find it by.
    labels TEXT[] NOT NULL DEFAULT '{}',
    state TEXT NOT NULL DEFAULT 'queued'
        CHECK (state IN ('queued', 'starting', 'running', 'stopped', 'finished', 'failed')),
    host TEXT,
    generation BIGINT,
    -- Its id on its host's supervisor.
    local_id UUID,
    -- The host's last report: the ipc JobInfo as JSON.
    info JSONB,
    -- Why its host's supervisor refused to start it: the ipc IpcError.
    refusal JSONB,
    -- Microseconds since the epoch, on the database's clock.
    created_us BIGINT NOT NULL,
    ended_us BIGINT,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (owner, request_id)
);
CREATE INDEX jobworker_jobs_queue ON jobworker_jobs (seq) WHERE state = 'queued';
CREATE INDEX jobworker_jobs_on_host ON jobworker_jobs (host)
    WHERE state IN ('starting', 'running');
CREATE INDEX jobworker_jobs_newest ON jobworker_jobs (created_us DESC, id DESC);
CREATE INDEX jobworker_jobs_owners_newest ON jobworker_jobs (owner, created_us DESC, id DESC);
