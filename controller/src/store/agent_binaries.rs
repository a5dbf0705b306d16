//! Which berth-agent executable is served per OS and architecture.

use super::{audit, Result, Store};
use crate::time::now_unix;
use sqlx::Row;

/// A served agent executable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentBinaryRow {
    pub os: String,
    pub arch: String,
    /// `sha256:<hex>`.
    pub digest: String,
    pub size: i64,
    /// `bundled` or `added`.
    pub source: String,
    pub added_at: i64,
}

impl Store {
    pub async fn agent_binaries(&self) -> Result<Vec<AgentBinaryRow>> {
        let rows = sqlx::query(
            "SELECT os, arch, digest, size, source, added_at FROM agent_binaries ORDER BY os, arch",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(binary_row).collect())
    }

    pub async fn agent_binary(&self, os: &str, arch: &str) -> Result<Option<AgentBinaryRow>> {
        let row = sqlx::query(
            "SELECT os, arch, digest, size, source, added_at FROM agent_binaries WHERE os = ?1 AND arch = ?2",
        )
        .bind(os)
        .bind(arch)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(binary_row))
    }

    /// Serves `digest` for `os`/`arch`. A `bundled` binary (found next to the controller)
    /// never replaces one an operator `added`.
    pub async fn set_agent_binary(&self, b: &AgentBinaryRow, actor: &str) -> Result<bool> {
        let mut tx = self.write().await?;
        let current: Option<(String, String)> =
            sqlx::query("SELECT digest, source FROM agent_binaries WHERE os = ?1 AND arch = ?2")
                .bind(&b.os)
                .bind(&b.arch)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| (r.get("digest"), r.get("source")));
        match &current {
            Some((_, source)) if source == "added" && b.source == "bundled" => return Ok(false),
            Some((digest, source)) if *digest == b.digest && *source == b.source => {
                return Ok(false)
            }
            _ => {}
        }
        sqlx::query(
            "INSERT INTO agent_binaries (os, arch, digest, size, source, added_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (os, arch) DO UPDATE SET digest = excluded.digest, size = excluded.size,
                 source = excluded.source, added_at = excluded.added_at",
        )
        .bind(&b.os)
        .bind(&b.arch)
        .bind(&b.digest)
        .bind(b.size)
        .bind(&b.source)
        .bind(now_unix())
        .execute(&mut *tx)
        .await?;
        audit(
            &mut tx,
            actor,
            "agent-binary.set",
            &format!("{}/{}", b.os, b.arch),
            Some(&format!("{} source={}", b.digest, b.source)),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Stops serving an agent for `os`/`arch`; false when none was served.
    pub async fn remove_agent_binary(&self, os: &str, arch: &str, actor: &str) -> Result<bool> {
        let q = sqlx::query("DELETE FROM agent_binaries WHERE os = ?1 AND arch = ?2")
            .bind(os)
            .bind(arch);
        self.change_audited(q, actor, "agent-binary.remove", &format!("{os}/{arch}"))
            .await
    }

    /// Digests still served (the rest of the stored files may be removed).
    pub async fn agent_binary_digests(&self) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT DISTINCT digest FROM agent_binaries")
                .fetch_all(&self.pool)
                .await?,
        )
    }
}

fn binary_row(r: sqlx::sqlite::SqliteRow) -> AgentBinaryRow {
    AgentBinaryRow {
        os: r.get("os"),
        arch: r.get("arch"),
        digest: r.get("digest"),
        size: r.get("size"),
        source: r.get("source"),
        added_at: r.get("added_at"),
    }
}
