//! Consistent online snapshots of the store, and what a restore changes.

use super::{audit, Result, Store};
use std::path::Path;

/// Counts shown after a restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inventory {
    pub hosts: i64,
    pub clusters: i64,
    pub bundles: i64,
}

/// Plan generations jump by this much on restore, past anything the controller the
/// backup came from can have sent after the snapshot, so agents accept the restored
/// controller's plans (they refuse a generation they have seen).
pub const RESTORE_GENERATION_JUMP: i64 = 1_000_000;

impl Store {
    /// Writes a consistent copy of the whole database to `dest` (`VACUUM INTO`: one read
    /// transaction, while the controller keeps serving).
    pub async fn snapshot_into(&self, dest: &Path) -> Result<()> {
        let dest = dest
            .to_str()
            .ok_or_else(|| super::StoreError::Conflict("the snapshot path is not UTF-8".into()))?;
        sqlx::query("VACUUM INTO ?1")
            .bind(dest)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Digests (with sizes) of every bundle, agent executable and registry blob a
    /// database snapshot names: exactly the files a backup of it must carry.
    pub async fn snapshot_blobs(snapshot: &Path) -> Result<[Vec<(String, i64)>; 3]> {
        use sqlx::Connection;
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(snapshot)
            .read_only(true);
        let mut conn = sqlx::SqliteConnection::connect_with(&opts).await?;
        let bundles = sqlx::query_as("SELECT digest, size FROM bundles ORDER BY digest")
            .fetch_all(&mut conn)
            .await?;
        let agents =
            sqlx::query_as("SELECT DISTINCT digest, size FROM agent_binaries ORDER BY digest")
                .fetch_all(&mut conn)
                .await?;
        let images = sqlx::query_as(
            "SELECT digest, size FROM image_blobs UNION SELECT digest, size FROM image_manifests ORDER BY digest",
        )
        .fetch_all(&mut conn)
        .await?;
        conn.close().await?;
        Ok([bundles, agents, images])
    }

    pub async fn inventory(&self) -> Result<Inventory> {
        let n = |sql: &'static str| async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&self.pool)
                .await
        };
        Ok(Inventory {
            hosts: n("SELECT COUNT(*) FROM hosts").await?,
            clusters: n("SELECT COUNT(*) FROM clusters").await?,
            bundles: n("SELECT COUNT(*) FROM bundles").await?,
        })
    }

    /// What a restore changes in the restored database: plan generations jump ahead, and
    /// the audit log says where the data came from.
    pub async fn mark_restored(&self, from: &str) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query("UPDATE hosts SET plan_generation = plan_generation + ?1")
            .bind(RESTORE_GENERATION_JUMP)
            .execute(&mut *tx)
            .await?;
        audit(&mut tx, "berth restore", "controller.restore", from, None).await?;
        tx.commit().await?;
        Ok(())
    }
}
