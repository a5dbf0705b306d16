-- The event log (`berth get events`): every phase change and step transition, written by
-- triggers in the transaction that makes the change (so no path can miss one), plus what
-- the engine says of its own (applies, upgrade batches, rollbacks, resets, hosts a forced
-- reset skips, execs). Events name their cluster and host by name, so they outlive both.
-- Agents cause rows only through validated step transitions (a few per step attempt);
-- the controller keeps the newest 200,000.

CREATE TABLE events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms    INTEGER NOT NULL,
    cluster  TEXT,
    host     TEXT,
    kind     TEXT NOT NULL CHECK (kind IN ('phase', 'step', 'apply', 'batch', 'rollback', 'reset', 'skip', 'exec')),
    message  TEXT NOT NULL
);
CREATE INDEX events_cluster ON events(cluster, id);

CREATE TRIGGER events_step_ins AFTER INSERT ON steps WHEN new.state = 'released'
BEGIN
    INSERT INTO events (at_ms, cluster, host, kind, message)
    VALUES (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER),
            (SELECT name FROM clusters WHERE id = new.cluster_id), new.host_name, 'step',
            new.kind || ' released');
END;

CREATE TRIGGER events_step_upd AFTER UPDATE OF state ON steps WHEN new.state IS NOT old.state OR new.attempt IS NOT old.attempt
BEGIN
    INSERT INTO events (at_ms, cluster, host, kind, message)
    VALUES (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER),
            (SELECT name FROM clusters WHERE id = new.cluster_id), new.host_name, 'step',
            new.kind || ' ' || new.state
              || CASE WHEN new.attempt > 1 THEN ' (attempt ' || new.attempt || ')' ELSE '' END
              || CASE WHEN new.exit_code IS NOT NULL AND new.state = 'failed' THEN ', exit code ' || new.exit_code ELSE '' END
              || CASE WHEN new.reason IS NOT NULL AND new.state IN ('failed', 'interrupted', 'cancelled') THEN ': ' || substr(new.reason, 1, 300) ELSE '' END);
END;

CREATE TRIGGER events_phase_ins AFTER INSERT ON clusters
BEGIN
    INSERT INTO events (at_ms, cluster, kind, message)
    VALUES (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER), new.name, 'phase',
            'created: ' || new.phase);
END;

CREATE TRIGGER events_phase_upd AFTER UPDATE OF phase ON clusters WHEN new.phase IS NOT old.phase
BEGIN
    INSERT INTO events (at_ms, cluster, kind, message)
    VALUES (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER), new.name, 'phase',
            old.phase || ' -> ' || new.phase || CASE WHEN new.message IS NOT NULL THEN ': ' || substr(new.message, 1, 300) ELSE '' END);
END;

CREATE TRIGGER events_phase_del AFTER DELETE ON clusters
BEGIN
    INSERT INTO events (at_ms, cluster, kind, message)
    VALUES (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER), old.name, 'phase',
            'removed');
END;
