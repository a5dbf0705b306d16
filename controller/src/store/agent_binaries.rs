//! Which berth-agent executable is served per OS and architecture.

use super::Columns;
use super::{audit, Result, Store};
use crate::time::now_unix;

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
        Ok(run!(self.reads(), sqlx::query(
            "SELECT os, arch, digest, size, source, added_at FROM agent_binaries ORDER BY os, arch",
        ) => fetch_all |r| binary_row(r))?)
    }

    pub async fn agent_binary(&self, os: &str, arch: &str) -> Result<Option<AgentBinaryRow>> {
        Ok(run!(self.reads(), sqlx::query(
            "SELECT os, arch, digest, size, source, added_at FROM agent_binaries WHERE os = $1 AND arch = $2",
        )
        .bind(os)
        .bind(arch) => fetch_optional |r| binary_row(r))?)
    }

    /// Serves `digest` for `os`/`arch`. A `bundled` binary (found next to the controller)
    /// never replaces one an operator `added`.
    pub async fn set_agent_binary(&self, b: &AgentBinaryRow, actor: &str) -> Result<bool> {
        let mut tx = self.write().await?;
        let current: Option<(String, String)> = run!(tx.conn(), sqlx::query("SELECT digest, source FROM agent_binaries WHERE os = $1 AND arch = $2")
                .bind(&b.os)
                .bind(&b.arch) => fetch_optional |r| (r.col("digest"), r.col("source")))?;
        match &current {
            Some((_, source)) if source == "added" && b.source == "bundled" => return Ok(false),
            Some((digest, source)) if *digest == b.digest && *source == b.source => {
                return Ok(false)
            }
            _ => {}
        }
        run!(tx.conn(), sqlx::query(
            "INSERT INTO agent_binaries (os, arch, digest, size, source, added_at) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (os, arch) DO UPDATE SET digest = excluded.digest, size = excluded.size,
                 source = excluded.source, added_at = excluded.added_at",
        )
        .bind(&b.os)
        .bind(&b.arch)
        .bind(&b.digest)
        .bind(b.size)
        .bind(&b.source)
        .bind(now_unix()) => execute)?;
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
        change_audited!(
            self,
            sqlx::query("DELETE FROM agent_binaries WHERE os = $1 AND arch = $2")
                .bind(os)
                .bind(arch),
            actor,
            "agent-binary.remove",
            &format!("{os}/{arch}")
        )
    }

    /// Digests still served (the rest of the stored files may be removed).
    pub async fn agent_binary_digests(&self) -> Result<Vec<String>> {
        Ok(
            run!(self.reads(), sqlx::query_scalar("SELECT DISTINCT digest FROM agent_binaries") => fetch_all)?,
        )
    }
}

fn binary_row(r: impl super::Columns) -> AgentBinaryRow {
    AgentBinaryRow {
        os: r.col("os"),
        arch: r.col("arch"),
        digest: r.col("digest"),
        size: r.col("size"),
        source: r.col("source"),
        added_at: r.col("added_at"),
    }
}
