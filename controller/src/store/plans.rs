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
    pub generation: i64,
}

impl Store {
    pub async fn cluster_head(&self, cluster_id: i64) -> Result<Option<ClusterHead>> {
        Ok(
            run!(self.reads(), sqlx::query_as::<_, (String, String, i64)>(
            "SELECT name, phase, generation FROM clusters WHERE id = $1",
        )
        .bind(cluster_id) => fetch_optional)?
            .map(|(name, phase, generation)| ClusterHead {
                generation,
                phase: phase
                    .parse()
                    .unwrap_or_else(|e| panic!("column phase: {e}")),
                name,
            }),
        )
    }

    /// The versions contexts are cached by (bumped by triggers on every change of a
    /// cluster's Clusterfile, hosts and outputs), for many clusters in one query; clusters
    /// that are gone are absent.
    pub async fn ctx_versions(
        &self,
        cluster_ids: &[i64],
    ) -> Result<std::collections::HashMap<i64, Option<i64>>> {
        let rows: Vec<(i64, i64)> = run!(self.reads(), sqlx::query_as(
            &format!("SELECT cluster_id, version FROM cluster_ctx_versions WHERE cluster_id IN {}", (self.dialect().json_ints)(1)),
        )
        .bind(serde_json::to_string(cluster_ids)?) => fetch_all)?;
        Ok(rows.into_iter().map(|(id, v)| (id, Some(v))).collect())
    }

    /// Stores a context document (once per digest) and drops the cluster's oldest beyond
    /// the newest `CONTEXTS_KEPT`.
    pub async fn save_context(&self, digest: &str, cluster_id: i64, body: &[u8]) -> Result<()> {
        let mut tx = self.write().await?;
        let inserted = run!(tx.conn(), sqlx::query(
            "INSERT INTO cluster_contexts (digest, cluster_id, body, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT(digest) DO NOTHING",
        )
        .bind(digest)
        .bind(cluster_id)
        .bind(body)
        .bind(now_unix()) => execute)?;
        if inserted > 0 {
            let order = tx.dialect().insert_order;
            run!(tx.conn(), sqlx::query(&format!(
                "DELETE FROM cluster_contexts WHERE cluster_id = $1 AND digest NOT IN
                   (SELECT digest FROM cluster_contexts WHERE cluster_id = $1 ORDER BY created_at DESC, {order} DESC LIMIT $2)",
            ))
            .bind(cluster_id)
            .bind(CONTEXTS_KEPT) => execute)?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A stored context: its cluster and bytes.
    pub async fn context(&self, digest: &str) -> Result<Option<(i64, Vec<u8>)>> {
        Ok(
            run!(self.reads(), sqlx::query_as("SELECT cluster_id, body FROM cluster_contexts WHERE digest = $1")
                .bind(digest) => fetch_optional)?,
        )
    }

    /// Whether a host has a released or running step in the cluster (may read its context).
    pub async fn has_open_step_in(&self, host_id: i64, cluster_id: i64) -> Result<bool> {
        let hint = (self.dialect().indexed_by)("steps_host");
        let n: i64 = run!(self.reads(), sqlx::query_scalar(&format!(
            "SELECT COUNT(*) FROM steps {hint} WHERE host_id = $1 AND cluster_id = $2 AND state IN ('released', 'running')",
        ))
        .bind(host_id)
        .bind(cluster_id) => fetch_one)?;
        Ok(n > 0)
    }

    /// The tick's view of a cluster: three indexed reads, however many steps it has. The
    /// same as `scheduler::View::of` over all its steps (a test holds them together).
    pub async fn tick_view(&self, cluster_id: i64) -> Result<TickView> {
        let hint = (self.dialect().indexed_by)("steps_cluster_state");
        let failure = run!(self.reads(), sqlx::query(&format!(
            "SELECT {STEP_COLS} FROM steps {hint} WHERE cluster_id = $1 AND state IN ('failed', 'interrupted') AND best_effort = 0 ORDER BY ord, host_name, id LIMIT 1"
        ))
        .bind(cluster_id) => fetch_optional |r| step_row(r))?
        .transpose()?;
        if failure.is_some() {
            return Ok(TickView {
                failure,
                ..TickView::default()
            });
        }
        // One index seek per state (MIN over an IN list would walk every open step).
        let open_ord: Option<i64> = run!(self.reads(), sqlx::query_scalar(
            &format!("SELECT MIN(o) FROM (
               SELECT (SELECT ord FROM steps {hint} WHERE cluster_id = $1 AND state = 'pending' ORDER BY ord LIMIT 1) AS o
               UNION ALL SELECT (SELECT ord FROM steps {hint} WHERE cluster_id = $1 AND state = 'released' ORDER BY ord LIMIT 1)
               UNION ALL SELECT (SELECT ord FROM steps {hint} WHERE cluster_id = $1 AND state = 'running' ORDER BY ord LIMIT 1)) AS open_ords"),
        )
        .bind(cluster_id) => fetch_one)?;
        let pending = match open_ord {
            Some(ord) => run!(self.reads(), sqlx::query(&format!(
                "SELECT {STEP_COLS} FROM steps {hint} WHERE cluster_id = $1 AND state = 'pending' AND ord = $2 ORDER BY host_name, id"
            ))
            .bind(cluster_id)
            .bind(ord) => fetch_all |r| step_row(r))?.into_iter()
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
