-- Where the other gateways reach a host's peer port (host:port); NULL for a
-- host that takes no forwarded calls (or registered with a release before
-- this one).
ALTER TABLE jobworker_hosts ADD COLUMN peer_address TEXT;
