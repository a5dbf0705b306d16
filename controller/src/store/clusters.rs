//! SQL for clusters, steps, logs and outputs.

use super::Store;
use crate::time::now_unix;
use anyhow::Result;
use sqlx::Row;
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
pub struct ClusterRow {
    pub id: i64,
    pub name: String,
    pub generation: i64,
    pub clusterfile: String,
    pub spec: String,
    pub phase: String,
    pub message: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ClusterHostRow {
    pub host_id: i64,
    pub name: String,
    pub role: String,
    pub ord: i64,
    pub ip: String,
    pub env: String,
    pub state: String,
}

#[derive(Debug, Clone)]
pub struct StepRow {
    pub id: i64,
    pub cluster_id: i64,
    pub host_id: i64,
    pub host_name: String,
    pub kind: String,
    pub ord: i64,
    pub spec: String,
    pub best_effort: bool,
    pub state: String,
    pub attempt: i64,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub log_tail: Option<String>,
}

/// A step to create.
pub struct NewStep {
    pub host_id: i64,
    pub host_name: String,
    pub kind: String,
    pub ord: i64,
    pub spec: String,
    pub best_effort: bool,
}

/// A host to record in a cluster.
pub struct NewClusterHost {
    pub host_id: i64,
    pub role: String,
    pub ord: i64,
    pub ip: String,
    pub env: String,
}

fn cluster_row(r: sqlx::sqlite::SqliteRow) -> ClusterRow {
    ClusterRow {
        id: r.get("id"),
        name: r.get("name"),
        generation: r.get("generation"),
        clusterfile: r.get("clusterfile"),
        spec: r.get("spec"),
        phase: r.get("phase"),
        message: r.get("message"),
    }
}

fn step_row(r: sqlx::sqlite::SqliteRow) -> StepRow {
    StepRow {
        id: r.get("id"),
        cluster_id: r.get("cluster_id"),
        host_id: r.get("host_id"),
        host_name: r.get("host_name"),
        kind: r.get("kind"),
        ord: r.get("ord"),
        spec: r.get("spec"),
        best_effort: r.get::<i64, _>("best_effort") != 0,
        state: r.get("state"),
        attempt: r.get("attempt"),
        exit_code: r.get("exit_code"),
        reason: r.get("reason"),
        started_at: r.get("started_at"),
        ended_at: r.get("ended_at"),
        log_tail: r.get("log_tail"),
    }
}

const STEP_COLS: &str = "id, cluster_id, host_id, host_name, kind, ord, spec, best_effort, state, attempt, exit_code, reason, started_at, ended_at, log_tail";

impl Store {
    pub async fn cluster(&self, name: &str) -> Result<Option<ClusterRow>> {
        let r = sqlx::query("SELECT * FROM clusters WHERE name = ?1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.map(cluster_row))
    }

    pub async fn cluster_by_id(&self, id: i64) -> Result<Option<ClusterRow>> {
        let r = sqlx::query("SELECT * FROM clusters WHERE id = ?1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.map(cluster_row))
    }

    pub async fn clusters(&self) -> Result<Vec<ClusterRow>> {
        let rows = sqlx::query("SELECT * FROM clusters ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(cluster_row).collect())
    }

    /// The cluster holding a host, if any.
    pub async fn cluster_of_host(&self, host_id: i64) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT c.name FROM cluster_hosts h JOIN clusters c ON c.id = h.cluster_id WHERE h.host_id = ?1",
        )
        .bind(host_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn cluster_hosts(&self, cluster_id: i64) -> Result<Vec<ClusterHostRow>> {
        let rows = sqlx::query(
            "SELECT ch.host_id, h.name, ch.role, ch.ord, ch.ip, ch.env, ch.state
             FROM cluster_hosts ch JOIN hosts h ON h.id = ch.host_id
             WHERE ch.cluster_id = ?1 ORDER BY ch.ord",
        )
        .bind(cluster_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| ClusterHostRow {
                host_id: r.get("host_id"),
                name: r.get("name"),
                role: r.get("role"),
                ord: r.get("ord"),
                ip: r.get("ip"),
                env: r.get("env"),
                state: r.get("state"),
            })
            .collect())
    }

    /// Stores a new generation of a cluster: spec, hosts added, hosts marked leaving,
    /// failed steps reset for a new attempt, and new steps — in one transaction.
    #[allow(clippy::too_many_arguments)]
    pub async fn apply_generation(
        &self,
        name: &str,
        clusterfile: &str,
        spec: &str,
        add_hosts: Vec<NewClusterHost>,
        leaving: &[i64],
        host_updates: &[(i64, String, String, i64)],
        steps: Vec<NewStep>,
        actor: &str,
    ) -> Result<i64> {
        let now = now_unix();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let existing: Option<(i64, i64)> =
            sqlx::query_as("SELECT id, generation FROM clusters WHERE name = ?1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
        let (id, generation) = match existing {
            Some((id, g)) => {
                sqlx::query(
                    "UPDATE clusters SET generation = ?1, clusterfile = ?2, spec = ?3, phase = 'Reconciling', message = NULL, updated_at = ?4 WHERE id = ?5",
                )
                .bind(g + 1)
                .bind(clusterfile)
                .bind(spec)
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await?;
                (id, g + 1)
            }
            None => {
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO clusters (name, generation, clusterfile, spec, phase, created_at, updated_at)
                     VALUES (?1, 1, ?2, ?3, 'Reconciling', ?4, ?4) RETURNING id",
                )
                .bind(name)
                .bind(clusterfile)
                .bind(spec)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                (id, 1)
            }
        };
        for h in add_hosts {
            sqlx::query("INSERT INTO cluster_hosts (cluster_id, host_id, role, ord, ip, env) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
                .bind(id)
                .bind(h.host_id)
                .bind(&h.role)
                .bind(h.ord)
                .bind(&h.ip)
                .bind(&h.env)
                .execute(&mut *tx)
                .await?;
        }
        for (host_id, ip, env, ord) in host_updates {
            sqlx::query("UPDATE cluster_hosts SET ip = ?1, env = ?2, ord = ?3 WHERE cluster_id = ?4 AND host_id = ?5")
                .bind(ip)
                .bind(env)
                .bind(ord)
                .bind(id)
                .bind(host_id)
                .execute(&mut *tx)
                .await?;
        }
        for host_id in leaving {
            sqlx::query(
                "UPDATE cluster_hosts SET state = 'leaving' WHERE cluster_id = ?1 AND host_id = ?2",
            )
            .bind(id)
            .bind(host_id)
            .execute(&mut *tx)
            .await?;
        }
        // Resume, never restart: failed and interrupted steps get a new attempt.
        retry_failed(&mut tx, id).await?;
        insert_steps(&mut tx, id, generation, steps).await?;
        super::audit(
            &mut tx,
            actor,
            "cluster.apply",
            name,
            Some(&format!("generation={generation}")),
        )
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    pub async fn steps(&self, cluster_id: i64) -> Result<Vec<StepRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {STEP_COLS} FROM steps WHERE cluster_id = ?1 ORDER BY ord, host_name, id"
        ))
        .bind(cluster_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(step_row).collect())
    }

    pub async fn step(&self, id: i64) -> Result<Option<StepRow>> {
        let r = sqlx::query(&format!("SELECT {STEP_COLS} FROM steps WHERE id = ?1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.map(step_row))
    }

    /// Steps released to a host and not finished: what its plan carries.
    pub async fn host_plan_steps(&self, host_id: i64) -> Result<Vec<StepRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {STEP_COLS} FROM steps WHERE host_id = ?1 AND state IN ('released', 'running') ORDER BY ord, id"
        ))
        .bind(host_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(step_row).collect())
    }

    /// Marks pending steps released and bumps the plan generation of their hosts.
    /// Returns the affected host ids.
    pub async fn release(&self, step_ids: &[i64]) -> Result<Vec<i64>> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let mut hosts = Vec::new();
        for id in step_ids {
            let host: Option<i64> = sqlx::query_scalar(
                "UPDATE steps SET state = 'released' WHERE id = ?1 AND state = 'pending' RETURNING host_id",
            )
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(h) = host {
                if !hosts.contains(&h) {
                    hosts.push(h);
                }
            }
        }
        for h in &hosts {
            sqlx::query("UPDATE hosts SET plan_generation = plan_generation + 1 WHERE id = ?1")
                .bind(h)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(hosts)
    }

    pub async fn bump_plan_generation(&self, host_id: i64) -> Result<()> {
        sqlx::query("UPDATE hosts SET plan_generation = plan_generation + 1 WHERE id = ?1")
            .bind(host_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn plan_generation(&self, host_id: i64) -> Result<u64> {
        let g: i64 = sqlx::query_scalar("SELECT plan_generation FROM hosts WHERE id = ?1")
            .bind(host_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(g as u64)
    }

    /// Applies a step report from the host that runs it. Returns the cluster id when the
    /// report changed something.
    pub async fn record_report(
        &self,
        host_id: i64,
        r: &berth_shared::api::StepReport,
    ) -> Result<Option<i64>> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let cur: Option<(i64, String, i64)> = sqlx::query_as(
            "SELECT cluster_id, state, attempt FROM steps WHERE id = ?1 AND host_id = ?2",
        )
        .bind(r.step_id)
        .bind(host_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((cluster_id, state, attempt)) = cur else {
            return Ok(None);
        };
        // Reports of an older attempt, or for a finished step, change nothing.
        if attempt != r.attempt as i64
            || !matches!(state.as_str(), "released" | "running" | "interrupted")
        {
            return Ok(None);
        }
        sqlx::query(
            "UPDATE steps SET state = ?1, exit_code = ?2, reason = ?3,
                 started_at = COALESCE(?4, started_at), ended_at = ?5, log_tail = COALESCE(?6, log_tail), outputs = ?7
             WHERE id = ?8",
        )
        .bind(&r.state)
        .bind(r.exit_code)
        .bind(&r.reason)
        .bind(r.started_at)
        .bind(r.ended_at)
        .bind(&r.log_tail)
        .bind(serde_json::to_string(&r.outputs)?)
        .bind(r.step_id)
        .execute(&mut *tx)
        .await?;
        if r.state == "succeeded" {
            for (k, v) in &r.outputs {
                sqlx::query(
                    "INSERT INTO cluster_outputs (cluster_id, key, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT(cluster_id, key) DO UPDATE SET value = excluded.value",
                )
                .bind(cluster_id)
                .bind(k)
                .bind(v)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(Some(cluster_id))
    }

    /// Stores a log chunk once (idempotent by offset).
    pub async fn append_log(
        &self,
        host_id: i64,
        step_id: i64,
        attempt: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO step_logs (step_id, attempt, offset, data)
             SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM steps WHERE id = ?1 AND host_id = ?5)
             ON CONFLICT DO NOTHING",
        )
        .bind(step_id)
        .bind(attempt as i64)
        .bind(offset as i64)
        .bind(data)
        .bind(host_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Log chunks of a step's attempt at or after `from`, in order.
    pub async fn step_log(
        &self,
        step_id: i64,
        attempt: i64,
        from: u64,
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        let rows = sqlx::query(
            "SELECT offset, data FROM step_logs WHERE step_id = ?1 AND attempt = ?2 AND offset + length(data) > ?3 ORDER BY offset",
        )
        .bind(step_id)
        .bind(attempt)
        .bind(from as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                (
                    r.get::<i64, _>("offset") as u64,
                    r.get::<Vec<u8>, _>("data"),
                )
            })
            .collect())
    }

    pub async fn outputs(&self, cluster_id: i64) -> Result<BTreeMap<String, String>> {
        let rows = sqlx::query(
            "SELECT key, value FROM cluster_outputs WHERE cluster_id = ?1 ORDER BY key",
        )
        .bind(cluster_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.get("key"), r.get("value")))
            .collect())
    }

    pub async fn set_phase(
        &self,
        cluster_id: i64,
        phase: &str,
        message: Option<&str>,
    ) -> Result<()> {
        sqlx::query("UPDATE clusters SET phase = ?1, message = ?2, updated_at = ?3 WHERE id = ?4")
            .bind(phase)
            .bind(message)
            .bind(now_unix())
            .bind(cluster_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Drops hosts whose leave/remove finished from a cluster.
    pub async fn drop_left_hosts(&self, cluster_id: i64) -> Result<Vec<i64>> {
        let ids: Vec<i64> = sqlx::query_scalar(
            "DELETE FROM cluster_hosts WHERE cluster_id = ?1 AND state = 'leaving' RETURNING host_id",
        )
        .bind(cluster_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(ids)
    }

    /// `berth retry`: failed and interrupted steps get a new attempt.
    pub async fn retry(&self, cluster_id: i64, actor: &str, name: &str) -> Result<u64> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let n = retry_failed(&mut tx, cluster_id).await?;
        sqlx::query("UPDATE clusters SET phase = 'Reconciling', message = NULL WHERE id = ?1")
            .bind(cluster_id)
            .execute(&mut *tx)
            .await?;
        super::audit(
            &mut tx,
            actor,
            "cluster.retry",
            name,
            Some(&format!("steps={n}")),
        )
        .await?;
        tx.commit().await?;
        Ok(n)
    }

    /// `berth reset`: cancels unfinished steps and schedules `clean` on every host.
    pub async fn start_reset(
        &self,
        cluster_id: i64,
        steps: Vec<NewStep>,
        actor: &str,
        name: &str,
    ) -> Result<()> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("UPDATE steps SET state = 'cancelled' WHERE cluster_id = ?1 AND state IN ('pending', 'released', 'failed', 'interrupted')")
            .bind(cluster_id)
            .execute(&mut *tx)
            .await?;
        let generation: i64 = sqlx::query_scalar("UPDATE clusters SET phase = 'Resetting', message = NULL, generation = generation + 1 WHERE id = ?1 RETURNING generation")
            .bind(cluster_id)
            .fetch_one(&mut *tx)
            .await?;
        insert_steps(&mut tx, cluster_id, generation, steps).await?;
        super::audit(&mut tx, actor, "cluster.reset", name, None).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn delete_cluster(&self, cluster_id: i64) -> Result<()> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("DELETE FROM cluster_hosts WHERE cluster_id = ?1")
            .bind(cluster_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM clusters WHERE id = ?1")
            .bind(cluster_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn record_agent_event(&self, host_id: i64, kind: &str, message: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO agent_events (host_id, at, kind, message) VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(host_id)
        .bind(now_unix())
        .bind(kind)
        .bind(message)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Digests referenced by any cluster's spec (a bundle in use cannot be removed).
    pub async fn cluster_specs(&self) -> Result<Vec<(String, String)>> {
        Ok(sqlx::query_as("SELECT name, spec FROM clusters")
            .fetch_all(&self.pool)
            .await?)
    }
}

/// Failed and interrupted steps of a cluster get a new attempt (resume, never restart).
async fn retry_failed(
    tx: &mut sqlx::SqliteConnection,
    cluster_id: i64,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE steps SET state = 'pending', attempt = attempt + 1, exit_code = NULL, reason = NULL, started_at = NULL, ended_at = NULL
         WHERE cluster_id = ?1 AND state IN ('failed', 'interrupted')",
    )
    .bind(cluster_id)
    .execute(tx)
    .await?
    .rows_affected())
}

async fn insert_steps(
    tx: &mut sqlx::SqliteConnection,
    cluster_id: i64,
    generation: i64,
    steps: Vec<NewStep>,
) -> Result<(), sqlx::Error> {
    for s in steps {
        sqlx::query(
            "INSERT INTO steps (cluster_id, generation, host_id, host_name, kind, ord, spec, best_effort) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .bind(cluster_id)
        .bind(generation)
        .bind(s.host_id)
        .bind(&s.host_name)
        .bind(&s.kind)
        .bind(s.ord)
        .bind(&s.spec)
        .bind(s.best_effort as i64)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}
