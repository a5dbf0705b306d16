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
    /// Why `berth backup` cannot copy this store, when it cannot: a PostgreSQL store is
    /// backed up with PostgreSQL's tools.
    pub fn backup_refusal(&self) -> Option<&'static str> {
        match self.db {
            super::Db::Sqlite(_) => None,
            super::Db::Postgres(_) => Some(super::postgres::BACKUP_REFUSAL),
        }
    }

    /// Writes a consistent copy of the whole database to `dest` (on SQLite `VACUUM INTO`:
    /// one read transaction, while the controller keeps serving). A PostgreSQL store is
    /// backed up with PostgreSQL's own tools: this refuses, naming them.
    pub async fn snapshot_into(&self, dest: &Path) -> Result<()> {
        let dest = dest
            .to_str()
            .ok_or_else(|| super::StoreError::Conflict("the snapshot path is not UTF-8".into()))?;
        match &self.db {
            super::Db::Sqlite(p) => Ok(p.snapshot_into(dest).await?),
            super::Db::Postgres(_) => Err(super::StoreError::Conflict(
                super::postgres::BACKUP_REFUSAL.into(),
            )),
        }
    }

    /// Digests (with sizes) of every bundle, agent executable and registry blob a
    /// database snapshot names: exactly the files a backup of it must carry.
    pub async fn snapshot_blobs(snapshot: &Path) -> Result<[Vec<(String, i64)>; 3]> {
        Ok(super::sqlite::snapshot_blobs(snapshot).await?)
    }

    pub async fn inventory(&self) -> Result<Inventory> {
        let n = |sql: &'static str| async move {
            run!(self.reads(), sqlx::query_scalar::<_, i64>(sql) => fetch_one)
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
        run!(tx.conn(), sqlx::query("UPDATE hosts SET plan_generation = plan_generation + $1")
            .bind(RESTORE_GENERATION_JUMP) => execute)?;
        audit(&mut tx, "berth restore", "controller.restore", from, None).await?;
        tx.commit().await?;
        Ok(())
    }
}
