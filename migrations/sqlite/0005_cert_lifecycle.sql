-- Trust that lasts: certificate renewal, re-enrollment and served agent binaries.

-- A renewal records the new certificate and keeps the one the agent renewed with usable
-- until the agent presents the new one (or the old one expires): a renewal answer lost on
-- the way never locks the host out. Re-enrollment clears it, so the old key is refused.
ALTER TABLE hosts ADD COLUMN prev_cert_fingerprint TEXT;
-- When the current certificate expires (unix seconds); NULL for hosts enrolled before.
ALTER TABLE hosts ADD COLUMN cert_not_after INTEGER;
CREATE UNIQUE INDEX hosts_prev_cert_fingerprint ON hosts (prev_cert_fingerprint);

-- A token bound to one enrolled host: it may re-enroll that host and nothing else.
ALTER TABLE bootstrap_tokens ADD COLUMN reenroll_host TEXT;

-- berth-agent executables served to installing hosts, per OS and architecture, stored
-- content-addressed under <data-dir>/agent-binaries/.
CREATE TABLE agent_binaries (
    os        TEXT NOT NULL,
    arch      TEXT NOT NULL,
    digest    TEXT NOT NULL,
    size      INTEGER NOT NULL CHECK (size > 0),
    source    TEXT NOT NULL CHECK (source IN ('bundled', 'added')),
    added_at  INTEGER NOT NULL,
    PRIMARY KEY (os, arch)
);
