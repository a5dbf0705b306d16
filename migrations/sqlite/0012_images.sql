-- Container images the controller serves over the OCI Distribution API (read-only): what
-- bundles carry (`registry/`, `images/`) and what `berth image load` stored. `source` is
-- what brought a row (`bundle:sha256:…` or `load:<time>`): removing a bundle removes its
-- rows, and blobs no row names any more are deleted from `images/`.
CREATE TABLE image_manifests (
    repo       TEXT NOT NULL,
    digest     TEXT NOT NULL,
    media_type TEXT NOT NULL,
    size       INTEGER NOT NULL,
    source     TEXT NOT NULL,
    PRIMARY KEY (repo, digest, source)
) WITHOUT ROWID;

CREATE TABLE image_tags (
    repo   TEXT NOT NULL,
    tag    TEXT NOT NULL,
    digest TEXT NOT NULL,
    source TEXT NOT NULL,
    PRIMARY KEY (repo, tag)
) WITHOUT ROWID;

CREATE TABLE image_blobs (
    repo   TEXT NOT NULL,
    digest TEXT NOT NULL,
    size   INTEGER NOT NULL,
    source TEXT NOT NULL,
    PRIMARY KEY (repo, digest, source)
) WITHOUT ROWID;
CREATE INDEX image_blobs_by_source ON image_blobs (source);
CREATE INDEX image_manifests_by_source ON image_manifests (source);
