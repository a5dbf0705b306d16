//! The index of the images the registry serves (`migrations/sqlite/0012_images.sql`); the blobs
//! themselves are files in the image blob store.

use super::Columns;
use super::{Result, Store};

/// What one ingest adds, all under one `source`.
#[derive(Debug, Default, Clone)]
pub struct ImageRefs {
    /// (repo, digest, media type, size)
    pub manifests: Vec<(String, String, String, i64)>,
    /// (repo, tag, manifest digest)
    pub tags: Vec<(String, String, String)>,
    /// (repo, digest, size)
    pub blobs: Vec<(String, String, i64)>,
}

/// A tag the registry serves.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImageTagRow {
    pub repo: String,
    pub tag: String,
    pub digest: String,
    pub source: String,
}

impl Store {
    /// Records `refs` under `source`, in one transaction (audited as `image.load` when an
    /// `actor` is given). A tag another source set moves to this one (the newest wins).
    pub async fn add_images(
        &self,
        source: &str,
        refs: &ImageRefs,
        actor: Option<&str>,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        if let Some(actor) = actor {
            let tags: Vec<String> = refs
                .tags
                .iter()
                .map(|(r, t, _)| format!("{r}:{t}"))
                .collect();
            super::audit(&mut tx, actor, "image.load", source, Some(&tags.join(","))).await?;
        }
        for (repo, digest, media, size) in &refs.manifests {
            run!(tx.conn(), sqlx::query("INSERT INTO image_manifests (repo, digest, media_type, size, source) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (repo, digest, source) DO UPDATE SET media_type = excluded.media_type, size = excluded.size")
                .bind(repo).bind(digest).bind(media).bind(size).bind(source) => execute)?;
        }
        for (repo, digest, size) in &refs.blobs {
            run!(tx.conn(), sqlx::query("INSERT INTO image_blobs (repo, digest, size, source) VALUES ($1, $2, $3, $4) ON CONFLICT (repo, digest, source) DO UPDATE SET size = excluded.size")
                .bind(repo).bind(digest).bind(size).bind(source) => execute)?;
        }
        for (repo, tag, digest) in &refs.tags {
            run!(tx.conn(), sqlx::query("INSERT INTO image_tags (repo, tag, digest, source) VALUES ($1, $2, $3, $4) ON CONFLICT (repo, tag) DO UPDATE SET digest = excluded.digest, source = excluded.source")
                .bind(repo).bind(tag).bind(digest).bind(source) => execute)?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Removes what `source` brought; returns the digests no row names any more (their
    /// files can go).
    pub async fn remove_image_source(&self, source: &str) -> Result<Vec<String>> {
        let mut tx = self.write().await?;
        let mine: Vec<String> = run!(tx.conn(), sqlx::query(
            "SELECT digest FROM image_blobs WHERE source = $1 UNION SELECT digest FROM image_manifests WHERE source = $1",
        )
        .bind(source) => fetch_all |r| r.col("digest"))?.into_iter()
        .collect();
        for table in ["image_blobs", "image_manifests", "image_tags"] {
            run!(tx.conn(), sqlx::query(&format!("DELETE FROM {table} WHERE source = $1"))
                .bind(source) => execute)?;
        }
        let mut gone = Vec::new();
        for d in mine {
            let used: i64 = run!(tx.conn(), sqlx::query_scalar(
                "SELECT (SELECT COUNT(*) FROM image_blobs WHERE digest = $1) + (SELECT COUNT(*) FROM image_manifests WHERE digest = $1) AS n",
            )
            .bind(&d) => fetch_one)?;
            if used == 0 {
                gone.push(d);
            }
        }
        tx.commit().await?;
        Ok(gone)
    }

    /// Whether the registry has anything under `repo`.
    pub async fn image_repo_exists(&self, repo: &str) -> Result<bool> {
        let n: i64 = run!(self.reads(), sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM image_manifests WHERE repo = $1) + (SELECT COUNT(*) FROM image_tags WHERE repo = $1) AS n",
        )
        .bind(repo) => fetch_one)?;
        Ok(n > 0)
    }

    /// The manifest `reference` (a tag or a digest) names in `repo`: (digest, media type,
    /// size).
    pub async fn image_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Option<(String, String, i64)>> {
        let digest = if reference.starts_with("sha256:") {
            reference.to_string()
        } else {
            match run!(self.reads(), sqlx::query_scalar("SELECT digest FROM image_tags WHERE repo = $1 AND tag = $2")
                .bind(repo)
                .bind(reference) => fetch_optional)?
            {
                Some(d) => d,
                None => return Ok(None),
            }
        };
        Ok(run!(self.reads(), sqlx::query(
            "SELECT digest, media_type, size FROM image_manifests WHERE repo = $1 AND digest = $2 LIMIT 1",
        )
        .bind(repo)
        .bind(&digest) => fetch_optional |r| (r.col("digest"), r.col("media_type"), r.col("size")))?)
    }

    /// The size of blob `digest` in `repo` (a manifest counts as a blob of its repo).
    pub async fn image_blob(&self, repo: &str, digest: &str) -> Result<Option<i64>> {
        Ok(run!(self.reads(), sqlx::query(
            "SELECT size FROM image_blobs WHERE repo = $1 AND digest = $2 UNION ALL SELECT size FROM image_manifests WHERE repo = $1 AND digest = $2 LIMIT 1",
        )
        .bind(repo)
        .bind(digest) => fetch_optional |r| r.col("size"))?)
    }

    /// The tags of `repo`, sorted.
    pub async fn image_tag_names(&self, repo: &str) -> Result<Vec<String>> {
        Ok(
            run!(self.reads(), sqlx::query("SELECT tag FROM image_tags WHERE repo = $1 ORDER BY tag")
                .bind(repo) => fetch_all |r| r.col("tag"))?.into_iter()
                .collect(),
        )
    }

    /// Every tag the registry serves.
    pub async fn image_tags(&self) -> Result<Vec<ImageTagRow>> {
        Ok(
            run!(self.reads(), sqlx::query("SELECT repo, tag, digest, source FROM image_tags ORDER BY repo, tag") => fetch_all |r| ImageTagRow {
                    repo: r.col("repo"),
                    tag: r.col("tag"),
                    digest: r.col("digest"),
                    source: r.col("source"),
                })?.into_iter()
                .collect(),
        )
    }
}
