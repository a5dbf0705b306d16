//! SQL behind plans and ticks at scale: context documents by digest, the cluster version
//! they are cached by, and the few indexed questions a tick asks.

use super::clusters::{step_row, StepRow, STEP_COLS};
use super::Result;
use super::Store;
use crate::time::now_unix;
use berth_shared::state::ClusterPhase;

/// Context documents kept per cluster (older ones are named by no plan still in use).
const CONTEXTS_KEPT: i64 = 32;

/// What a tick needs to know about a cluster's steps (see `scheduler::View`).
pub type TickView = crate::scheduler::View<StepRow>;

/// A cluster's name and phase, without its Clusterfile.
#[derive(Debug, Clone)]
pub struct ClusterHead {
    pub name: String,
    pub phase: ClusterPhase,
}

impl Store {
    pub async fn cluster_head(&self, cluster_id: i64) -> Result<Option<ClusterHead>> {
        Ok(sqlx::query_as::<_, (String, ClusterPhase)>(
            "SELECT name, phase FROM clusters WHERE id = ?1",
        )
        .bind(cluster_id)
        .fetch_optional(&self.pool)
        .await?
        .map(|(name, phase)| ClusterHead { name, phase }))
    }

    /// The versions contexts are cached by (bumped by triggers on every change of a
    /// cluster's Clusterfile, hosts and outputs), for many clusters in one query; clusters
    /// that are gone are absent.
    pub async fn ctx_versions(
        &self,
        cluster_ids: &[i64],
    ) -> Result<std::collections::HashMap<i64, Option<i64>>> {
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT cluster_id, version FROM cluster_ctx_versions WHERE cluster_id IN (SELECT value FROM json_each(?1))",
        )
        .bind(serde_json::to_string(cluster_ids)?)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(id, v)| (id, Some(v))).collect())
    }

    /// Stores a context document (once per digest) and drops the cluster's oldest beyond
    /// the newest `CONTEXTS_KEPT`.
    pub async fn save_context(&self, digest: &str, cluster_id: i64, body: &[u8]) -> Result<()> {
        let mut tx = self.write().await?;
        let inserted = sqlx::query(
            "INSERT INTO cluster_contexts (digest, cluster_id, body, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(digest) DO NOTHING",
        )
        .bind(digest)
        .bind(cluster_id)
        .bind(body)
        .bind(now_unix())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted > 0 {
            sqlx::query(
                "DELETE FROM cluster_contexts WHERE cluster_id = ?1 AND digest NOT IN
                   (SELECT digest FROM cluster_contexts WHERE cluster_id = ?1 ORDER BY created_at DESC, rowid DESC LIMIT ?2)",
            )
            .bind(cluster_id)
            .bind(CONTEXTS_KEPT)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A stored context: its cluster and bytes.
    pub async fn context(&self, digest: &str) -> Result<Option<(i64, Vec<u8>)>> {
        Ok(
            sqlx::query_as("SELECT cluster_id, body FROM cluster_contexts WHERE digest = ?1")
                .bind(digest)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Whether a host has a released or running step in the cluster (may read its context).
    pub async fn has_open_step_in(&self, host_id: i64, cluster_id: i64) -> Result<bool> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM steps INDEXED BY steps_host WHERE host_id = ?1 AND cluster_id = ?2 AND state IN ('released', 'running')",
        )
        .bind(host_id)
        .bind(cluster_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(n > 0)
    }

    /// The tick's view of a cluster: three indexed reads, however many steps it has. The
    /// same as `scheduler::View::of` over all its steps (a test holds them together).
    pub async fn tick_view(&self, cluster_id: i64) -> Result<TickView> {
        let mut conn = self.pool.acquire().await?;
        let failure = sqlx::query(&format!(
            "SELECT {STEP_COLS} FROM steps INDEXED BY steps_cluster_state WHERE cluster_id = ?1 AND state IN ('failed', 'interrupted') AND best_effort = 0 ORDER BY ord, host_name, id LIMIT 1"
        ))
        .bind(cluster_id)
        .fetch_optional(&mut *conn)
        .await?
        .map(step_row)
        .transpose()?;
        if failure.is_some() {
            return Ok(TickView {
                failure,
                ..TickView::default()
            });
        }
        // One index seek per state (MIN over an IN list would walk every open step).
        let open_ord: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(o) FROM (
               SELECT (SELECT ord FROM steps INDEXED BY steps_cluster_state WHERE cluster_id = ?1 AND state = 'pending' ORDER BY ord LIMIT 1) AS o
               UNION ALL SELECT (SELECT ord FROM steps INDEXED BY steps_cluster_state WHERE cluster_id = ?1 AND state = 'released' ORDER BY ord LIMIT 1)
               UNION ALL SELECT (SELECT ord FROM steps INDEXED BY steps_cluster_state WHERE cluster_id = ?1 AND state = 'running' ORDER BY ord LIMIT 1))",
        )
        .bind(cluster_id)
        .fetch_one(&mut *conn)
        .await?;
        let pending = match open_ord {
            Some(ord) => sqlx::query(&format!(
                "SELECT {STEP_COLS} FROM steps INDEXED BY steps_cluster_state WHERE cluster_id = ?1 AND state = 'pending' AND ord = ?2 ORDER BY host_name, id"
            ))
            .bind(cluster_id)
            .bind(ord)
            .fetch_all(&mut *conn)
            .await?
            .into_iter()
            .map(step_row)
            .collect::<Result<_>>()?,
            None => Vec::new(),
        };
        Ok(TickView {
            failure: None,
            open_ord,
            pending,
        })
    }
}
