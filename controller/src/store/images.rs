//! The index of the images the registry serves (`migrations/0012_images.sql`); the blobs
//! themselves are files in the image blob store.

use super::{Result, Store};
use sqlx::Row;

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
            sqlx::query("INSERT OR REPLACE INTO image_manifests (repo, digest, media_type, size, source) VALUES (?1, ?2, ?3, ?4, ?5)")
                .bind(repo).bind(digest).bind(media).bind(size).bind(source)
                .execute(&mut *tx).await?;
        }
        for (repo, digest, size) in &refs.blobs {
            sqlx::query("INSERT OR REPLACE INTO image_blobs (repo, digest, size, source) VALUES (?1, ?2, ?3, ?4)")
                .bind(repo).bind(digest).bind(size).bind(source)
                .execute(&mut *tx).await?;
        }
        for (repo, tag, digest) in &refs.tags {
            sqlx::query("INSERT OR REPLACE INTO image_tags (repo, tag, digest, source) VALUES (?1, ?2, ?3, ?4)")
                .bind(repo).bind(tag).bind(digest).bind(source)
                .execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Removes what `source` brought; returns the digests no row names any more (their
    /// files can go).
    pub async fn remove_image_source(&self, source: &str) -> Result<Vec<String>> {
        let mut tx = self.write().await?;
        let mine: Vec<String> = sqlx::query(
            "SELECT digest FROM image_blobs WHERE source = ?1 UNION SELECT digest FROM image_manifests WHERE source = ?1",
        )
        .bind(source)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|r| r.get("digest"))
        .collect();
        for table in ["image_blobs", "image_manifests", "image_tags"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE source = ?1"))
                .bind(source)
                .execute(&mut *tx)
                .await?;
        }
        let mut gone = Vec::new();
        for d in mine {
            let used: i64 = sqlx::query(
                "SELECT (SELECT COUNT(*) FROM image_blobs WHERE digest = ?1) + (SELECT COUNT(*) FROM image_manifests WHERE digest = ?1) AS n",
            )
            .bind(&d)
            .fetch_one(&mut *tx)
            .await?
            .get("n");
            if used == 0 {
                gone.push(d);
            }
        }
        tx.commit().await?;
        Ok(gone)
    }

    /// Whether the registry has anything under `repo`.
    pub async fn image_repo_exists(&self, repo: &str) -> Result<bool> {
        let n: i64 = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM image_manifests WHERE repo = ?1) + (SELECT COUNT(*) FROM image_tags WHERE repo = ?1) AS n",
        )
        .bind(repo)
        .fetch_one(&self.pool)
        .await?
        .get("n");
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
            match sqlx::query("SELECT digest FROM image_tags WHERE repo = ?1 AND tag = ?2")
                .bind(repo)
                .bind(reference)
                .fetch_optional(&self.pool)
                .await?
            {
                Some(r) => r.get("digest"),
                None => return Ok(None),
            }
        };
        let row = sqlx::query(
            "SELECT digest, media_type, size FROM image_manifests WHERE repo = ?1 AND digest = ?2 LIMIT 1",
        )
        .bind(repo)
        .bind(&digest)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| (r.get("digest"), r.get("media_type"), r.get("size"))))
    }

    /// The size of blob `digest` in `repo` (a manifest counts as a blob of its repo).
    pub async fn image_blob(&self, repo: &str, digest: &str) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT size FROM image_blobs WHERE repo = ?1 AND digest = ?2 UNION ALL SELECT size FROM image_manifests WHERE repo = ?1 AND digest = ?2 LIMIT 1",
        )
        .bind(repo)
        .bind(digest)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.get("size")))
    }

    /// The tags of `repo`, sorted.
    pub async fn image_tag_names(&self, repo: &str) -> Result<Vec<String>> {
        Ok(
            sqlx::query("SELECT tag FROM image_tags WHERE repo = ?1 ORDER BY tag")
                .bind(repo)
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .map(|r| r.get("tag"))
                .collect(),
        )
    }

    /// Every tag the registry serves.
    pub async fn image_tags(&self) -> Result<Vec<ImageTagRow>> {
        Ok(
            sqlx::query("SELECT repo, tag, digest, source FROM image_tags ORDER BY repo, tag")
                .fetch_all(&self.pool)
                .await?
                .into_iter()
                .map(|r| ImageTagRow {
                    repo: r.get("repo"),
                    tag: r.get("tag"),
                    digest: r.get("digest"),
                    source: r.get("source"),
                })
                .collect(),
        )
    }
}
