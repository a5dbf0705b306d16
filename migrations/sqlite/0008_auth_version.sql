-- Scale: the controller keeps the host behind each client certificate in memory. This
-- counter moves whenever what authenticates a host changes (its name, state or
-- certificates, or the row itself), whoever wrote it, so a controller re-reads its cached
-- hosts when the counter moved instead of re-reading each host on every poll. Heartbeats
-- and facts do not move it.
CREATE TABLE host_auth_version (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    n   INTEGER NOT NULL
);
INSERT INTO host_auth_version (id, n) VALUES (1, 0);

CREATE TRIGGER hosts_auth_ins AFTER INSERT ON hosts
BEGIN
    UPDATE host_auth_version SET n = n + 1 WHERE id = 1;
END;
CREATE TRIGGER hosts_auth_upd AFTER UPDATE OF name, state, cert_fingerprint, prev_cert_fingerprint ON hosts
BEGIN
    UPDATE host_auth_version SET n = n + 1 WHERE id = 1;
END;
CREATE TRIGGER hosts_auth_del AFTER DELETE ON hosts
BEGIN
    UPDATE host_auth_version SET n = n + 1 WHERE id = 1;
END;
