//! The reconcile engine: the thin async layer around the pure `planner`. It loads what is
//! recorded, asks the planner what to run, persists it, releases steps phase by phase,
//! validates every agent report against the step state machine, declares lost steps, and
//! builds each host's signed plan.
//!
//! All state lives in SQLite, so a restarted controller simply ticks every cluster again.

use crate::planner::{
    self, DesiredHost, PlanError, Recorded, RecordedHost, ResolvedBundle, ResolvedSpec, StepSpec,
};
use crate::scheduler::{next_release, Next, Policy, View};
use crate::store::clusters::{ClusterHostRow, Fence, LogAppend, Released, StepResult, StepRow};
use crate::store::{HostRow, Signal, Store, StoreError, WriteTx};
use crate::time::now_unix;
use anyhow::Result;
use berth_shared::api::{codes, StepReport};
use berth_shared::bundle::BundleType;
use berth_shared::clusterfile::{strip_port, Clusterfile};
use berth_shared::state::{transition, ClusterPhase, HostRole, StepKind, StepState, Transition};
use berth_shared::{BundleRef, Digest};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

mod exec;
pub mod leases;
mod operate;
mod preview;
mod reports;

/// Largest accepted log chunk (the agent sends at most 64 KiB).
pub const MAX_LOG_CHUNK: usize = 256 * 1024;

/// The engine's knobs (from `berth serve` flags).
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Added to a step's own timeout to make its deadline.
    pub step_grace: Duration,
    /// A host not seen for this long loses its released and running steps.
    pub host_lost_after: Duration,
    /// Log bytes stored per step attempt; the rest is dropped with a marker.
    pub log_cap: u64,
    /// A cluster's lease lasts this long unless renewed: how soon another controller
    /// takes over the clusters of one that died (`--lease-ttl`).
    pub lease_ttl: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            step_grace: Duration::from_secs(300),
            host_lost_after: Duration::from_secs(600),
            log_cap: 16 << 20,
            lease_ttl: Duration::from_secs(5),
        }
    }
}

/// A refused request, with its stable code; `Internal` is a 500.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    #[error("{message}")]
    NotFound { code: &'static str, message: String },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl EngineError {
    fn invalid(message: impl Into<String>) -> Self {
        EngineError::Invalid {
            code: codes::INVALID_CLUSTERFILE,
            message: message.into(),
        }
    }
    fn not_found(message: impl Into<String>) -> Self {
        EngineError::NotFound {
            code: codes::NOT_FOUND,
            message: message.into(),
        }
    }
}

impl From<sqlx::Error> for EngineError {
    fn from(e: sqlx::Error) -> Self {
        EngineError::Internal(e.into())
    }
}

impl From<PlanError> for EngineError {
    fn from(e: PlanError) -> Self {
        EngineError::Invalid {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => EngineError::not_found(m),
            StoreError::Conflict(m) => EngineError::Conflict {
                code: codes::CONFLICT,
                message: m,
            },
            StoreError::Db(e) => EngineError::Internal(e.into()),
            StoreError::Other(e) => EngineError::Internal(e),
        }
    }
}

/// What a host's held polls wait on.
#[derive(Default)]
pub struct HostWaker {
    pub notify: Notify,
    /// When the engine last woke the host (its steps released or cancelled, committed).
    woken: Mutex<Option<std::time::Instant>>,
}

impl HostWaker {
    /// Wakes the held polls, noting when (for the plan-delivery histogram).
    fn wake(&self) {
        *self.woken.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
        self.notify.notify_waiters();
    }

    pub fn woken_at(&self) -> Option<std::time::Instant> {
        *self.woken.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct Engine {
    pub store: Store,
    /// Contexts, per-host plans and their signed envelopes.
    pub plans: Arc<crate::plans::Plans>,
    cfg: EngineConfig,
    wakers: Mutex<HashMap<i64, Arc<HostWaker>>>,
    tick_lock: tokio::sync::Mutex<()>,
    /// Clusters a report changed, ticked by `run_ticker` as soon as it is free: reports
    /// that land while a tick runs are settled by one tick after it, not one each.
    dirty: Mutex<std::collections::BTreeSet<i64>>,
    dirty_notify: Notify,
    /// Parsed specs by cluster, with the generation they belong to.
    specs: Mutex<HashMap<i64, (i64, Arc<ResolvedSpec>)>>,
    /// Per watched cluster, a counter bumped after every tick: what `GET
    /// /v1/clusters/{name}?wait=` waits on. Every change of a step or phase is followed by
    /// a tick of its cluster.
    changes: Mutex<HashMap<i64, tokio::sync::watch::Sender<u64>>>,
    /// Report batches waiting for the next group commit, and the turn to run one.
    report_queue: Mutex<Vec<ReportJob>>,
    report_turn: Arc<tokio::sync::Mutex<()>>,
    /// Where report groups, ticks and heartbeat flushes run: a run queue of their own, so
    /// a transaction holding the writers' turn resumes after each query without waiting
    /// behind a wave of polls on the main runtime.
    writer: crate::lane::Lane,
    /// Step durations are observed here.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The clusters this controller ticks (all of them on SQLite).
    pub leases: leases::Leases,
}

/// One request's report batch, queued for a group commit.
struct ReportJob {
    host: HostRow,
    entries: Vec<berth_shared::api::ReportEntry>,
    reply: tokio::sync::oneshot::Sender<Result<BatchOutcome, EngineError>>,
}

/// The writer lane's priority: nice −5 against the process where it may raise it (root,
/// `CAP_SYS_NICE`, or the packaged unit's `LimitNICE=`), its write connection opened from
/// it. In a 19,000-host fan-out the report groups compete for 2 cores with the main
/// runtime's threads answering polls; on equal terms a group of 20 ms of SQLite took up to
/// ~90 ms.
pub const WRITER_NICE: i32 = -5;

/// The most report batches one group commit applies.
const MAX_GROUP: usize = 512;

/// What a report batch did: the clusters it changed, and the first entry refused.
pub struct BatchOutcome {
    pub touched: std::collections::BTreeSet<i64>,
    pub refused: Option<(usize, EngineError)>,
}

/// What a group of report batches read and decided inside its transaction: the steps it
/// names (read once), the specs of their clusters, and the results to write at the end.
#[derive(Default)]
struct Group {
    steps: HashMap<i64, StepRow>,
    specs: HashMap<i64, Arc<ResolvedSpec>>,
    results: BTreeMap<i64, StepResult>,
    outputs: Vec<(i64, String, String)>,
    /// Steps this group finishes: (kind, final state, seconds), observed once committed.
    finished: Vec<(StepKind, StepState, f64)>,
    /// Log bytes it stores, counted once committed.
    log_bytes: u64,
}

impl Group {
    /// The step `step_id` as the group's earlier entries left it, when `host` owns it.
    fn owned_step(&self, host: &HostRow, step_id: i64) -> Result<StepRow, EngineError> {
        let step = self
            .steps
            .get(&step_id)
            .ok_or_else(|| EngineError::NotFound {
                code: codes::STEP_UNKNOWN,
                message: format!("no step {step_id}"),
            })?;
        if step.host_id != host.id {
            return Err(EngineError::Forbidden {
                code: codes::STEP_NOT_YOURS,
                message: format!("step {step_id} is not released to host {}", host.name),
            });
        }
        Ok(step.clone())
    }

    /// A validated report of `step`: its row as the database will hold it (what
    /// `write_step_results` stores), visible to the group's later entries.
    fn record(
        &mut self,
        step: &StepRow,
        r: &StepReport,
        deadline: Option<i64>,
    ) -> Result<(), EngineError> {
        let Some(row) = self.steps.get_mut(&step.id) else {
            return Err(EngineError::Internal(anyhow::anyhow!(
                "step {} left the group",
                step.id
            )));
        };
        row.state = r.state;
        row.exit_code = r.exit_code.map(i64::from);
        row.reason = r.reason.clone();
        row.started_at = r.started_at.or(row.started_at);
        row.ended_at = r.ended_at;
        row.log_tail = r.log_tail.clone().or(row.log_tail.take());
        row.deadline = deadline.or(row.deadline);
        self.results.insert(
            row.id,
            StepResult {
                id: row.id,
                attempt: row.attempt,
                state: row.state,
                exit_code: row.exit_code,
                reason: row.reason.clone(),
                started_at: row.started_at,
                ended_at: row.ended_at,
                log_tail: row.log_tail.clone(),
                outputs: serde_json::to_string(&r.outputs).map_err(anyhow::Error::from)?,
                deadline: row.deadline,
            },
        );
        if matches!(
            r.state,
            StepState::Succeeded | StepState::Failed | StepState::Interrupted
        ) {
            if let (Some(a), Some(b)) = (row.started_at, row.ended_at) {
                self.finished.push((row.kind, row.state, (b - a) as f64));
            }
        }
        if r.state == StepState::Succeeded {
            self.outputs.extend(
                r.outputs
                    .iter()
                    .map(|(k, v)| (row.cluster_id, k.clone(), v.clone())),
            );
        }
        Ok(())
    }

    async fn flush(&mut self, tx: &mut WriteTx) -> Result<(), EngineError> {
        let results: Vec<StepResult> = std::mem::take(&mut self.results).into_values().collect();
        let outputs = std::mem::take(&mut self.outputs);
        Store::write_step_results(tx, &results, &outputs).await?;
        Ok(())
    }
}

/// How a tick ended: done, or a write refused by its fence (tick again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    Done,
    Refused,
}

/// How an apply runs (from `berth apply` flags).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyOptions {
    /// Nodes an upgrade takes at once (over the Clusterfile's `spec.maxUnavailable`).
    pub max_unavailable: Option<u32>,
    /// Say what the apply would do; store nothing.
    pub dry_run: bool,
}

pub struct Applied {
    pub name: String,
    pub warnings: Vec<String>,
    /// A dry run's plan (nothing stored).
    pub plan: Option<berth_shared::api::PlanPreview>,
}

fn parse_spec(json: &str) -> Result<ResolvedSpec> {
    Ok(serde_json::from_str(json)?)
}

impl Engine {
    /// `writer` runs report groups, ticks and heartbeat flushes (see [`WRITER_NICE`]).
    pub fn new(
        store: Store,
        plans: crate::plans::Plans,
        writer: crate::lane::Lane,
        cfg: EngineConfig,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Engine {
        Engine {
            plans: Arc::new(plans),
            store,
            cfg,
            wakers: Mutex::new(HashMap::new()),
            tick_lock: tokio::sync::Mutex::new(()),
            dirty: Mutex::new(Default::default()),
            dirty_notify: Notify::new(),
            specs: Mutex::new(HashMap::new()),
            changes: Mutex::new(HashMap::new()),
            report_queue: Mutex::new(Vec::new()),
            report_turn: Arc::new(tokio::sync::Mutex::new(())),
            writer,
            metrics,
            leases: leases::Leases::new(cfg.lease_ttl),
        }
    }

    /// Starts `task` on the writer lane, where write transactions others wait for run.
    pub fn spawn_writer<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.writer.spawn(task)
    }

    /// A receiver that changes after the next tick of the cluster.
    pub fn changes(&self, cluster_id: i64) -> tokio::sync::watch::Receiver<u64> {
        let mut c = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        c.entry(cluster_id)
            .or_insert_with(|| tokio::sync::watch::channel(0).0)
            .subscribe()
    }

    fn changed(&self, cluster_id: i64) {
        let mut c = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = c.get(&cluster_id) {
            if tx.receiver_count() == 0 {
                c.remove(&cluster_id);
            } else {
                tx.send_modify(|v| *v = v.wrapping_add(1));
            }
        }
    }

    /// What a host's long-polls wait on (created on first use).
    pub fn waker(&self, host_id: i64) -> Arc<HostWaker> {
        let mut w = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
        w.entry(host_id).or_default().clone()
    }

    fn wake(&self, host_id: i64) {
        self.waker(host_id).wake();
    }

    /// Wakes a host's held polls if it has a waker here (another controller changed its
    /// plan: most hosts poll elsewhere).
    fn wake_waiting(&self, host_id: i64) {
        let w = self
            .wakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&host_id)
            .cloned();
        if let Some(w) = w {
            w.wake();
        }
    }

    /// Hosts with a waker here.
    fn wakers_now(&self) -> Vec<i64> {
        let w = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
        w.keys().copied().collect()
    }

    /// Clusters someone here watches.
    fn watched_now(&self) -> Vec<i64> {
        let c = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        c.keys().copied().collect()
    }

    /// Stores a Clusterfile as the cluster's next generation and schedules what differs.
    pub async fn apply(
        &self,
        text: &str,
        opts: ApplyOptions,
        actor: &str,
    ) -> Result<Applied, EngineError> {
        let started = std::time::Instant::now();
        let cf = Clusterfile::parse(text).map_err(|e| EngineError::invalid(e.to_string()))?;
        // SSH credentials are never stored: the stored text reaches every host. (Parsed
        // again only when there are some.)
        let stripped = if cf.ssh {
            berth_shared::clusterfile::without_ssh(text)
                .map_err(|e| EngineError::invalid(e.to_string()))?
        } else {
            None
        };
        let text = stripped.as_deref().unwrap_or(text);
        let parsed = started.elapsed();
        let _guard = self.tick_lock.lock().await;
        let existing = self.store.cluster(&cf.name).await?;
        let mut recorded = Recorded::default();
        // Failed and interrupted steps an apply runs again.
        let mut resumed: Vec<StepRow> = Vec::new();
        if let Some(c) = &existing {
            if c.phase.is_reset() {
                return Err(EngineError::Conflict {
                    code: codes::CLUSTER_RESETTING,
                    message: format!(
                        "cluster `{}` is being reset; wait until it is gone (`berth reset {} --force` finishes it without hosts that do not answer)",
                        c.name, c.name
                    ),
                });
            }
            let steps = self.store.steps(c.id).await?;
            let execs = steps
                .iter()
                .filter(|s| s.state.is_active() && s.kind == StepKind::Exec)
                .count();
            let busy = steps.iter().filter(|s| s.state.is_active()).count() - execs;
            if busy == 0 && execs > 0 {
                return Err(EngineError::Conflict {
                    code: codes::APPLY_IN_PROGRESS,
                    message: format!(
                        "`berth exec` is running on {execs} host(s) of cluster `{}`; wait for it (it ends by its --timeout) and apply again",
                        c.name
                    ),
                });
            }
            if busy > 0 {
                return Err(EngineError::Conflict {
                    code: codes::APPLY_IN_PROGRESS,
                    message: format!(
                        "an apply of cluster `{}` is in progress ({busy} steps running); wait for it (`berth status {} --watch`) and apply again",
                        c.name, c.name
                    ),
                });
            }
            recorded = Recorded {
                hosts: self.recorded_hosts(c.id).await?,
                spec: self.spec_of(None, c.id).await?.map(|s| (*s).clone()),
                installed: steps
                    .iter()
                    .any(|s| s.kind == StepKind::Install && s.state == StepState::Succeeded),
                unsettled: (c.phase != ClusterPhase::Running).then_some(c.phase),
                upgrade_failed: steps.iter().any(|s| {
                    s.kind == StepKind::Upgrade
                        && matches!(s.state, StepState::Failed | StepState::Interrupted)
                }),
                upgrade_unfinished: steps.iter().any(|s| {
                    matches!(s.kind, StepKind::Upgrade | StepKind::Rollback)
                        && matches!(
                            s.state,
                            StepState::Pending | StepState::Failed | StepState::Interrupted
                        )
                }),
            };
            resumed = steps
                .into_iter()
                .filter(|s| matches!(s.state, StepState::Failed | StepState::Interrupted))
                .filter(|s| s.kind != StepKind::Exec)
                .collect();
        }
        let mut bundles = self.resolve_bundles(&cf).await?;
        // sealos: `spec.command` replaces the first image's Cmd.
        if let (false, Some(first)) = (cf.command.is_empty(), bundles.first_mut()) {
            first.manifest.cmd.clear();
            first.manifest.commands = cf.command.clone();
        }
        let max_unavailable = opts
            .max_unavailable
            .or(cf.max_unavailable)
            .or(recorded.spec.as_ref().map(|s| s.rollout.max_unavailable));
        let mut spec = ResolvedSpec {
            bundles,
            env: cf.env.clone(),
            configs: cf.configs.clone(),
            warnings: cf.warnings.clone(),
            from: Vec::new(),
            rollout: Policy {
                max_unavailable: max_unavailable.unwrap_or(1).max(1),
            },
        };
        let hosts = self.resolve_hosts(&cf).await?;
        let resolved = started.elapsed();
        let generation = planner::diff(&cf.name, &hosts, &spec, &recorded)?;
        spec.from = generation.from.clone();
        if opts.dry_run {
            let plan = preview::preview(
                &cf.name,
                existing.as_ref().map(|c| c.clusterfile.as_str()),
                text,
                &spec,
                &recorded,
                &hosts,
                &generation,
                &resumed,
            );
            return Ok(Applied {
                name: cf.name,
                warnings: cf.warnings,
                plan: Some(plan),
            });
        }
        let spec_json =
            serde_json::to_string(&spec).map_err(|e| EngineError::Internal(e.into()))?;
        // A new cluster's first wave is stored released (with its deadlines): what the
        // first tick would decide, without writing every step twice (for 19,000 hosts
        // that second write was a third of the apply). A cluster that existed is left to
        // the tick, which weighs its earlier steps.
        let released = match existing {
            None => self.first_release(&spec, &generation.steps),
            Some(_) => Vec::new(),
        };
        let planned = started.elapsed();
        let stored = self
            .store
            .apply_generation(&cf.name, text, &spec_json, generation, actor, &released)
            .await?;
        let id = stored.id;
        for h in stored.released {
            self.wake(h);
        }
        let committed = started.elapsed();
        drop(_guard);
        self.tick(id).await?;
        let ms = |d: std::time::Duration| d.as_millis() as u64;
        tracing::info!(
            cluster = %cf.name,
            hosts = hosts.len(),
            parse_ms = ms(parsed),
            resolve_ms = ms(resolved - parsed),
            plan_ms = ms(planned - resolved),
            store_ms = ms(committed - planned),
            tick_ms = ms(started.elapsed() - committed),
            "applied"
        );
        Ok(Applied {
            name: cf.name,
            warnings: cf.warnings,
            plan: None,
        })
    }

    /// The scheduler's first release of steps that are all new (pending), as the deadline
    /// of each released one by position: what the store stores released at once.
    fn first_release(&self, spec: &ResolvedSpec, steps: &[planner::NewStep]) -> Vec<Option<i64>> {
        let now = now_unix();
        let first = match next_release(View::of(steps)) {
            Next::Release(r) => r.first().map(|f| f.ord),
            _ => None,
        };
        steps
            .iter()
            .map(|s| {
                (Some(s.ord) == first).then(|| now + self.step_deadline_secs(spec, s.kind, &s.spec))
            })
            .collect()
    }

    /// The cluster's hosts as the planner weighs them.
    async fn recorded_hosts(&self, cluster_id: i64) -> Result<Vec<RecordedHost>, EngineError> {
        Ok(self
            .store
            .cluster_hosts(cluster_id)
            .await?
            .into_iter()
            .map(recorded_host)
            .collect())
    }

    /// A cluster by name that is not being reset (what rollback and exec act on).
    async fn live_cluster(
        &self,
        name: &str,
    ) -> Result<crate::store::clusters::ClusterRow, EngineError> {
        let c = self
            .store
            .cluster(name)
            .await?
            .ok_or_else(|| EngineError::not_found(format!("no cluster `{name}`")))?;
        if c.phase.is_reset() {
            return Err(EngineError::Conflict {
                code: codes::CLUSTER_RESETTING,
                message: format!("cluster `{name}` is being reset"),
            });
        }
        Ok(c)
    }

    /// Bundles by tag or digest, in Clusterfile order.
    async fn resolve_bundles(&self, cf: &Clusterfile) -> Result<Vec<ResolvedBundle>, EngineError> {
        let mut bundles = Vec::new();
        for (i, image) in cf.images.iter().enumerate() {
            let field = format!("Clusterfile document (Cluster): spec.image[{i}]");
            let r: BundleRef = image
                .parse()
                .map_err(|e| EngineError::invalid(format!("{field}: {e}")))?;
            let mut arches = BTreeMap::new();
            let digest = match &r {
                BundleRef::Digest(d) => Some(d.to_string()),
                // `docker.io/labring/calico` and `labring/calico` are one image, as in sealos.
                BundleRef::Tag { name, tag } => {
                    let short = berth_shared::bundle_ref::short_name(name);
                    let mut found = None;
                    for n in [
                        name.clone(),
                        short.to_string(),
                        format!("docker.io/{short}"),
                    ] {
                        if let Some(d) = self.store.resolve_tag(&n, tag).await? {
                            for (a, d) in self.store.tag_arches(&n, tag).await? {
                                let d: Digest =
                                    d.parse().map_err(|e: berth_shared::digest::DigestError| {
                                        EngineError::Internal(e.into())
                                    })?;
                                arches.insert(a, d);
                            }
                            found = Some(d);
                            break;
                        }
                    }
                    found
                }
            };
            let row = match digest {
                Some(d) => self.store.bundle(&d).await?,
                None => None,
            };
            let row = row.ok_or_else(|| {
                EngineError::invalid(format!("{field}: no bundle `{image}` is stored; push it with `berth bundle push DIR --tag {image}`"))
            })?;
            let manifest: berth_shared::bundle::Manifest =
                serde_json::from_str(&row.manifest).map_err(|e| EngineError::Internal(e.into()))?;
            if i == 0 && manifest.bundle_type != BundleType::Rootfs {
                return Err(EngineError::invalid(format!(
                    "{field}: the first image must be a rootfs bundle, `{image}` is {:?}",
                    manifest.bundle_type
                )));
            }
            let digest: Digest = row
                .digest
                .parse()
                .map_err(|e: berth_shared::digest::DigestError| EngineError::Internal(e.into()))?;
            bundles.push(ResolvedBundle {
                reference: image.clone(),
                digest,
                manifest,
                arches,
            });
        }
        for c in &cf.configs {
            if let Some(m) = &c.matches {
                if !bundles.iter().any(|b| &b.reference == m) {
                    return Err(EngineError::invalid(format!(
                        "Clusterfile document {} (Config): spec.match: `{m}` is not one of spec.image",
                        c.doc
                    )));
                }
            }
        }
        self.check_configs_land(cf, &bundles).await?;
        Ok(bundles)
    }

    /// A Config goes to every image that has its file (or to the one it `match`es, which
    /// must have it unless the Config writes the whole file): one that no image can take
    /// is refused here rather than skipped on every host. Bundles pushed before their
    /// files were recorded are taken to have every file.
    async fn check_configs_land(
        &self,
        cf: &Clusterfile,
        bundles: &[ResolvedBundle],
    ) -> Result<(), EngineError> {
        let mut files: Vec<Option<std::collections::HashSet<String>>> = Vec::new();
        for b in bundles {
            files.push(
                self.store
                    .bundle_files(&b.digest.to_string())
                    .await?
                    .map(|f| f.into_iter().collect()),
            );
        }
        for c in &cf.configs {
            if c.matches.is_some() && c.strategy == "override" {
                continue;
            }
            let path = c.path.as_str();
            let candidates: Vec<usize> = (0..bundles.len())
                .filter(|i| {
                    c.matches
                        .as_ref()
                        .is_none_or(|m| &bundles[*i].reference == m)
                })
                .collect();
            let lands = candidates.iter().any(|i| match &files[*i] {
                None => true,
                Some(f) => f.contains(path),
            });
            if !lands {
                let names: Vec<&str> = candidates
                    .iter()
                    .map(|i| bundles[*i].reference.as_str())
                    .collect();
                return Err(EngineError::invalid(format!(
                    "Clusterfile document {} (Config {}): spec.path: no image has `{path}` ({}: {}), so this {} Config would change nothing on any host; check the path (relative to the image's root, e.g. charts/calico/values.yaml){}",
                    c.doc,
                    c.name,
                    if c.matches.is_some() { "the image it matches" } else { "images" },
                    names.join(", "),
                    c.strategy,
                    if c.matches.is_some() { ", or use strategy override to write the whole file" } else { ", or name the image with spec.match" },
                )));
            }
        }
        Ok(())
    }

    /// Hosts by agent name, else by the one host reporting that address. An address that
    /// two hosts claim is refused: a host must not become master0 by claiming an IP.
    async fn resolve_hosts(&self, cf: &Clusterfile) -> Result<Vec<DesiredHost>, EngineError> {
        let all_hosts = self.store.hosts().await?;
        let member_of = self.store.host_clusters().await?;
        let by_name: HashMap<&str, &HostRow> =
            all_hosts.iter().map(|h| (h.name.as_str(), h)).collect();
        let mut by_addr: HashMap<&str, Vec<&HostRow>> = HashMap::new();
        for h in &all_hosts {
            for a in &h.facts.addresses {
                by_addr.entry(a.as_str()).or_default().push(h);
            }
        }
        let mut desired = Vec::new();
        for g in &cf.hosts {
            for entry in &g.ips {
                let key = strip_port(entry);
                let field = format!(
                    "Clusterfile document (Cluster): spec.hosts[{}].ips",
                    g.index
                );
                let mut claims: Vec<&HostRow> =
                    by_name.get(key.as_str()).copied().into_iter().collect();
                if key.parse::<std::net::IpAddr>().is_ok() {
                    for h in by_addr.get(key.as_str()).into_iter().flatten() {
                        if !claims.iter().any(|c| c.id == h.id) {
                            claims.push(h);
                        }
                    }
                }
                let host = match claims.as_slice() {
                    [h] => *h,
                    [] => {
                        return Err(EngineError::invalid(format!(
                            "{field}: no enrolled host is named or has the address `{key}`; enroll it with `berth-agent join` (see `berth get hosts`)"
                        )))
                    }
                    many => {
                        let names: Vec<&str> = many.iter().map(|h| h.name.as_str()).collect();
                        return Err(EngineError::Invalid {
                            code: codes::AMBIGUOUS_ADDRESS,
                            message: format!(
                                "{field}: the address `{key}` is claimed by hosts {}; name the host instead of its address, or revoke the one that should not have it",
                                names.join(" and ")
                            ),
                        });
                    }
                };
                if host.revoked {
                    return Err(EngineError::invalid(format!(
                        "{field}: host `{}` is revoked",
                        host.name
                    )));
                }
                // sealos writes the architecture as a role (amd64, arm64): it must be the
                // host's.
                for role in g
                    .roles
                    .iter()
                    .filter(|r| matches!(r.as_str(), "amd64" | "arm64"))
                {
                    let want = berth_shared::bundle::normalize_arch(role).unwrap_or_default();
                    if host.facts.arch != want {
                        return Err(EngineError::invalid(format!(
                            "Clusterfile document (Cluster): spec.hosts[{}].roles: `{role}`, but host `{}` reports {}; put it in a group whose roles name its architecture (or none)",
                            g.index, host.name, host.facts.arch
                        )));
                    }
                }
                if let Some(other) = member_of.get(&host.id) {
                    if *other != cf.name {
                        return Err(EngineError::invalid(format!(
                            "{field}: host `{}` already belongs to cluster `{other}`",
                            host.name
                        )));
                    }
                }
                let ip = if key.parse::<std::net::IpAddr>().is_ok() {
                    key.clone()
                } else {
                    host.facts.addresses.first().cloned().unwrap_or_default()
                };
                desired.push(DesiredHost {
                    host_id: host.id,
                    name: host.name.clone(),
                    role: if g.is_master() {
                        HostRole::Master
                    } else {
                        HostRole::Node
                    },
                    ip,
                    env: serde_json::to_string(&g.env)
                        .map_err(|e| EngineError::Internal(e.into()))?,
                });
            }
        }
        Ok(desired)
    }

    /// Releases what can run, settles the cluster's phase. Idempotent. Costs a few indexed
    /// reads plus the steps it releases, however many steps the cluster has (a reset,
    /// which is rare, reads them all).
    /// Only the controller holding the cluster's lease ticks it; another asks it to.
    pub async fn tick(&self, cluster_id: i64) -> Result<()> {
        if !self.hold(cluster_id).await? {
            self.store.signal(Signal::Tick(vec![cluster_id])).await;
            return Ok(());
        }
        let out = self.tick_locked(cluster_id).await;
        self.changed(cluster_id);
        self.store.signal(Signal::Changed(vec![cluster_id])).await;
        out
    }

    async fn tick_locked(&self, cluster_id: i64) -> Result<()> {
        let _guard = self.tick_lock.lock().await;
        let began = std::time::Instant::now();
        let out = self.tick_held(cluster_id).await;
        self.metrics.store_transaction("tick", began.elapsed());
        // A write the fence refused: the cluster moved on (an apply, reset or rollback on
        // another controller) or this controller's lease lapsed. Tick again from what is
        // there now (or let the holder: `tick` forwards it).
        if let Ok(Settled::Refused) = out {
            self.schedule_tick(cluster_id);
        }
        out.map(|_| ())
    }

    /// One tick, under the tick lock. Every write it makes is fenced by the cluster's
    /// generation it read and this controller's lease (`store::clusters::Fence`).
    async fn tick_held(&self, cluster_id: i64) -> Result<Settled> {
        let Some(head) = self.store.cluster_head(cluster_id).await? else {
            return Ok(Settled::Done);
        };
        let fence = Fence {
            cluster_id,
            generation: head.generation,
        };
        if head.phase.is_reset() {
            let Some(cluster) = self.store.cluster_by_id(cluster_id).await? else {
                return Ok(Settled::Done);
            };
            let steps = self.store.steps(cluster_id).await?;
            return self.tick_reset(&cluster, &steps).await;
        }
        let pending = match next_release(self.store.tick_view(cluster_id).await?) {
            Next::Stop(f) => return self.settle_failed(fence, &head, &f).await,
            Next::Done => {
                if !self.store.drop_left_hosts(fence).await? {
                    return Ok(Settled::Refused);
                }
                if head.phase != ClusterPhase::Running {
                    if !self
                        .store
                        .settle_phase(fence, ClusterPhase::Running, None)
                        .await?
                    {
                        return Ok(Settled::Refused);
                    }
                    tracing::info!(cluster = %head.name, "cluster is Running");
                }
                return Ok(Settled::Done);
            }
            Next::Release(pending) => pending,
        };
        if let Some(first) = pending
            .first()
            .filter(|s| matches!(s.kind, StepKind::Upgrade | StepKind::Rollback))
        {
            let hosts: Vec<&str> = pending.iter().map(|s| s.host_name.as_str()).collect();
            let msg = format!(
                "{} batch {}: {}",
                first.kind,
                first.ord - first.kind.base_ord() + 1,
                hosts.join(", ")
            );
            self.store
                .record_event(&head.name, None, "batch", &msg)
                .await?;
        }
        if self.release(fence, pending.iter()).await? == Settled::Refused {
            return Ok(Settled::Refused);
        }
        if head.phase == ClusterPhase::Failed
            && !self
                .store
                .settle_phase(fence, ClusterPhase::Reconciling, None)
                .await?
        {
            return Ok(Settled::Refused);
        }
        Ok(Settled::Done)
    }

    /// The cluster is Failed, naming the step that stopped it.
    async fn settle_failed(
        &self,
        fence: Fence,
        head: &crate::store::plans::ClusterHead,
        f: &StepRow,
    ) -> Result<Settled> {
        if head.phase != ClusterPhase::Failed {
            let msg = format!(
                "step {} failed on host {}: {}",
                f.kind,
                f.host_name,
                outcome(f)
            );
            if !self
                .store
                .settle_phase(fence, ClusterPhase::Failed, Some(&msg))
                .await?
            {
                return Ok(Settled::Refused);
            }
            tracing::warn!(cluster = %head.name, host = %f.host_name, step = %f.kind, "{msg}");
        }
        Ok(Settled::Done)
    }

    /// A reset: steps cancelled at its start stay cancelled; what was running finishes (or
    /// is declared lost); then `clean` runs everywhere. A clean that failed or was lost
    /// keeps the cluster (`ResetFailed`) until an operator retries or forces it.
    async fn tick_reset(
        &self,
        cluster: &crate::store::clusters::ClusterRow,
        steps: &[StepRow],
    ) -> Result<Settled> {
        let fence = Fence {
            cluster_id: cluster.id,
            generation: cluster.generation,
        };
        // A reset stops for nothing: clean is best-effort, and what ran when it began only
        // finishes, whatever its result.
        let mut view = View::of(steps);
        view.failure = None;
        if let Next::Release(pending) = next_release(view) {
            return self.release(fence, pending.iter()).await;
        }
        let failed: Vec<String> = steps
            .iter()
            .filter(|s| {
                s.kind == StepKind::Clean
                    && matches!(s.state, StepState::Failed | StepState::Interrupted)
            })
            .map(|s| format!("{} ({})", s.host_name, outcome(s)))
            .collect();
        if !failed.is_empty() {
            if cluster.phase != ClusterPhase::ResetFailed {
                let msg = format!(
                    "reset incomplete: clean failed on {}; `berth retry {}` runs it again, `berth reset {} --force` removes the cluster anyway",
                    failed.join(", "),
                    cluster.name,
                    cluster.name
                );
                if !self
                    .store
                    .settle_phase(fence, ClusterPhase::ResetFailed, Some(&msg))
                    .await?
                {
                    return Ok(Settled::Refused);
                }
                tracing::warn!(cluster = %cluster.name, "{msg}");
            }
            return Ok(Settled::Done);
        }
        let hosts = self.store.cluster_hosts(cluster.id).await?;
        if !self.store.delete_cluster(fence).await? {
            return Ok(Settled::Refused);
        }
        for h in hosts {
            self.wake(h.host_id);
        }
        tracing::info!(cluster = %cluster.name, "reset finished; cluster removed");
        Ok(Settled::Done)
    }

    /// Releases pending steps with their deadlines and wakes their hosts.
    async fn release<'a>(
        &self,
        fence: Fence,
        steps: impl Iterator<Item = &'a StepRow>,
    ) -> Result<Settled> {
        let spec = self
            .spec_of(None, fence.cluster_id)
            .await?
            .unwrap_or_default();
        let now = now_unix();
        let release: Vec<(i64, i64)> = steps
            .filter(|s| s.state == StepState::Pending)
            .map(|s| (s.id, now + self.deadline_secs(&spec, s)))
            .collect();
        if release.is_empty() {
            return Ok(Settled::Done);
        }
        match self.store.release(fence, &release).await? {
            Released::Woke(hosts) => {
                for h in hosts {
                    self.wake(h);
                }
                Ok(Settled::Done)
            }
            Released::Refused => Ok(Settled::Refused),
        }
    }

    fn deadline_secs(&self, spec: &ResolvedSpec, s: &StepRow) -> i64 {
        self.step_deadline_secs(spec, s.kind, &s.spec)
    }

    /// How long a step of `kind` with `step_spec` may take once released, grace included.
    fn step_deadline_secs(&self, spec: &ResolvedSpec, kind: StepKind, step_spec: &StepSpec) -> i64 {
        (spec.step_timeout_secs(kind, step_spec) + self.cfg.step_grace.as_secs()) as i64
    }

    /// The cluster's spec, decoded once per generation (see `spec_of`); `None` when the
    /// cluster is gone. A stored spec that does not decode is an error, never a default.
    pub async fn spec(&self, cluster_id: i64) -> Result<Option<Arc<ResolvedSpec>>> {
        self.spec_of(None, cluster_id).await
    }

    /// The cluster's parsed spec: one small read for its generation, parsed only when it
    /// changed. Read on `conn` when given (inside a write transaction), else on the pool.
    async fn spec_of(
        &self,
        conn: Option<&mut WriteTx>,
        cluster_id: i64,
    ) -> Result<Option<Arc<ResolvedSpec>>> {
        let cached = |g: i64| {
            self.specs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&cluster_id)
                .filter(|(at, _)| *at == g)
                .map(|(_, s)| s.clone())
        };
        let mut conn = conn;
        let head = match conn.as_deref_mut() {
            Some(c) => Store::spec_in(c, cluster_id, false).await?,
            None => self.store.spec_version(cluster_id, false).await?,
        };
        let Some((generation, _)) = head else {
            return Ok(None);
        };
        if let Some(s) = cached(generation) {
            return Ok(Some(s));
        }
        let full = match conn {
            Some(c) => Store::spec_in(c, cluster_id, true).await?,
            None => self.store.spec_version(cluster_id, true).await?,
        };
        let Some((generation, Some(text))) = full else {
            return Ok(None);
        };
        let spec = Arc::new(parse_spec(&text)?);
        self.specs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(cluster_id, (generation, spec.clone()));
        Ok(Some(spec))
    }

    /// Asks `run_ticker` to tick a cluster. Never waits.
    pub fn schedule_tick(&self, cluster_id: i64) {
        self.dirty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(cluster_id);
        self.dirty_notify.notify_one();
    }

    /// Ticks the clusters `schedule_tick` named, at once and coalesced, until shutdown.
    pub async fn run_ticker(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.dirty_notify.notified() => {}
            }
            let due = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|e| e.into_inner()));
            for cid in due {
                if let Err(e) = self.tick(cid).await {
                    tracing::error!(
                        cluster = cid,
                        error = format!("{e:#}"),
                        "tick failed; retrying with the next report"
                    );
                    self.dirty
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(cid);
                }
            }
        }
    }

    /// Ticks every cluster this controller holds (at start, after a restart; on SQLite,
    /// every cluster).
    pub async fn tick_all(&self) -> Result<()> {
        for c in self.leases.mine() {
            self.tick(c).await?;
        }
        Ok(())
    }

    /// Declares lost every released/running step past its deadline or on a host not seen
    /// for `host_lost_after`: it becomes `interrupted` (reason `lost: …`), its cluster
    /// `Failed`, so `berth retry`, `reset --force` or `host delete --force` can go on.
    pub async fn reap(&self) -> Result<usize> {
        let now = now_unix();
        let lost_after = self.cfg.host_lost_after.as_secs() as i64;
        let mut n = 0;
        for s in self.store.lost_steps(now, now - lost_after).await? {
            // The holder of the cluster declares its steps lost.
            if !self.hold(s.cluster_id).await? {
                continue;
            }
            let reason = match s.deadline {
                Some(d) if d < now => format!(
                    "lost: no result from host {} by the step's deadline (its hook timeouts plus {}s)",
                    s.host_name,
                    self.cfg.step_grace.as_secs()
                ),
                _ => format!(
                    "lost: host {} has not been seen for {}s",
                    s.host_name,
                    now - s.last_seen
                ),
            };
            if self.store.mark_lost(&s, &reason).await? {
                tracing::warn!(host = %s.host_name, step = s.id, "{reason}");
                self.tick(s.cluster_id).await?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Runs `reap` every `every` until shutdown.
    pub async fn run_reaper(
        self: Arc<Self>,
        every: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            if let Err(e) = self.reap().await {
                tracing::error!(error = format!("{e:#}"), "declaring lost steps failed");
            }
            if let Err(e) = self.store.prune_events().await {
                tracing::error!(error = format!("{e:#}"), "pruning the event log failed");
            }
        }
    }

    /// Whether a host may download a blob: it is a bundle of a step released to it.
    pub async fn may_fetch(&self, host: &HostRow, digest: &Digest) -> Result<bool> {
        // The host's open steps and their clusters' specs, as its plan read them: many
        // hosts fetching at once share the queries.
        for s in self.plans.open_steps(host.id).await? {
            let Some(ctx) = self.plans.context(s.cluster_id).await? else {
                continue;
            };
            if ctx
                .spec
                .fetchable(s.kind, &s.spec)
                .iter()
                .any(|b| &b.for_arch(&host.facts.arch).0 == digest)
            {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

fn recorded_host(h: ClusterHostRow) -> RecordedHost {
    RecordedHost {
        host_id: h.host_id,
        name: h.name,
        role: h.role,
        ord: h.ord,
        ip: h.ip,
        active: h.state == "active",
    }
}

fn outcome(s: &StepRow) -> String {
    format!(
        "{}{}",
        match s.exit_code {
            Some(c) => format!("exit code {c}"),
            None => s.state.to_string(),
        },
        s.reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    )
}
