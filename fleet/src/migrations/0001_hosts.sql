-- The hosts of the fleet: one row per host_id, written by that host's agent.
-- generation grows at each registration; a write that names an older one is
-- refused (fencing). lease_until is the database's clock, never a host's.
CREATE TABLE jobworker_hosts (
    id TEXT PRIMARY KEY,
    labels TEXT[] NOT NULL DEFAULT '{}',
    slots INTEGER NOT NULL CHECK (slots > 0),
    generation BIGINT NOT NULL CHECK (generation > 0),
    lease_until TIMESTAMPTZ NOT NULL,
    draining BOOLEAN NOT NULL DEFAULT false,
    version TEXT NOT NULL,
    registered_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
