-- Bundles: content-addressed blobs (stored on disk under blobs/sha256/) and name:tag refs.

CREATE TABLE bundles (
    digest      TEXT PRIMARY KEY,          -- sha256:<hex> of the packed blob
    size        INTEGER NOT NULL,
    name        TEXT NOT NULL,             -- from bundle.yaml
    version     TEXT NOT NULL,
    type        TEXT NOT NULL,
    manifest    TEXT NOT NULL,             -- validated manifest, JSON
    created_at  INTEGER NOT NULL
);

CREATE TABLE bundle_tags (
    name        TEXT NOT NULL,
    tag         TEXT NOT NULL,
    digest      TEXT NOT NULL REFERENCES bundles(digest) ON DELETE CASCADE,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (name, tag)
);
