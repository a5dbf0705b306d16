-- Scale: what a plan shares with every host of its cluster is one context document per
-- cluster version, and the engine's tick reads only the steps it needs.

-- Bumped (by the triggers below) whenever what a context is built from changes: the
-- Clusterfile and spec, the cluster's hosts, its outputs. The engine caches a context per
-- (cluster, ctx_version).
ALTER TABLE clusters ADD COLUMN ctx_version INTEGER NOT NULL DEFAULT 0;

CREATE TRIGGER clusters_ctx AFTER UPDATE OF clusterfile, spec ON clusters
BEGIN
    UPDATE clusters SET ctx_version = ctx_version + 1 WHERE id = NEW.id;
END;
CREATE TRIGGER cluster_hosts_ctx_ins AFTER INSERT ON cluster_hosts
BEGIN
    UPDATE clusters SET ctx_version = ctx_version + 1 WHERE id = NEW.cluster_id;
END;
CREATE TRIGGER cluster_hosts_ctx_upd AFTER UPDATE ON cluster_hosts
BEGIN
    UPDATE clusters SET ctx_version = ctx_version + 1 WHERE id IN (OLD.cluster_id, NEW.cluster_id);
END;
CREATE TRIGGER cluster_hosts_ctx_del AFTER DELETE ON cluster_hosts
BEGIN
    UPDATE clusters SET ctx_version = ctx_version + 1 WHERE id = OLD.cluster_id;
END;
CREATE TRIGGER cluster_outputs_ctx_ins AFTER INSERT ON cluster_outputs
BEGIN
    UPDATE clusters SET ctx_version = ctx_version + 1 WHERE id = NEW.cluster_id;
END;
CREATE TRIGGER cluster_outputs_ctx_upd AFTER UPDATE ON cluster_outputs
BEGIN
    UPDATE clusters SET ctx_version = ctx_version + 1 WHERE id IN (OLD.cluster_id, NEW.cluster_id);
END;
CREATE TRIGGER cluster_outputs_ctx_del AFTER DELETE ON cluster_outputs
BEGIN
    UPDATE clusters SET ctx_version = ctx_version + 1 WHERE id = OLD.cluster_id;
END;

-- Context documents by sha256, kept so any controller (after a restart, or a second one)
-- serves the exact bytes a signed plan names. The newest few per cluster are kept.
CREATE TABLE cluster_contexts (
    digest      TEXT PRIMARY KEY,
    cluster_id  INTEGER NOT NULL REFERENCES clusters(id) ON DELETE CASCADE,
    body        BLOB NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX cluster_contexts_cluster ON cluster_contexts(cluster_id, created_at);

-- The tick's questions (a failed step? the lowest open phase? its pending steps?) by index.
CREATE INDEX steps_cluster_state ON steps(cluster_id, state, ord);
