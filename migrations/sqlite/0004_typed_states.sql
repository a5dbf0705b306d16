-- Typed states: CHECK constraints on every state column, so nothing but berth's enums can
-- be stored (an agent reporting `state: "banana"` is refused by the API, and would be by
-- the database too). Steps gain a deadline (a released/running step whose host stops
-- answering becomes `interrupted`, reason `lost`) and per-attempt log accounting (the log
-- cap). SQLite cannot add a CHECK to an existing table, so the tables are rebuilt the way
-- https://sqlite.org/lang_altertable.html prescribes: the store runs migrations on a
-- connection with foreign keys off, in one transaction, and checks them afterwards.

CREATE TABLE clusters_new (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL UNIQUE,
    generation  INTEGER NOT NULL CHECK (generation >= 1),
    clusterfile TEXT NOT NULL,
    spec        TEXT NOT NULL,
    phase       TEXT NOT NULL CHECK (phase IN ('Reconciling', 'Running', 'Failed', 'Resetting', 'ResetFailed')),
    message     TEXT,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
INSERT INTO clusters_new SELECT id, name, generation, clusterfile, spec, phase, message, created_at, updated_at FROM clusters;
DROP TABLE clusters;
ALTER TABLE clusters_new RENAME TO clusters;

CREATE TABLE cluster_hosts_new (
    cluster_id  INTEGER NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
    host_id     INTEGER NOT NULL UNIQUE REFERENCES hosts(id),
    role        TEXT NOT NULL CHECK (role IN ('master', 'node')),
    ord         INTEGER NOT NULL CHECK (ord >= 0),
    ip          TEXT NOT NULL,
    env         TEXT NOT NULL,
    state       TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'leaving')),
    PRIMARY KEY (cluster_id, host_id)
);
INSERT INTO cluster_hosts_new SELECT cluster_id, host_id, role, ord, ip, env, state FROM cluster_hosts;
DROP TABLE cluster_hosts;
ALTER TABLE cluster_hosts_new RENAME TO cluster_hosts;

CREATE TABLE steps_new (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    cluster_id  INTEGER NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
    generation  INTEGER NOT NULL,
    host_id     INTEGER NOT NULL,
    host_name   TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('check', 'distribute', 'install', 'init', 'join-master', 'join-node', 'apps', 'leave', 'remove', 'clean')),
    ord         INTEGER NOT NULL CHECK (ord >= 0),
    spec        TEXT NOT NULL,
    best_effort INTEGER NOT NULL DEFAULT 0 CHECK (best_effort IN (0, 1)),
    state       TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'released', 'running', 'succeeded', 'failed', 'interrupted', 'cancelled')),
    attempt     INTEGER NOT NULL DEFAULT 1 CHECK (attempt >= 1),
    exit_code   INTEGER,
    reason      TEXT,
    started_at  INTEGER,
    ended_at    INTEGER,
    log_tail    TEXT,
    outputs     TEXT,
    -- unix seconds after which a released/running step is declared lost
    deadline    INTEGER,
    -- bytes of the current attempt's log the agent sent (its offsets), and how many are stored
    log_len     INTEGER NOT NULL DEFAULT 0 CHECK (log_len >= 0),
    log_stored  INTEGER NOT NULL DEFAULT 0 CHECK (log_stored >= 0 AND log_stored <= log_len)
);
INSERT INTO steps_new (id, cluster_id, generation, host_id, host_name, kind, ord, spec, best_effort, state, attempt, exit_code, reason, started_at, ended_at, log_tail, outputs, log_len, log_stored)
    SELECT s.id, s.cluster_id, s.generation, s.host_id, s.host_name, s.kind, s.ord, s.spec, s.best_effort, s.state, s.attempt, s.exit_code, s.reason, s.started_at, s.ended_at, s.log_tail, s.outputs,
           COALESCE((SELECT MAX(l.offset + length(l.data)) FROM step_logs l WHERE l.step_id = s.id AND l.attempt = s.attempt), 0),
           COALESCE((SELECT SUM(length(l.data)) FROM step_logs l WHERE l.step_id = s.id AND l.attempt = s.attempt), 0)
    FROM steps s;
DROP TABLE steps;
ALTER TABLE steps_new RENAME TO steps;
CREATE INDEX steps_cluster ON steps(cluster_id, ord);
CREATE INDEX steps_host ON steps(host_id, state);
CREATE INDEX steps_deadline ON steps(deadline) WHERE state IN ('released', 'running');

CREATE TABLE step_logs_new (
    step_id     INTEGER NOT NULL REFERENCES steps(id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL CHECK (attempt >= 1),
    offset      INTEGER NOT NULL CHECK (offset >= 0),
    data        BLOB NOT NULL,
    PRIMARY KEY (step_id, attempt, offset)
);
INSERT INTO step_logs_new SELECT step_id, attempt, offset, data FROM step_logs WHERE offset >= 0;
DROP TABLE step_logs;
ALTER TABLE step_logs_new RENAME TO step_logs;

