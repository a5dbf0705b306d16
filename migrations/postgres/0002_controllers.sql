-- The controllers serving this database and the clusters each one ticks (see
-- controller/src/engine/leases.rs). Times are the database's clock in Unix milliseconds.
CREATE TABLE controllers (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    url         TEXT NOT NULL,
    version     TEXT NOT NULL,
    ca_hash     TEXT NOT NULL,
    plan_key_id TEXT NOT NULL,
    started_ms  BIGINT NOT NULL,
    seen_ms     BIGINT NOT NULL
);

CREATE TABLE cluster_leases (
    cluster_id    BIGINT PRIMARY KEY REFERENCES clusters(id) ON DELETE CASCADE,
    controller_id TEXT NOT NULL,
    expires_ms    BIGINT NOT NULL
);
CREATE INDEX cluster_leases_by_controller ON cluster_leases (controller_id);

-- A change of who may connect reaches every controller's host cache at once (the
-- `host_auth_version` counter stays, for a listener that missed it).
CREATE OR REPLACE FUNCTION berth_hosts_auth() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE host_auth_version SET n = n + 1 WHERE id = 1;
    PERFORM pg_notify('berth', 'h');
    RETURN NULL;
END $$;
