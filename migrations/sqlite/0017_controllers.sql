-- The controllers serving this database and the clusters each one ticks (see
-- controller/src/engine/leases.rs). Times are the database's clock in Unix milliseconds.
CREATE TABLE controllers (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    url         TEXT NOT NULL,
    version     TEXT NOT NULL,
    ca_hash     TEXT NOT NULL,
    plan_key_id TEXT NOT NULL,
    started_ms  INTEGER NOT NULL,
    seen_ms     INTEGER NOT NULL
);

CREATE TABLE cluster_leases (
    cluster_id    INTEGER PRIMARY KEY REFERENCES clusters(id) ON DELETE CASCADE,
    controller_id TEXT NOT NULL,
    expires_ms    INTEGER NOT NULL
);
CREATE INDEX cluster_leases_by_controller ON cluster_leases (controller_id);
