-- Agent-caused events, bounded: one row per host and kind (a count, first and last time,
-- the last message), gone with the host. `agent_events` grew by a row per report entry
-- and was never read or pruned; a host could add 200,000 rows in seconds.
DROP TABLE agent_events;

CREATE TABLE host_events (
    host_id   INTEGER NOT NULL REFERENCES hosts(id) ON DELETE CASCADE,
    kind      TEXT NOT NULL,
    count     INTEGER NOT NULL,
    first_at  INTEGER NOT NULL,
    last_at   INTEGER NOT NULL,
    message   TEXT NOT NULL,
    -- When the controller last logged this host's events of this kind (at most once a
    -- minute).
    logged_at INTEGER NOT NULL,
    PRIMARY KEY (host_id, kind)
) WITHOUT ROWID;
