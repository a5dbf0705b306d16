//! The event log: what happened to clusters and their steps, in order (`berth get events`).
//! Phase changes and step transitions are written by triggers (migration 0015); the engine
//! adds its own (applies, upgrade batches, rollbacks, resets, skipped hosts, execs).

use super::Result;
use super::Store;
use super::WriteTx;

/// Events kept; older ones are pruned.
pub const EVENTS_KEPT: i64 = 200_000;

/// One event.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct EventRow {
    pub id: i64,
    pub at_ms: i64,
    pub cluster: Option<String>,
    pub host: Option<String>,
    pub kind: String,
    pub message: String,
}

/// Which events to read.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub cluster: Option<String>,
    /// Only events with a larger id.
    pub after: i64,
    pub kind: Option<String>,
    pub limit: u32,
    /// The newest `limit` (still in order) instead of the oldest after `after`.
    pub tail: bool,
}

/// Records an event on `conn` (inside the transaction that makes the change it tells of).
pub async fn record(
    conn: &mut WriteTx,
    cluster: &str,
    host: Option<&str>,
    kind: &str,
    message: &str,
) -> Result<()> {
    let now_ms = conn.dialect().now_ms;
    run!(conn.conn(), sqlx::query(&format!(
        "INSERT INTO events (at_ms, cluster, host, kind, message)
         VALUES ({now_ms}, $1, $2, $3, $4)",
    ))
    .bind(cluster)
    .bind(host)
    .bind(kind)
    .bind(berth_shared::text::clip(message, 2000)) => execute)?;
    Ok(())
}

impl Store {
    /// Records an event in a transaction of its own.
    pub async fn record_event(
        &self,
        cluster: &str,
        host: Option<&str>,
        kind: &str,
        message: &str,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        record(&mut tx, cluster, host, kind, message).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn events(&self, q: &EventQuery) -> Result<Vec<EventRow>> {
        let order = if q.tail { "DESC" } else { "ASC" };
        let mut v: Vec<EventRow> = run!(self.reads(), sqlx::query_as(&format!(
            "SELECT id, at_ms, cluster, host, kind, message FROM events
             WHERE id > $1 AND ($2 IS NULL OR cluster = $2) AND ($3 IS NULL OR kind = $3)
             ORDER BY id {order} LIMIT $4"
        ))
        .bind(q.after)
        .bind(&q.cluster)
        .bind(&q.kind)
        .bind(i64::from(q.limit)) => fetch_all)?;
        if q.tail {
            v.reverse();
        }
        Ok(v)
    }

    /// Drops all but the newest [`EVENTS_KEPT`] events.
    pub async fn prune_events(&self) -> Result<u64> {
        Ok(write_one!(
            self,
            sqlx::query("DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - $1")
                .bind(EVENTS_KEPT)
        )?)
    }
}
