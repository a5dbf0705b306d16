-- Clusters, their hosts, steps (the persisted state machine), logs and outputs.

CREATE TABLE clusters (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL UNIQUE,
    generation  INTEGER NOT NULL,
    clusterfile TEXT NOT NULL,
    spec        TEXT NOT NULL,      -- resolved spec, JSON
    phase       TEXT NOT NULL,      -- Reconciling | Running | Failed | Resetting
    message     TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);

CREATE TABLE cluster_hosts (
    cluster_id  INTEGER NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
    host_id     INTEGER NOT NULL UNIQUE REFERENCES hosts(id),  -- a host is in one cluster
    role        TEXT NOT NULL,      -- master | node
    ord         INTEGER NOT NULL,   -- master0 = 0
    ip          TEXT NOT NULL,
    env         TEXT NOT NULL,      -- JSON map
    state       TEXT NOT NULL DEFAULT 'active',  -- active | leaving
    PRIMARY KEY (cluster_id, host_id)
);

CREATE TABLE steps (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    cluster_id  INTEGER NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
    generation  INTEGER NOT NULL,
    host_id     INTEGER NOT NULL,
    host_name   TEXT NOT NULL,
    kind        TEXT NOT NULL,
    ord         INTEGER NOT NULL,   -- steps run in ascending ord; equal ords in parallel
    spec        TEXT NOT NULL,      -- JSON: bundle indexes, target host
    best_effort INTEGER NOT NULL DEFAULT 0,
    state       TEXT NOT NULL DEFAULT 'pending',
    attempt     INTEGER NOT NULL DEFAULT 1,
    exit_code   INTEGER,
    reason      TEXT,
    started_at  INTEGER,
    ended_at    INTEGER,
    log_tail    TEXT,
    outputs     TEXT
);
CREATE INDEX steps_cluster ON steps(cluster_id, ord);
CREATE INDEX steps_host ON steps(host_id, state);

CREATE TABLE step_logs (
    step_id     INTEGER NOT NULL REFERENCES steps(id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,
    offset      INTEGER NOT NULL,
    data        BLOB NOT NULL,
    PRIMARY KEY (step_id, attempt, offset)
);

CREATE TABLE cluster_outputs (
    cluster_id  INTEGER NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (cluster_id, key)
);

CREATE TABLE agent_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    host_id     INTEGER NOT NULL,
    at          INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    message     TEXT NOT NULL
);

ALTER TABLE hosts ADD COLUMN plan_generation INTEGER NOT NULL DEFAULT 0;
