-- Day 2: steps may upgrade a host to a new rootfs generation, roll it back, run an ad-hoc
-- command, or clean the app bundles an apply took out. The kind CHECK grows (SQLite rebuilds the table to change a CHECK, as in
-- 0004). Clean moves after every other phase (1,000,000): rollout waves are consecutive
-- ords, and a reset's clean must come after whatever was running when it began.

CREATE TABLE steps_new (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    cluster_id  INTEGER NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
    generation  INTEGER NOT NULL,
    host_id     INTEGER NOT NULL,
    host_name   TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('check', 'distribute', 'install', 'init', 'join-master', 'join-node', 'apps', 'leave', 'remove', 'clean-apps', 'upgrade', 'rollback', 'exec', 'clean')),
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
    deadline    INTEGER,
    log_len     INTEGER NOT NULL DEFAULT 0 CHECK (log_len >= 0),
    log_stored  INTEGER NOT NULL DEFAULT 0 CHECK (log_stored >= 0 AND log_stored <= log_len)
);
INSERT INTO steps_new SELECT id, cluster_id, generation, host_id, host_name, kind,
    CASE WHEN kind = 'clean' THEN 1000000 ELSE ord END,
    spec, best_effort, state, attempt, exit_code, reason, started_at, ended_at, log_tail, outputs, deadline, log_len, log_stored
    FROM steps;
DROP TABLE steps;
ALTER TABLE steps_new RENAME TO steps;
CREATE INDEX steps_host ON steps(host_id, state);
CREATE INDEX steps_deadline ON steps(deadline) WHERE state IN ('released', 'running');
CREATE INDEX steps_cluster_state ON steps(cluster_id, state, ord);

-- `berth reset --force` stays forced: a host that stops answering later is skipped too.
ALTER TABLE clusters ADD COLUMN reset_forced INTEGER NOT NULL DEFAULT 0 CHECK (reset_forced IN (0, 1));
