//! The controllers sharing this database and the clusters each one ticks. A controller
//! renews its row and its leases every round (about a second); a lease it stops renewing
//! expires after the lease time and the others claim it. Times are the database's clock,
//! so controllers' clocks need not agree.

use super::{Columns, Result, Store, StoreError};
use std::collections::{BTreeMap, HashMap};

/// What a controller says about itself (shown by `berth get controllers`).
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub url: String,
    pub version: String,
    /// The PKI it serves with: every controller of a database must have the same one.
    pub ca_hash: String,
    pub plan_key_id: String,
}

/// One round's outcome, as of its commit.
#[derive(Debug, Default)]
pub struct Round {
    /// Every cluster this controller holds now (renewed or claimed).
    pub mine: Vec<i64>,
    /// Those it claimed in this round (another's lapsed, or nobody's).
    pub claimed: Vec<i64>,
    /// Clusters other controllers hold, with when their leases end.
    pub others: HashMap<i64, i64>,
    /// The database's clock at the round.
    pub now_ms: i64,
}

/// A controller as `berth get controllers` shows it.
#[derive(Debug, Clone)]
pub struct MemberRow {
    pub id: String,
    pub name: String,
    pub url: String,
    pub version: String,
    pub ca_hash: String,
    pub started_ms: i64,
    pub seen_ms: i64,
    /// Seen within the lease time.
    pub live: bool,
    /// Names of the clusters it holds.
    pub clusters: Vec<String>,
}

/// A controller row not renewed for this long is forgotten.
const FORGET_AFTER_MS: i64 = 10 * 60 * 1000;

impl Store {
    /// Enters this controller among those serving the database, after checking that every
    /// live one serves with the same CA and plan-signing key (agents enrolled by one must
    /// be trusted by all, and plans signed by one verified by all) — before this start
    /// writes anything else. A PKI this start created (`fresh_pki`) must also match the
    /// controllers seen in the last ten minutes: the usual mistake is a second controller
    /// started on an empty data dir while the first is briefly down.
    pub async fn join(&self, me: &Member, ttl_ms: i64, fresh_pki: bool) -> Result<()> {
        let mut tx = self.write().await?;
        let now = (tx.dialect().now_ms).to_string();
        let others: Vec<(String, String, String, String)> = run!(tx.conn(), sqlx::query_as(&format!(
            "SELECT name, url, ca_hash, plan_key_id FROM controllers
             WHERE id != $1 AND (seen_ms >= {now} - $2 OR ($3 AND seen_ms >= {now} - $4))
             ORDER BY seen_ms DESC"
        ))
        .bind(self.member_id())
        .bind(ttl_ms)
        .bind(fresh_pki)
        .bind(FORGET_AFTER_MS) => fetch_all)?;
        if let Some((name, url, ca, key)) = others
            .iter()
            .find(|(_, _, ca, key)| *ca != me.ca_hash || *key != me.plan_key_id)
        {
            let what = if *ca != me.ca_hash {
                format!("CA {ca}, this one {}", me.ca_hash)
            } else {
                format!("plan-signing key {key}, this one {}", me.plan_key_id)
            };
            return Err(StoreError::Conflict(format!(
                "controller {name} ({url}) serves this database with another PKI ({what}): every controller of one database needs the same `pki/` — copy {name}'s <data-dir>/pki to this controller's data dir (see docs/scale-out.md, \"Several controllers\"); when rotating the CA on purpose, stop every controller first (one stopped cleanly leaves the list at once, one killed after ten minutes)"
            )));
        }
        if !self.shared() {
            // SQLite is one controller's (one `berth serve` per data dir): what an earlier
            // process held, it held for this one — a restart after a crash ticks at once.
            run!(tx.conn(), sqlx::query("DELETE FROM cluster_leases") => execute)?;
            run!(tx.conn(), sqlx::query("DELETE FROM controllers") => execute)?;
        }
        self.upsert_member(&mut tx, me).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn upsert_member(&self, tx: &mut super::WriteTx, me: &Member) -> Result<()> {
        let now = (tx.dialect().now_ms).to_string();
        run!(tx.conn(), sqlx::query(&format!(
            "INSERT INTO controllers (id, name, url, version, ca_hash, plan_key_id, started_ms, seen_ms)
             VALUES ($1, $2, $3, $4, $5, $6, {now}, {now})
             ON CONFLICT (id) DO UPDATE SET seen_ms = excluded.seen_ms"
        ))
        .bind(self.member_id())
        .bind(&me.name)
        .bind(&me.url)
        .bind(&me.version)
        .bind(&me.ca_hash)
        .bind(&me.plan_key_id) => execute)?;
        Ok(())
    }

    /// One round: this controller is seen, renews its leases, and claims its share of the
    /// clusters nobody holds (a lease not renewed for `ttl_ms` is nobody's): at most as
    /// many as leave it holding `ceil(clusters / live controllers)`.
    pub async fn lease_round(&self, me: &Member, ttl_ms: i64) -> Result<Round> {
        let mut tx = self.write().await?;
        let now_sql = (tx.dialect().now_ms).to_string();
        let now: i64 =
            run!(tx.conn(), sqlx::query_scalar(&format!("SELECT {now_sql}")) => fetch_one)?;
        self.upsert_member(&mut tx, me).await?;
        run!(tx.conn(), sqlx::query("DELETE FROM controllers WHERE seen_ms < $1")
            .bind(now - FORGET_AFTER_MS) => execute)?;
        // Leases of this controller that lapsed (a round that came late) and nobody took:
        // renewed below, and ticked as if claimed — what happened meanwhile was nobody's.
        let lapsed: Vec<i64> = run!(tx.conn(), sqlx::query_scalar(
            "SELECT cluster_id FROM cluster_leases WHERE controller_id = $1 AND expires_ms < $2"
        )
        .bind(self.member_id())
        .bind(now) => fetch_all)?;
        run!(tx.conn(), sqlx::query(
            "UPDATE cluster_leases SET expires_ms = $1 WHERE controller_id = $2"
        )
        .bind(now + ttl_ms)
        .bind(self.member_id()) => execute)?;
        let (live, clusters, mine): (i64, i64, i64) = run!(tx.conn(), sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM controllers WHERE seen_ms >= $1),
                    (SELECT COUNT(*) FROM clusters),
                    (SELECT COUNT(*) FROM cluster_leases WHERE controller_id = $2)"
        )
        .bind(now - ttl_ms)
        .bind(self.member_id()) => fetch_one)?;
        let share = (clusters + live.max(1) - 1) / live.max(1);
        let mut claimed: Vec<i64> = Vec::new();
        if share > mine {
            claimed = run!(tx.conn(), sqlx::query_scalar(
                "INSERT INTO cluster_leases (cluster_id, controller_id, expires_ms)
                 SELECT c.id, $1, $2 FROM clusters c LEFT JOIN cluster_leases l ON l.cluster_id = c.id
                 WHERE l.cluster_id IS NULL OR l.expires_ms < $3
                 ORDER BY c.id LIMIT $4
                 ON CONFLICT (cluster_id) DO UPDATE
                 SET controller_id = excluded.controller_id, expires_ms = excluded.expires_ms
                 RETURNING cluster_id"
            )
            .bind(self.member_id())
            .bind(now + ttl_ms)
            .bind(now)
            .bind(share - mine) => fetch_all)?;
        }
        let leases: Vec<(i64, String, i64)> = run!(tx.conn(), sqlx::query_as(
            "SELECT cluster_id, controller_id, expires_ms FROM cluster_leases"
        ) => fetch_all)?;
        tx.commit().await?;
        claimed.extend(lapsed);
        let mut round = Round {
            claimed,
            now_ms: now,
            ..Round::default()
        };
        for (cluster, holder, expires) in leases {
            if holder == self.member_id() {
                round.mine.push(cluster);
            } else if expires >= now {
                round.others.insert(cluster, expires);
            }
        }
        Ok(round)
    }

    /// Claims one cluster now, when nobody (live) holds it; true when this controller
    /// holds it afterwards. A cluster that is gone is never claimed.
    pub async fn claim_lease(&self, cluster_id: i64, ttl_ms: i64) -> Result<bool> {
        let mut tx = self.write().await?;
        let now = (tx.dialect().now_ms).to_string();
        let held: Option<i64> = run!(tx.conn(), sqlx::query_scalar(&format!(
            "INSERT INTO cluster_leases (cluster_id, controller_id, expires_ms)
             SELECT id, $2, {now} + $3 FROM clusters WHERE id = $1
             ON CONFLICT (cluster_id) DO UPDATE
             SET controller_id = excluded.controller_id, expires_ms = excluded.expires_ms
             WHERE cluster_leases.expires_ms < {now} OR cluster_leases.controller_id = excluded.controller_id
             RETURNING cluster_id"
        ))
        .bind(cluster_id)
        .bind(self.member_id())
        .bind(ttl_ms) => fetch_optional)?;
        tx.commit().await?;
        Ok(held.is_some())
    }

    /// Leaves: this controller's row and leases go at once, so the others claim its
    /// clusters in their next round instead of after the lease time.
    pub async fn leave(&self) -> Result<()> {
        let mut tx = self.write().await?;
        run!(tx.conn(), sqlx::query("DELETE FROM cluster_leases WHERE controller_id = $1")
            .bind(self.member_id()) => execute)?;
        run!(tx.conn(), sqlx::query("DELETE FROM controllers WHERE id = $1")
            .bind(self.member_id()) => execute)?;
        tx.commit().await?;
        Ok(())
    }

    /// The controllers serving this database (seen in the last ten minutes), live ones
    /// first, each with the clusters it holds.
    pub async fn controllers(&self, ttl_ms: i64) -> Result<Vec<MemberRow>> {
        let now = (self.dialect().now_ms).to_string();
        let mut rows = run!(self.reads(), sqlx::query(&format!(
            "SELECT id, name, url, version, ca_hash, started_ms, seen_ms, seen_ms >= {now} - $1 AS live
             FROM controllers ORDER BY live DESC, started_ms, id"
        ))
        .bind(ttl_ms) => fetch_all |r| MemberRow {
            id: r.col("id"),
            name: r.col("name"),
            url: r.col("url"),
            version: r.col("version"),
            ca_hash: r.col("ca_hash"),
            started_ms: r.col("started_ms"),
            seen_ms: r.col("seen_ms"),
            live: r.col("live"),
            clusters: Vec::new(),
        })?;
        let held: Vec<(String, String)> = run!(self.reads(), sqlx::query_as(&format!(
            "SELECT l.controller_id, c.name FROM cluster_leases l JOIN clusters c ON c.id = l.cluster_id
             WHERE l.expires_ms >= {now} ORDER BY c.name"
        )) => fetch_all)?;
        let mut by: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (id, name) in held {
            by.entry(id).or_default().push(name);
        }
        for r in &mut rows {
            r.clusters = by.remove(&r.id).unwrap_or_default();
        }
        Ok(rows)
    }
}
