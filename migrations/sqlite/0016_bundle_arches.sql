-- Mixed-arch fleets: a tag holds one digest per architecture. `bundle_tags` keeps the
-- tag's primary digest (what applies resolve and what hosts of an architecture the tag
-- has no digest for are checked against); this table the digest per architecture, added
-- by `berth bundle push --arch A` or a bundle.yaml `arch:`. A push without an
-- architecture replaces the whole tag.
CREATE TABLE bundle_tag_arches (
    name        TEXT NOT NULL,
    tag         TEXT NOT NULL,
    arch        TEXT NOT NULL,
    digest      TEXT NOT NULL REFERENCES bundles(digest) ON DELETE CASCADE,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (name, tag, arch)
);
CREATE TRIGGER bundle_tags_del_arches AFTER DELETE ON bundle_tags
BEGIN
    DELETE FROM bundle_tag_arches WHERE name = old.name AND tag = old.tag;
END;
