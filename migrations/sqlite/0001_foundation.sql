-- Foundation: API tokens, bootstrap tokens, enrolled hosts and the audit log.
-- Times are unix seconds (UTC).

CREATE TABLE api_tokens (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    role        TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    secret_hash TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);

CREATE TABLE bootstrap_tokens (
    id          TEXT PRIMARY KEY,
    secret_hash TEXT NOT NULL,
    description TEXT,
    uses_left   INTEGER NOT NULL CHECK (uses_left >= 0),
    uses_total  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    created_by  TEXT NOT NULL
);

CREATE TABLE hosts (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    name             TEXT NOT NULL UNIQUE,
    cert_fingerprint TEXT NOT NULL UNIQUE,
    cert_serial      TEXT NOT NULL,
    state            TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'revoked')),
    facts            TEXT NOT NULL,
    enrolled_with    TEXT NOT NULL,
    enrolled_at      INTEGER NOT NULL,
    last_seen        INTEGER NOT NULL,
    revoked_at       INTEGER
);

CREATE TABLE audit_log (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     INTEGER NOT NULL,
    actor  TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT
);
