-- Scale: a cluster's context version lives in a row of its own. The triggers of 0007 bumped
-- it on the clusters row, which holds the Clusterfile and spec: an apply adding 19,000
-- hosts rewrote that megabyte row 19,000 times (2.3 s). Bumping a two-column row costs
-- the same at any cluster size.
CREATE TABLE cluster_ctx_versions (
    cluster_id  INTEGER PRIMARY KEY REFERENCES clusters(id) ON DELETE CASCADE,
    version     INTEGER NOT NULL
);
INSERT INTO cluster_ctx_versions (cluster_id, version) SELECT id, ctx_version FROM clusters;

DROP TRIGGER clusters_ctx;
DROP TRIGGER cluster_hosts_ctx_ins;
DROP TRIGGER cluster_hosts_ctx_upd;
DROP TRIGGER cluster_hosts_ctx_del;
DROP TRIGGER cluster_outputs_ctx_ins;
DROP TRIGGER cluster_outputs_ctx_upd;
DROP TRIGGER cluster_outputs_ctx_del;
ALTER TABLE clusters DROP COLUMN ctx_version;

CREATE TRIGGER clusters_ctx_new AFTER INSERT ON clusters
BEGIN
    INSERT INTO cluster_ctx_versions (cluster_id, version) VALUES (NEW.id, 0);
END;
CREATE TRIGGER clusters_ctx AFTER UPDATE OF clusterfile, spec ON clusters
BEGIN
    UPDATE cluster_ctx_versions SET version = version + 1 WHERE cluster_id = NEW.id;
END;
CREATE TRIGGER cluster_hosts_ctx_ins AFTER INSERT ON cluster_hosts
BEGIN
    UPDATE cluster_ctx_versions SET version = version + 1 WHERE cluster_id = NEW.cluster_id;
END;
CREATE TRIGGER cluster_hosts_ctx_upd AFTER UPDATE ON cluster_hosts
BEGIN
    UPDATE cluster_ctx_versions SET version = version + 1 WHERE cluster_id IN (OLD.cluster_id, NEW.cluster_id);
END;
CREATE TRIGGER cluster_hosts_ctx_del AFTER DELETE ON cluster_hosts
BEGIN
    UPDATE cluster_ctx_versions SET version = version + 1 WHERE cluster_id = OLD.cluster_id;
END;
CREATE TRIGGER cluster_outputs_ctx_ins AFTER INSERT ON cluster_outputs
BEGIN
    UPDATE cluster_ctx_versions SET version = version + 1 WHERE cluster_id = NEW.cluster_id;
END;
CREATE TRIGGER cluster_outputs_ctx_upd AFTER UPDATE ON cluster_outputs
BEGIN
    UPDATE cluster_ctx_versions SET version = version + 1 WHERE cluster_id IN (OLD.cluster_id, NEW.cluster_id);
END;
CREATE TRIGGER cluster_outputs_ctx_del AFTER DELETE ON cluster_outputs
BEGIN
    UPDATE cluster_ctx_versions SET version = version + 1 WHERE cluster_id = OLD.cluster_id;
END;
