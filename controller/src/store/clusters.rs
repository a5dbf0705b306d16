//! SQL for clusters, steps, logs and outputs.
//!
//! State columns hold `berth_shared::state` enums (and CHECK constraints keep anything else
//! out). Changes that depend on a step's current state are conditional updates
//! (`WHERE state = ? AND attempt = ?`), so a concurrent change is never overwritten.

use super::error::StoreError;
use super::Columns;
use super::Result;
use super::{Store, WriteTx};
use crate::planner::{Generation, NewStep};
use crate::time::now_unix;
use berth_shared::state::{ClusterPhase, HostRole, StepKind, StepState};
use std::collections::{BTreeMap, HashMap};

/// What a tick read its decisions from: the cluster and its generation. A tick's writes
/// are made only while this controller holds the cluster's lease and the cluster is still
/// at that generation (an apply, a reset or a rollback, on any controller, moves it).
#[derive(Debug, Clone, Copy)]
pub struct Fence {
    pub cluster_id: i64,
    pub generation: i64,
}

/// What `Store::release` did.
#[derive(Debug)]
pub enum Released {
    /// Released; these hosts' plans changed.
    Woke(Vec<i64>),
    /// Nothing: the fence no longer holds.
    Refused,
}

#[derive(Debug, Clone)]
pub struct ClusterRow {
    pub id: i64,
    pub name: String,
    pub generation: i64,
    pub clusterfile: String,
    pub spec: String,
    pub phase: ClusterPhase,
    pub message: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ClusterHostRow {
    pub host_id: i64,
    pub name: String,
    pub role: HostRole,
    pub ord: i64,
    pub ip: String,
    pub env: String,
    /// active | leaving
    pub state: String,
}

#[derive(Debug, Clone)]
pub struct StepRow {
    pub id: i64,
    pub cluster_id: i64,
    pub host_id: i64,
    pub host_name: String,
    pub kind: StepKind,
    pub ord: i64,
    /// The `spec` column, decoded once when the row is read (a row that does not decode
    /// is an error, never a default).
    pub spec: crate::planner::StepSpec,
    pub best_effort: bool,
    pub state: StepState,
    pub attempt: i64,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub log_tail: Option<String>,
    pub deadline: Option<i64>,
    pub log_len: i64,
    pub log_stored: i64,
}

impl crate::scheduler::Scheduled for StepRow {
    fn ord(&self) -> i64 {
        self.ord
    }
    fn state(&self) -> StepState {
        self.state
    }
    fn best_effort(&self) -> bool {
        self.best_effort
    }
}

/// A step's row after validated reports, as `write_step_results` stores it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepResult {
    pub id: i64,
    pub attempt: i64,
    pub state: StepState,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub log_tail: Option<String>,
    /// JSON object of the outputs the last report published.
    pub outputs: String,
    pub deadline: Option<i64>,
}

/// What `apply_generation` stored.
#[derive(Debug)]
pub struct AppliedGeneration {
    pub id: i64,
    /// Hosts with steps stored released (a new cluster's first phase), to wake.
    pub released: Vec<i64>,
}

/// What storing a log chunk did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogAppend {
    /// Bytes stored (may be 0 for a re-sent chunk).
    Stored(u64),
    /// Over the per-step cap: counted, not stored.
    Dropped(u64),
}

/// A released/running step whose deadline passed or whose host stopped answering.
#[derive(Debug, Clone)]
pub struct LostStep {
    pub id: i64,
    pub cluster_id: i64,
    pub attempt: i64,
    pub state: StepState,
    pub host_name: String,
    pub deadline: Option<i64>,
    pub last_seen: i64,
}

fn cluster_row(r: impl super::Columns) -> ClusterRow {
    ClusterRow {
        id: r.col("id"),
        name: r.col("name"),
        generation: r.col("generation"),
        clusterfile: r.col("clusterfile"),
        spec: r.col("spec"),
        phase: r.parsed("phase"),
        message: r.col("message"),
    }
}

pub(super) fn step_row(r: impl super::Columns) -> Result<StepRow> {
    let id: i64 = r.col("id");
    let spec = serde_json::from_str(&r.col::<String>("spec"))
        .map_err(|e| anyhow::anyhow!("step {id}: its stored spec does not decode: {e}"))?;
    Ok(StepRow {
        id: r.col("id"),
        cluster_id: r.col("cluster_id"),
        host_id: r.col("host_id"),
        host_name: r.col("host_name"),
        kind: r.parsed("kind"),
        ord: r.col("ord"),
        spec,
        best_effort: r.col::<i64>("best_effort") != 0,
        state: r.parsed("state"),
        attempt: r.col("attempt"),
        exit_code: r.col("exit_code"),
        reason: r.col("reason"),
        started_at: r.col("started_at"),
        ended_at: r.col("ended_at"),
        log_tail: r.col("log_tail"),
        deadline: r.col("deadline"),
        log_len: r.col("log_len"),
        log_stored: r.col("log_stored"),
    })
}

pub(super) const STEP_COLS: &str = "id, cluster_id, host_id, host_name, kind, ord, spec, best_effort, state, attempt, exit_code, reason, started_at, ended_at, log_tail, deadline, log_len, log_stored";

impl Store {
    pub async fn cluster(&self, name: &str) -> Result<Option<ClusterRow>> {
        Ok(
            run!(self.reads(), sqlx::query("SELECT * FROM clusters WHERE name = $1")
            .bind(name) => fetch_optional |r| cluster_row(r))?,
        )
    }

    pub async fn cluster_by_id(&self, id: i64) -> Result<Option<ClusterRow>> {
        Ok(
            run!(self.reads(), sqlx::query("SELECT * FROM clusters WHERE id = $1")
            .bind(id) => fetch_optional |r| cluster_row(r))?,
        )
    }

    pub async fn clusters(&self) -> Result<Vec<ClusterRow>> {
        Ok(
            run!(self.reads(), sqlx::query("SELECT * FROM clusters ORDER BY name") => fetch_all |r| cluster_row(r))?,
        )
    }

    /// The cluster holding a host, if any: (id, name).
    pub async fn cluster_of_host(&self, host_id: i64) -> Result<Option<(i64, String)>> {
        Ok(run!(self.reads(), sqlx::query_as(
            "SELECT c.id, c.name FROM cluster_hosts h JOIN clusters c ON c.id = h.cluster_id WHERE h.host_id = $1",
        )
        .bind(host_id) => fetch_optional)?)
    }

    /// Every cluster member: host id → cluster name.
    pub async fn host_clusters(&self) -> Result<std::collections::HashMap<i64, String>> {
        let rows: Vec<(i64, String)> = run!(self.reads(), sqlx::query_as(
            "SELECT h.host_id, c.name FROM cluster_hosts h JOIN clusters c ON c.id = h.cluster_id",
        ) => fetch_all)?;
        Ok(rows.into_iter().collect())
    }

    pub async fn cluster_hosts(&self, cluster_id: i64) -> Result<Vec<ClusterHostRow>> {
        let rows = run!(self.reads(), sqlx::query(
            "SELECT ch.host_id, h.name, ch.role, ch.ord, ch.ip, ch.env, ch.state
             FROM cluster_hosts ch JOIN hosts h ON h.id = ch.host_id
             WHERE ch.cluster_id = $1 ORDER BY ch.ord",
        )
        .bind(cluster_id) => fetch_all |r| ClusterHostRow {
                host_id: r.col("host_id"),
                name: r.col("name"),
                role: r.parsed("role"),
                ord: r.col("ord"),
                ip: r.col("ip"),
                env: r.col("env"),
                state: r.col("state"),
            })?;
        Ok(rows.into_iter().collect())
    }

    /// How many steps of the cluster are in each state (an index-only count).
    pub async fn step_counts(
        &self,
        cluster_id: i64,
    ) -> Result<std::collections::BTreeMap<StepState, u64>> {
        let hint = (self.dialect().indexed_by)("steps_cluster_state");
        let rows: Vec<(String, i64)> = run!(self.reads(), sqlx::query_as(&format!(
            "SELECT state, COUNT(*) FROM steps {hint} WHERE cluster_id = $1 GROUP BY state",
        ))
        .bind(cluster_id) => fetch_all)?;
        rows.into_iter()
            .map(|(s, n)| Ok((s.parse().map_err(|e| anyhow::anyhow!("{e}"))?, n as u64)))
            .collect()
    }

    /// Stores a new generation of a cluster: spec, hosts added, hosts marked leaving,
    /// failed steps reset for a new attempt, and new steps — in one transaction.
    ///
    /// A step with a deadline in `released` (by position) is stored released and its
    /// host's plan generation bumped (the scheduler's first release of a new cluster); the
    /// rest pending. Returns the cluster's id and the hosts to wake.
    pub async fn apply_generation(
        &self,
        name: &str,
        clusterfile: &str,
        spec: &str,
        g: Generation,
        actor: &str,
        released: &[Option<i64>],
    ) -> Result<AppliedGeneration> {
        let now = now_unix();
        let mut tx = self.write().await?;
        let existing: Option<(i64, i64)> = run!(tx.conn(), sqlx::query_as("SELECT id, generation FROM clusters WHERE name = $1")
                .bind(name) => fetch_optional)?;
        let (id, generation) = match existing {
            Some((id, gen)) => {
                run!(tx.conn(), sqlx::query(
                    "UPDATE clusters SET generation = $1, clusterfile = $2, spec = $3, phase = $4, message = NULL, updated_at = $5 WHERE id = $6",
                )
                .bind(gen + 1)
                .bind(clusterfile)
                .bind(spec)
                .bind(ClusterPhase::Reconciling.as_str())
                .bind(now)
                .bind(id) => execute)?;
                (id, gen + 1)
            }
            None => {
                let id: i64 = run!(tx.conn(), sqlx::query_scalar(
                    "INSERT INTO clusters (name, generation, clusterfile, spec, phase, created_at, updated_at)
                     VALUES ($1, 1, $2, $3, $4, $5, $5) RETURNING id",
                )
                .bind(name)
                .bind(clusterfile)
                .bind(spec)
                .bind(ClusterPhase::Reconciling.as_str())
                .bind(now) => fetch_one)?;
                (id, 1)
            }
        };
        // All new members in one statement ([[host, role, ord, ip, env], …]).
        if !g.add_hosts.is_empty() {
            let rows: Vec<serde_json::Value> = g
                .add_hosts
                .iter()
                .map(|h| serde_json::json!([h.host_id, h.role.to_string(), h.ord, h.ip, h.env]))
                .collect();
            let members = (tx.dialect().json_rows)(2);
            run!(tx.conn(), sqlx::query(&format!(
                "INSERT INTO cluster_hosts (cluster_id, host_id, role, ord, ip, env)
                 SELECT $1, CAST(j.value ->> 0 AS BIGINT), j.value ->> 1, CAST(j.value ->> 2 AS BIGINT),
                        j.value ->> 3, j.value ->> 4 FROM {members}",
            ))
            .bind(id)
            .bind(serde_json::Value::Array(rows).to_string()) => execute)?;
        }
        for u in &g.host_updates {
            run!(tx.conn(), sqlx::query("UPDATE cluster_hosts SET ip = $1, env = $2, ord = $3 WHERE cluster_id = $4 AND host_id = $5")
                .bind(&u.ip)
                .bind(&u.env)
                .bind(u.ord)
                .bind(id)
                .bind(u.host_id) => execute)?;
        }
        for host_id in &g.leaving {
            run!(tx.conn(), sqlx::query(
                "UPDATE cluster_hosts SET state = 'leaving' WHERE cluster_id = $1 AND host_id = $2",
            )
            .bind(id)
            .bind(host_id) => execute)?;
        }
        // Resume, never restart: failed and interrupted steps get a new attempt.
        retry_failed(&mut tx, id).await?;
        let mut woken: Vec<i64> = g
            .steps
            .iter()
            .zip(released)
            .filter(|(_, d)| d.is_some())
            .map(|(s, _)| s.host_id)
            .collect();
        woken.sort_unstable();
        woken.dedup();
        insert_steps(&mut tx, id, generation, g.steps, released).await?;
        super::audit(
            &mut tx,
            actor,
            "cluster.apply",
            name,
            Some(&format!("generation={generation}")),
        )
        .await?;
        super::events::record(
            &mut tx,
            name,
            None,
            "apply",
            &format!("generation {generation} applied by {actor}"),
        )
        .await?;
        let released = commit_bumping(self, tx, woken).await?;
        Ok(AppliedGeneration { id, released })
    }

    pub async fn steps(&self, cluster_id: i64) -> Result<Vec<StepRow>> {
        let rows = run!(self.reads(), sqlx::query(&format!(
            "SELECT {STEP_COLS} FROM steps WHERE cluster_id = $1 ORDER BY ord, host_name, id"
        ))
        .bind(cluster_id) => fetch_all |r| step_row(r))?;
        rows.into_iter().collect()
    }

    /// The cluster's generation (its spec changes only with it), and the spec when asked.
    /// [`Store::spec_version`] inside a write transaction.
    pub async fn spec_in(
        tx: &mut WriteTx,
        cluster_id: i64,
        with_spec: bool,
    ) -> Result<Option<(i64, Option<String>)>> {
        Store::spec_at(tx.conn(), cluster_id, with_spec).await
    }

    async fn spec_at<'e, E: sqlx::SqliteExecutor<'e>, P: sqlx::PgExecutor<'e>>(
        e: super::On<E, P>,
        cluster_id: i64,
        with_spec: bool,
    ) -> Result<Option<(i64, Option<String>)>> {
        Ok(run!(e, sqlx::query_as(
            "SELECT generation, CASE WHEN $2 THEN spec END FROM clusters WHERE id = $1",
        )
        .bind(cluster_id)
        .bind(with_spec) => fetch_optional)?)
    }

    /// `spec_at` on the pool.
    pub async fn spec_version(
        &self,
        cluster_id: i64,
        with_spec: bool,
    ) -> Result<Option<(i64, Option<String>)>> {
        Store::spec_at(self.reads(), cluster_id, with_spec).await
    }

    pub async fn step(&self, id: i64) -> Result<Option<StepRow>> {
        let r = run!(self.reads(), sqlx::query(&format!("SELECT {STEP_COLS} FROM steps WHERE id = $1"))
            .bind(id) => fetch_optional |r| step_row(r))?;
        r.transpose()
    }

    /// Steps released to each of these hosts and not finished: what their plans carry,
    /// in one query (hosts with none are absent).
    pub async fn plan_steps_of_hosts(
        &self,
        host_ids: &[i64],
    ) -> Result<HashMap<i64, Vec<StepRow>>> {
        let ids_in = (self.dialect().json_ints)(1);
        let rows = run!(self.reads(), sqlx::query(&format!(
            "SELECT {STEP_COLS} FROM steps WHERE host_id IN {ids_in}
             AND state IN ('released', 'running') ORDER BY host_id, ord, id"
        ))
        .bind(serde_json::to_string(host_ids)?) => fetch_all |r| step_row(r))?;
        let mut by_host: HashMap<i64, Vec<StepRow>> = HashMap::new();
        for r in rows.into_iter() {
            let r = r?;
            by_host.entry(r.host_id).or_default().push(r);
        }
        Ok(by_host)
    }

    /// Marks pending steps of cluster `cluster_id` released with their deadlines and bumps
    /// the plan generation of their hosts. Returns the affected host ids. Releases nothing
    /// (and returns none) unless this controller's lease on the cluster is current and the
    /// cluster is still at `generation` — what the caller's tick read — checked inside the
    /// write transaction, where no other writer can change either.
    pub async fn release(&self, fence: Fence, steps: &[(i64, i64)]) -> Result<Released> {
        // One statement per distinct deadline (a phase has one or a few).
        let mut by_deadline: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
        for (id, deadline) in steps {
            by_deadline.entry(*deadline).or_default().push(*id);
        }
        let mut tx = self.write().await?;
        if !self.fence_holds(&mut tx, fence).await? {
            return Ok(Released::Refused);
        }
        let mut hosts = Vec::new();
        let ids_in = (tx.dialect().json_ints)(2);
        for (deadline, ids) in by_deadline {
            let released: Vec<i64> = run!(tx.conn(), sqlx::query_scalar(&format!(
                "UPDATE steps SET state = 'released', deadline = $1
                 WHERE id IN {ids_in} AND state = 'pending' RETURNING host_id",
            ))
            .bind(deadline)
            .bind(serde_json::to_string(&ids)?) => fetch_all)?;
            hosts.extend(released);
        }
        hosts.sort_unstable();
        hosts.dedup();
        Ok(Released::Woke(commit_bumping(self, tx, hosts).await?))
    }

    /// Whether the tick `fence` describes may still write: this controller holds the
    /// cluster's lease and the cluster is at the generation the tick read. Inside the
    /// write transaction `tx`, where no other writer can change either until it ends.
    async fn fence_holds(&self, tx: &mut super::WriteTx, fence: Fence) -> Result<bool> {
        let now = (tx.dialect().now_ms).to_string();
        let current: Option<i64> = run!(tx.conn(), sqlx::query_scalar(&format!(
            "SELECT c.id FROM clusters c JOIN cluster_leases l ON l.cluster_id = c.id
             WHERE c.id = $1 AND c.generation = $2 AND l.controller_id = $3 AND l.expires_ms > {now}"
        ))
        .bind(fence.cluster_id)
        .bind(fence.generation)
        .bind(self.member_id()) => fetch_optional)?;
        if current.is_none() {
            tracing::info!(
                cluster = fence.cluster_id,
                generation = fence.generation,
                "a tick's write not made: this controller's lease lapsed or the cluster moved on; ticking again"
            );
        }
        Ok(current.is_some())
    }

    /// A tick settles the cluster's phase (false: `fence` no longer holds, nothing written).
    pub async fn settle_phase(
        &self,
        fence: Fence,
        phase: ClusterPhase,
        message: Option<&str>,
    ) -> Result<bool> {
        let mut tx = self.write().await?;
        if !self.fence_holds(&mut tx, fence).await? {
            return Ok(false);
        }
        run!(tx.conn(), sqlx::query(
            "UPDATE clusters SET phase = $1, message = $2, updated_at = $3 WHERE id = $4",
        )
        .bind(phase.as_str())
        .bind(message)
        .bind(now_unix())
        .bind(fence.cluster_id) => execute)?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn plan_generation(&self, host_id: i64) -> Result<u64> {
        if let Some(g) = self.cache.generation(host_id) {
            return Ok(g);
        }
        // Misses of concurrent polls (a fleet connecting) share one query.
        let store = self.clone();
        let g = self
            .generations
            .load(host_id, move |ids| {
                let store = store.clone();
                async move {
                    Ok(store
                        .read_generations(&ids)
                        .await?
                        .into_iter()
                        .map(|(id, g)| (id, Some(g)))
                        .collect())
                }
            })
            .await
            .map_err(StoreError::Other)?
            .ok_or(StoreError::Db(sqlx::Error::RowNotFound))?;
        self.cache.saw_generation(host_id, g);
        Ok(g)
    }

    /// The plan generations of these hosts (those that exist), read now.
    pub(super) async fn read_generations(&self, ids: &[i64]) -> Result<Vec<(i64, u64)>> {
        let ids_in = (self.dialect().json_ints)(1);
        let rows: Vec<(i64, i64)> = run!(self.reads(), sqlx::query_as(
            &format!("SELECT id, plan_generation FROM hosts WHERE id IN {ids_in}"),
        )
        .bind(serde_json::to_string(ids)?) => fetch_all)?;
        Ok(rows.into_iter().map(|(id, g)| (id, g as u64)).collect())
    }

    /// The steps with these ids, on `conn` (inside a write transaction).
    pub async fn steps_on(conn: &mut WriteTx, ids: &[i64]) -> Result<HashMap<i64, StepRow>> {
        let ids_in = (conn.dialect().json_ints)(1);
        let rows = run!(conn.conn(), sqlx::query(&format!(
            "SELECT {STEP_COLS} FROM steps WHERE id IN {ids_in}"
        ))
        .bind(serde_json::to_string(ids)?) => fetch_all |r| step_row(r))?;
        rows.into_iter().map(|r| r.map(|s| (s.id, s))).collect()
    }

    /// Stores validated reports of many steps in one statement (`steps_on` read them in
    /// the same write transaction, so they are as the validation saw them), then the
    /// outputs succeeded steps published, in order.
    pub async fn write_step_results(
        tx: &mut WriteTx,
        steps: &[StepResult],
        outputs: &[(i64, String, String)],
    ) -> Result<(), StoreError> {
        if !steps.is_empty() {
            let results = (tx.dialect().json_rows)(1);
            let n = run!(tx.conn(), sqlx::query(&format!(
                "UPDATE steps SET state = j.value ->> 'state',
                     exit_code = CAST(j.value ->> 'exit_code' AS BIGINT),
                     reason = j.value ->> 'reason',
                     started_at = CAST(j.value ->> 'started_at' AS BIGINT),
                     ended_at = CAST(j.value ->> 'ended_at' AS BIGINT),
                     log_tail = j.value ->> 'log_tail',
                     outputs = j.value ->> 'outputs',
                     deadline = CAST(j.value ->> 'deadline' AS BIGINT)
                 FROM {results}
                 WHERE steps.id = CAST(j.value ->> 'id' AS BIGINT)
                   AND steps.attempt = CAST(j.value ->> 'attempt' AS BIGINT)",
            ))
            .bind(serde_json::to_string(steps)?) => execute)?;
            if n != steps.len() as u64 {
                return Err(StoreError::Other(anyhow::anyhow!(
                    "{} of {} step results stored: the steps changed inside the transaction",
                    n,
                    steps.len()
                )));
            }
        }
        for (cluster_id, k, v) in outputs {
            run!(tx.conn(), sqlx::query(
                "INSERT INTO cluster_outputs (cluster_id, key, value) VALUES ($1, $2, $3)
                 ON CONFLICT(cluster_id, key) DO UPDATE SET value = excluded.value",
            )
            .bind(cluster_id)
            .bind(k)
            .bind(v) => execute)?;
        }
        Ok(())
    }

    /// Appends a log chunk of the step's current attempt at agent offset `offset`. Chunks
    /// must be contiguous: bytes already received are skipped (a re-sent or overlapping
    /// chunk), a chunk past the end is a gap (`Conflict`). At most `cap` bytes are stored
    /// per attempt; the rest is counted in `log_len` and dropped.
    pub async fn append_log(
        tx: &mut WriteTx,
        step: &StepRow,
        offset: u64,
        data: &[u8],
        cap: u64,
    ) -> Result<LogAppend, StoreError> {
        let tx: &mut WriteTx = tx;
        let (len, stored): (i64, i64) =
            run!(tx.conn(), sqlx::query_as("SELECT log_len, log_stored FROM steps WHERE id = $1 AND attempt = $2")
                .bind(step.id)
                .bind(step.attempt) => fetch_optional)?
                .ok_or_else(|| StoreError::Conflict("the step moved to another attempt".into()))?;
        let (len, stored) = (len as u64, stored as u64);
        if offset > len {
            return Err(StoreError::Conflict(format!(
                "log chunk at offset {offset} leaves a gap: {len} bytes were received so far"
            )));
        }
        let end = offset + data.len() as u64;
        if end <= len {
            return Ok(LogAppend::Stored(0));
        }
        let fresh = &data[(len - offset) as usize..];
        let room = cap.saturating_sub(stored) as usize;
        let keep = &fresh[..fresh.len().min(room)];
        if !keep.is_empty() {
            run!(tx.conn(), sqlx::query(
                "INSERT INTO step_logs (step_id, attempt, \"offset\", data) VALUES ($1, $2, $3, $4)",
            )
            .bind(step.id)
            .bind(step.attempt)
            .bind(stored as i64)
            .bind(keep) => execute)?;
        }
        run!(tx.conn(), sqlx::query("UPDATE steps SET log_len = $1, log_stored = $2 WHERE id = $3")
            .bind(end as i64)
            .bind((stored + keep.len() as u64) as i64)
            .bind(step.id) => execute)?;
        Ok(if keep.len() == fresh.len() {
            LogAppend::Stored(keep.len() as u64)
        } else {
            LogAppend::Dropped((fresh.len() - keep.len()) as u64)
        })
    }

    /// Stored log chunks of a step's attempt that end after `from` (stored offsets), in
    /// order, up to about `max_bytes`: one page, never the whole log.
    pub async fn step_log_page(
        &self,
        step_id: i64,
        attempt: i64,
        from: u64,
        max_bytes: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        let mut total = 0usize;
        let mut at = from as i64;
        loop {
            let rows: Vec<(i64, Vec<u8>)> = run!(self.reads(), sqlx::query_as(
                "SELECT \"offset\", data FROM step_logs WHERE step_id = $1 AND attempt = $2 AND \"offset\" + length(data) > $3 ORDER BY \"offset\" LIMIT 8",
            )
            .bind(step_id)
            .bind(attempt)
            .bind(at) => fetch_all)?;
            if rows.is_empty() {
                return Ok(out);
            }
            for (off, data) in rows {
                at = off + data.len() as i64;
                total += data.len();
                out.push((off as u64, data));
                if total >= max_bytes {
                    return Ok(out);
                }
            }
        }
    }

    pub async fn outputs(&self, cluster_id: i64) -> Result<BTreeMap<String, String>> {
        let rows = run!(self.reads(), sqlx::query(
            "SELECT key, value FROM cluster_outputs WHERE cluster_id = $1 ORDER BY key",
        )
        .bind(cluster_id) => fetch_all |r| (r.col("key"), r.col("value")))?;
        Ok(rows.into_iter().collect())
    }

    pub async fn set_phase(
        &self,
        cluster_id: i64,
        phase: ClusterPhase,
        message: Option<&str>,
    ) -> Result<()> {
        write_one!(
            self,
            sqlx::query(
                "UPDATE clusters SET phase = $1, message = $2, updated_at = $3 WHERE id = $4",
            )
            .bind(phase.as_str())
            .bind(message)
            .bind(now_unix())
            .bind(cluster_id)
        )?;
        Ok(())
    }

    /// A tick drops hosts whose leave/remove finished from the cluster (false: `fence` no
    /// longer holds, nothing written).
    pub async fn drop_left_hosts(&self, fence: Fence) -> Result<bool> {
        let mut tx = self.write().await?;
        if !self.fence_holds(&mut tx, fence).await? {
            return Ok(false);
        }
        run!(tx.conn(), sqlx::query(
            "DELETE FROM cluster_hosts WHERE cluster_id = $1 AND state = 'leaving'",
        )
        .bind(fence.cluster_id) => execute)?;
        tx.commit().await?;
        Ok(true)
    }

    /// `berth retry`: failed and interrupted steps get a new attempt; the cluster goes back
    /// to `phase` (Reconciling, or Resetting for a failed reset).
    pub async fn retry(
        &self,
        cluster_id: i64,
        phase: ClusterPhase,
        actor: &str,
        name: &str,
    ) -> Result<u64> {
        let mut tx = self.write().await?;
        let n = retry_failed(&mut tx, cluster_id).await?;
        run!(tx.conn(), sqlx::query("UPDATE clusters SET phase = $2, message = NULL WHERE id = $1")
            .bind(cluster_id)
            .bind(phase.as_str()) => execute)?;
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

    /// The upgrade steps of the cluster's last upgrade (none when a rollback came after
    /// it, or it never had one).
    pub async fn last_upgrade(&self, cluster_id: i64) -> Result<Vec<crate::planner::UpgradeStep>> {
        let rows: Vec<(i64, i64, i64, String)> = run!(self.reads(), sqlx::query_as(
            "SELECT id, host_id, ord, state FROM steps WHERE cluster_id = $1 AND kind = 'upgrade' AND generation =
               (SELECT MAX(generation) FROM steps WHERE cluster_id = $1 AND kind IN ('upgrade', 'rollback'))
             ORDER BY ord, id",
        )
        .bind(cluster_id) => fetch_all)?;
        Ok(rows
            .into_iter()
            .map(|(id, host_id, ord, state)| crate::planner::UpgradeStep {
                id,
                host_id,
                ord,
                state: state
                    .parse()
                    .unwrap_or_else(|e| panic!("column state: {e}")),
            })
            .collect())
    }

    /// `berth rollback`: the spec returns to the old generation, the steps in `g.cancel`
    /// (decided by the engine: every unfinished one but an exec's) are cancelled, and the
    /// rollback steps stored, in one transaction. Returns the
    /// hosts whose plans changed.
    pub async fn start_rollback(
        &self,
        cluster_id: i64,
        spec: &str,
        g: Generation,
        actor: &str,
        name: &str,
    ) -> Result<Vec<i64>> {
        let mut tx = self.write().await?;
        let generation: i64 = run!(tx.conn(), sqlx::query_scalar(
            "UPDATE clusters SET spec = $2, phase = $3, message = NULL, generation = generation + 1, updated_at = $4 WHERE id = $1 RETURNING generation",
        )
        .bind(cluster_id)
        .bind(spec)
        .bind(ClusterPhase::Reconciling.as_str())
        .bind(now_unix()) => fetch_one)?;
        let ids_in = (tx.dialect().json_ints)(1);
        let mut hosts: Vec<i64> = run!(tx.conn(), sqlx::query_scalar(&format!(
            "UPDATE steps SET state = 'cancelled', reason = 'superseded by a rollback', deadline = NULL
             WHERE id IN {ids_in} AND cluster_id = $2 AND state IN ('pending', 'failed', 'interrupted')
             RETURNING host_id",
        ))
        .bind(serde_json::to_string(&g.cancel)?)
        .bind(cluster_id) => fetch_all)?;
        let n = g.steps.len();
        insert_steps(&mut tx, cluster_id, generation, g.steps, &[]).await?;
        super::audit(
            &mut tx,
            actor,
            "cluster.rollback",
            name,
            Some(&format!("generation={generation} hosts={n}")),
        )
        .await?;
        super::events::record(
            &mut tx,
            name,
            None,
            "rollback",
            &format!("rollback by {actor}: {n} host(s) turn back the last upgrade"),
        )
        .await?;
        hosts.sort_unstable();
        hosts.dedup();
        commit_bumping(self, tx, hosts).await
    }

    /// `berth exec`: its steps, stored released with their deadlines (`released`, by
    /// position), in the cluster's current generation; audited with the command. Returns
    /// the step ids in order and the hosts whose plans changed.
    pub async fn start_exec(
        &self,
        cluster_id: i64,
        name: &str,
        steps: Vec<NewStep>,
        released: &[Option<i64>],
        actor: &str,
        command: &str,
    ) -> Result<(Vec<i64>, Vec<i64>)> {
        let mut tx = self.write().await?;
        let generation: i64 = run!(tx.conn(), sqlx::query_scalar("SELECT generation FROM clusters WHERE id = $1")
            .bind(cluster_id) => fetch_one)?;
        let mut hosts: Vec<i64> = steps.iter().map(|s| s.host_id).collect();
        let names: Vec<String> = steps.iter().map(|s| s.host_name.clone()).collect();
        let first: i64 = run!(tx.conn(), sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM steps") => fetch_one)?;
        insert_steps(&mut tx, cluster_id, generation, steps, released).await?;
        let ids: Vec<i64> = run!(tx.conn(), sqlx::query_scalar(
            "SELECT id FROM steps WHERE cluster_id = $1 AND id > $2 AND kind = 'exec' ORDER BY id",
        )
        .bind(cluster_id)
        .bind(first) => fetch_all)?;
        let detail = format!("hosts={} command={command}", names.join(","));
        super::audit(&mut tx, actor, "cluster.exec", name, Some(&detail)).await?;
        super::events::record(
            &mut tx,
            name,
            None,
            "exec",
            &format!("exec by {actor} on {}: {command}", names.join(", ")),
        )
        .await?;
        hosts.sort_unstable();
        hosts.dedup();
        let woken = commit_bumping(self, tx, hosts).await?;
        Ok((ids, woken))
    }

    /// Marks a reset forced: from now on a host that stops answering is skipped.
    pub async fn set_reset_forced(&self, cluster_id: i64) -> Result<()> {
        write_one!(
            self,
            sqlx::query("UPDATE clusters SET reset_forced = 1 WHERE id = $1").bind(cluster_id)
        )?;
        Ok(())
    }

    /// Unfinished steps of forced resets on hosts last seen before `seen_before` (or gone):
    /// (cluster id, cluster name, step, host name). Reads the few clusters being
    /// force-reset only.
    pub async fn forced_reset_stragglers(
        &self,
        seen_before: i64,
    ) -> Result<Vec<(i64, String, i64, String)>> {
        let hint = (self.dialect().indexed_by)("steps_cluster_state");
        Ok(run!(self.reads(), sqlx::query_as(&format!(
            "SELECT s.cluster_id, c.name, s.id, s.host_name FROM clusters c
               JOIN steps s {hint} ON s.cluster_id = c.id AND s.state IN ('pending', 'released', 'running')
               LEFT JOIN hosts h ON h.id = s.host_id
             WHERE c.reset_forced = 1 AND c.phase IN ('Resetting', 'ResetFailed')
               AND (h.id IS NULL OR h.last_seen < $1 OR h.state = 'revoked')
             ORDER BY s.cluster_id, s.id",
        ))
        .bind(seen_before) => fetch_all)?)
    }

    /// `berth reset`: cancels unfinished steps and schedules `clean` on every host.
    pub async fn start_reset(
        &self,
        cluster_id: i64,
        steps: Vec<NewStep>,
        actor: &str,
        name: &str,
    ) -> Result<()> {
        let mut tx = self.write().await?;
        let hosts: Vec<i64> = run!(tx.conn(), sqlx::query_scalar("UPDATE steps SET state = 'cancelled', reason = 'cluster reset' WHERE cluster_id = $1 AND state IN ('pending', 'released', 'failed', 'interrupted') RETURNING host_id")
            .bind(cluster_id) => fetch_all)?;
        let generation: i64 = run!(tx.conn(), sqlx::query_scalar("UPDATE clusters SET phase = $2, message = NULL, generation = generation + 1 WHERE id = $1 RETURNING generation")
            .bind(cluster_id)
            .bind(ClusterPhase::Resetting.as_str()) => fetch_one)?;
        let mut bumped = Vec::new();
        for h in hosts {
            bumped.push((h, bump_generation(&mut tx, h).await?));
        }
        insert_steps(&mut tx, cluster_id, generation, steps, &[]).await?;
        super::audit(&mut tx, actor, "cluster.reset", name, None).await?;
        super::events::record(&mut tx, name, None, "reset", &format!("reset by {actor}")).await?;
        let bumped: Vec<(i64, u64)> = bumped
            .into_iter()
            .filter_map(|(h, g)| Some((h, g?)))
            .collect();
        self.announce_plans(&mut tx, &bumped).await?;
        tx.commit().await?;
        for (h, g) in bumped {
            self.cache.saw_generation(h, g);
        }
        Ok(())
    }

    /// Cancels steps that are not finished (or failed/interrupted), with a reason; bumps
    /// the plan generation of their hosts so the cancelled work leaves their plans.
    /// Returns the host ids affected.
    pub async fn cancel_steps(&self, ids: &[i64], reason: &str, actor: &str) -> Result<Vec<i64>> {
        let mut tx = self.write().await?;
        let mut hosts = Vec::new();
        for id in ids {
            let h: Option<(i64, String)> = run!(tx.conn(), sqlx::query_as(
                "UPDATE steps SET state = 'cancelled', reason = $2, deadline = NULL WHERE id = $1 AND state NOT IN ('succeeded', 'cancelled') RETURNING host_id, host_name",
            )
            .bind(id)
            .bind(reason) => fetch_optional)?;
            if let Some((h, name)) = h {
                super::audit(
                    &mut tx,
                    actor,
                    "step.cancel",
                    &name,
                    Some(&format!("step={id} {reason}")),
                )
                .await?;
                if !hosts.contains(&h) {
                    hosts.push(h);
                }
            }
        }
        commit_bumping(self, tx, hosts).await
    }

    /// A finished reset forgets the cluster (false: `fence` no longer holds, nothing
    /// written).
    pub async fn delete_cluster(&self, fence: Fence) -> Result<bool> {
        let mut tx = self.write().await?;
        if !self.fence_holds(&mut tx, fence).await? {
            return Ok(false);
        }
        run!(tx.conn(), sqlx::query("DELETE FROM cluster_hosts WHERE cluster_id = $1")
            .bind(fence.cluster_id) => execute)?;
        run!(tx.conn(), sqlx::query("DELETE FROM clusters WHERE id = $1")
            .bind(fence.cluster_id) => execute)?;
        tx.commit().await?;
        Ok(true)
    }

    /// Digests referenced by any cluster's spec (a bundle in use cannot be removed).
    pub async fn cluster_specs(&self) -> Result<Vec<(String, String)>> {
        Ok(run!(self.reads(), sqlx::query_as("SELECT name, spec FROM clusters") => fetch_all)?)
    }

    /// Released/running steps past their deadline, or whose host was last seen before
    /// `seen_before`.
    pub async fn lost_steps(&self, now: i64, seen_before: i64) -> Result<Vec<LostStep>> {
        let rows = run!(self.reads(), sqlx::query(
            "SELECT s.id, s.cluster_id, s.attempt, s.state, s.host_name, s.deadline, COALESCE(h.last_seen, 0) AS last_seen
             FROM steps s LEFT JOIN hosts h ON h.id = s.host_id
             WHERE s.state IN ('released', 'running')
               AND ((s.deadline IS NOT NULL AND s.deadline < $1) OR h.id IS NULL OR h.last_seen < $2)",
        )
        .bind(now)
        .bind(seen_before) => fetch_all |r| LostStep {
                id: r.col("id"),
                cluster_id: r.col("cluster_id"),
                attempt: r.col("attempt"),
                state: r.parsed("state"),
                host_name: r.col("host_name"),
                deadline: r.col("deadline"),
                last_seen: r.col("last_seen"),
            })?;
        Ok(rows.into_iter().collect())
    }

    /// Marks a lost step `interrupted` unless it moved meanwhile.
    pub async fn mark_lost(&self, s: &LostStep, reason: &str) -> Result<bool> {
        Ok(write_one!(self, sqlx::query(
            "UPDATE steps SET state = 'interrupted', reason = $1, ended_at = $2, deadline = NULL
             WHERE id = $3 AND state = $4 AND attempt = $5",
        )
        .bind(reason)
        .bind(now_unix())
        .bind(s.id)
        .bind(s.state.as_str())
        .bind(s.attempt))?
            > 0)
    }

    /// `berth host delete --force` of a cluster member: its unfinished steps are cancelled
    /// and it leaves the cluster, in one transaction. Returns the cluster's id.
    pub async fn remove_from_cluster(&self, host_id: i64, actor: &str) -> Result<Option<i64>> {
        let mut tx = self.write().await?;
        let cluster: Option<(i64, String)> = run!(tx.conn(), sqlx::query_as(
            "SELECT c.id, c.name FROM cluster_hosts h JOIN clusters c ON c.id = h.cluster_id WHERE h.host_id = $1",
        )
        .bind(host_id) => fetch_optional)?;
        let Some((cid, cname)) = cluster else {
            return Ok(None);
        };
        run!(tx.conn(), sqlx::query("UPDATE steps SET state = 'cancelled', reason = 'host deleted', deadline = NULL WHERE host_id = $1 AND cluster_id = $2 AND state NOT IN ('succeeded', 'cancelled')")
            .bind(host_id)
            .bind(cid) => execute)?;
        run!(tx.conn(), sqlx::query("DELETE FROM cluster_hosts WHERE host_id = $1")
            .bind(host_id) => execute)?;
        super::audit(
            &mut tx,
            actor,
            "cluster.remove_host",
            &cname,
            Some(&format!("host_id={host_id}")),
        )
        .await?;
        tx.commit().await?;
        Ok(Some(cid))
    }
}

/// Bumps the plan generation of `hosts` (their plans changed), commits, returns them.
async fn commit_bumping(
    store: &Store,
    mut tx: super::WriteTx,
    hosts: Vec<i64>,
) -> Result<Vec<i64>> {
    // One statement for every host; deleted hosts are simply not returned.
    let bumped: Vec<(i64, i64)> = if hosts.is_empty() {
        Vec::new()
    } else {
        let ids_in = (tx.dialect().json_ints)(1);
        run!(tx.conn(), sqlx::query_as(&format!(
            "UPDATE hosts SET plan_generation = plan_generation + 1
             WHERE id IN {ids_in} RETURNING id, plan_generation",
        ))
        .bind(serde_json::to_string(&hosts)?) => fetch_all)?
    };
    let bumped: Vec<(i64, u64)> = bumped.into_iter().map(|(h, g)| (h, g as u64)).collect();
    store.announce_plans(&mut tx, &bumped).await?;
    tx.commit().await?;
    for (h, g) in bumped {
        store.cache.saw_generation(h, g);
    }
    Ok(hosts)
}

/// Returns the host's new plan generation (None: no such host).
async fn bump_generation(tx: &mut WriteTx, host_id: i64) -> Result<Option<u64>, sqlx::Error> {
    let g: Option<i64> = run!(tx.conn(), sqlx::query_scalar(
        "UPDATE hosts SET plan_generation = plan_generation + 1 WHERE id = $1 RETURNING plan_generation",
    )
    .bind(host_id) => fetch_optional)?;
    Ok(g.map(|g| g as u64))
}

/// Failed and interrupted steps of a cluster get a new attempt (resume, never restart).
async fn retry_failed(tx: &mut WriteTx, cluster_id: i64) -> Result<u64, sqlx::Error> {
    Ok(run!(tx.conn(), sqlx::query(
        "UPDATE steps SET state = 'pending', attempt = attempt + 1, exit_code = NULL, reason = NULL, started_at = NULL, ended_at = NULL, deadline = NULL, log_len = 0, log_stored = 0
         WHERE cluster_id = $1 AND state IN ('failed', 'interrupted') AND kind != 'exec'",
    )
    .bind(cluster_id) => execute)?)
}

async fn insert_steps(
    tx: &mut WriteTx,
    cluster_id: i64,
    generation: i64,
    steps: Vec<NewStep>,
    released_until: &[Option<i64>],
) -> Result<(), sqlx::Error> {
    if steps.is_empty() {
        return Ok(());
    }
    // One statement for all of them, in order ([[host, name, kind, ord, spec, best_effort,
    // deadline], …]); a step with a deadline in `released_until` is stored released, the
    // rest (also those past its end) pending.
    let rows: Vec<serde_json::Value> = steps
        .iter()
        .zip(released_until.iter().chain(std::iter::repeat(&None)))
        .map(|(s, deadline)| {
            serde_json::json!([
                s.host_id,
                s.host_name,
                s.kind.to_string(),
                s.ord,
                s.spec,
                s.best_effort as i64,
                deadline
            ])
        })
        .collect();
    let new_steps = (tx.dialect().json_rows)(3);
    run!(tx.conn(), sqlx::query(&format!(
        "INSERT INTO steps (cluster_id, generation, host_id, host_name, kind, ord, spec, best_effort, state, deadline)
         SELECT $1, $2, CAST(j.value ->> 0 AS BIGINT), j.value ->> 1, j.value ->> 2, CAST(j.value ->> 3 AS BIGINT),
                j.value ->> 4, CAST(j.value ->> 5 AS BIGINT),
                CASE WHEN j.value ->> 6 IS NULL THEN 'pending' ELSE 'released' END, CAST(j.value ->> 6 AS BIGINT)
         FROM {new_steps} ORDER BY j.key",
    ))
    .bind(cluster_id)
    .bind(generation)
    .bind(serde_json::Value::Array(rows).to_string()) => execute)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(host_id: i64, kind: StepKind, ord: i64) -> NewStep {
        NewStep {
            host_id,
            host_name: format!("h{host_id}"),
            kind,
            ord,
            spec: Default::default(),
            best_effort: false,
        }
    }

    fn generation(steps: Vec<NewStep>) -> Generation {
        Generation {
            steps,
            ..Generation::default()
        }
    }

    #[tokio::test]
    async fn steps_given_a_deadline_are_stored_released_and_their_hosts_woken() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let g = generation(vec![
            step(1, StepKind::Check, 0),
            step(2, StepKind::Check, 0),
            step(1, StepKind::Distribute, 1),
        ]);
        let first = store
            .apply_generation("c", "text", "{}", g, "test", &[Some(1001), Some(1002)])
            .await
            .unwrap();
        assert_eq!(first.released, vec![1, 2]);
        let states: Vec<(StepKind, StepState, Option<i64>)> = store
            .steps(first.id)
            .await
            .unwrap()
            .iter()
            .map(|s| (s.kind, s.state, s.deadline))
            .collect();
        assert_eq!(
            states,
            vec![
                (StepKind::Check, StepState::Released, Some(1001)),
                (StepKind::Check, StepState::Released, Some(1002)),
                (StepKind::Distribute, StepState::Pending, None),
            ]
        );
        let g = generation(vec![step(3, StepKind::Check, 0)]);
        let again = store
            .apply_generation("c", "text", "{}", g, "test", &[])
            .await
            .unwrap();
        assert_eq!(again.id, first.id);
        assert!(again.released.is_empty());
        let added = store.steps(first.id).await.unwrap();
        let added = added.iter().find(|s| s.host_id == 3).unwrap();
        assert_eq!((added.state, added.deadline), (StepState::Pending, None));
    }

    /// A step's spec is stored as it was planned and read back as the same value; one
    /// that does not decode is an error naming the step, never a default.
    #[tokio::test]
    async fn a_step_spec_round_trips_and_a_broken_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let mut s = step(1, StepKind::Leave, 0);
        s.spec.target = Some(("n1".into(), "10.0.0.2".into()));
        s.spec.apps = vec![2, 0];
        let planned = s.spec.clone();
        let c = store
            .apply_generation("c", "text", "{}", generation(vec![s]), "test", &[])
            .await
            .unwrap();
        let read = store.steps(c.id).await.unwrap();
        assert_eq!(read[0].spec, planned);
        run!(store.reads(), sqlx::query("UPDATE steps SET spec = 'not json' WHERE id = $1")
            .bind(read[0].id) => execute)
        .unwrap();
        let err = store.step(read[0].id).await.unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "step {}: its stored spec does not decode",
                read[0].id
            )),
            "{err}"
        );
        assert!(store.steps(c.id).await.is_err());
    }

    /// The store's three indexed reads give what the scheduler's `View::of` gives over all
    /// the steps, at every point of a rollout.
    #[tokio::test]
    async fn the_tick_view_is_the_schedulers_view() {
        use crate::scheduler::{next_release, Next, View};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let mut leave = step(4, StepKind::Leave, 3);
        leave.best_effort = true;
        let g = generation(vec![
            step(1, StepKind::Check, 0),
            step(2, StepKind::Check, 0),
            step(1, StepKind::Distribute, 1),
            step(2, StepKind::Distribute, 1),
            step(3, StepKind::JoinNode, 2),
            leave,
            step(1, StepKind::Remove, 4),
        ]);
        let id = store
            .apply_generation("c", "text", "{}", g, "test", &[])
            .await
            .unwrap()
            .id;
        let summary = |v: &View<StepRow>| {
            (
                v.failure.as_ref().map(|f| f.id),
                v.open_ord,
                v.pending.iter().map(|s| s.id).collect::<Vec<_>>(),
            )
        };
        let set = |sid: i64, state: StepState| {
            let store = &store;
            async move {
                write_one!(
                    store,
                    sqlx::query("UPDATE steps SET state = $1 WHERE id = $2")
                        .bind(state.as_str())
                        .bind(sid)
                )
                .unwrap();
            }
        };
        let mut rounds = 0;
        loop {
            let all = store.steps(id).await.unwrap();
            let from_store = store.tick_view(id).await.unwrap();
            assert_eq!(summary(&from_store), summary(&View::of(&all)), "{all:?}");
            match next_release(from_store) {
                Next::Done => break,
                Next::Stop(f) => panic!("stopped at {f:?}"),
                Next::Release(r) => {
                    // Released, then running (the view must not move), then finished:
                    // the leave fails, which (best-effort) stops nothing.
                    for s in &r {
                        set(s.id, StepState::Running).await;
                    }
                    let all = store.steps(id).await.unwrap();
                    assert_eq!(
                        summary(&store.tick_view(id).await.unwrap()),
                        summary(&View::of(&all))
                    );
                    for s in &r {
                        let to = if s.kind == StepKind::Leave {
                            StepState::Failed
                        } else {
                            StepState::Succeeded
                        };
                        set(s.id, to).await;
                    }
                }
            }
            rounds += 1;
        }
        assert_eq!(rounds, 5);
        // A failure: both say stop, at the same step.
        let last = store.steps(id).await.unwrap().last().unwrap().id;
        set(last, StepState::Interrupted).await;
        let all = store.steps(id).await.unwrap();
        assert_eq!(
            summary(&store.tick_view(id).await.unwrap()),
            summary(&View::of(&all))
        );
        assert!(matches!(
            next_release(store.tick_view(id).await.unwrap()),
            Next::Stop(f) if f.id == last
        ));
    }
}
