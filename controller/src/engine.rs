//! The reconcile engine: turns an applied Clusterfile into persisted steps, releases them
//! phase by phase, and builds each host's signed plan.
//!
//! Steps carry an `ord`: every step with a lower `ord` must be finished before a step is
//! released, and steps with equal `ord` run in parallel. Phases map to ords (check 1000,
//! distribute 2000, install 3000, init 4000, join-master 5000+i one at a time, join-node
//! 6000, apps 7000, leave 8000, remove 9000+i, clean 10000). All state lives in SQLite, so
//! a restarted controller simply ticks every cluster again.

use crate::pki::Pki;
use crate::store::clusters::{ClusterHostRow, NewClusterHost, NewStep, StepRow};
use crate::store::{HostRow, Store};
use crate::time::now_unix;
use anyhow::Result;
use berth_shared::bundle::{BundleType, Manifest};
use berth_shared::clusterfile::{strip_port, Clusterfile, ConfigDoc};
use berth_shared::plan::{
    envelope, PlanBundle, PlanConfig, PlanEnvelope, PlanPayload, PlanStep, PLAN_VERSION,
};
use berth_shared::{BundleRef, Digest};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// How long a signed plan is valid.
pub const PLAN_TTL_SECS: i64 = 3600;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<sqlx::Error> for EngineError {
    fn from(e: sqlx::Error) -> Self {
        EngineError::Internal(e.into())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResolvedBundle {
    pub reference: String,
    pub digest: Digest,
    pub manifest: Manifest,
}

/// What the `spec` column holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResolvedSpec {
    pub bundles: Vec<ResolvedBundle>,
    pub env: BTreeMap<String, String>,
    pub configs: Vec<ConfigDoc>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct StepSpec {
    /// Indexes into `ResolvedSpec::bundles` (app bundles for `apps`).
    #[serde(default)]
    apps: Vec<usize>,
    /// For leave/remove: the host being removed and its IP.
    #[serde(default)]
    target: Option<(String, String)>,
}

struct Desired {
    host: HostRow,
    role: String,
    ip: String,
    env: BTreeMap<String, String>,
}

/// A cluster's row, spec, hosts and outputs, loaded once per plan.
type ClusterCtx = (
    crate::store::clusters::ClusterRow,
    ResolvedSpec,
    Vec<ClusterHostRow>,
    BTreeMap<String, String>,
);

pub struct Engine {
    pub store: Store,
    pki: Arc<Pki>,
    wakers: Mutex<HashMap<i64, Arc<Notify>>>,
    tick_lock: tokio::sync::Mutex<()>,
}

pub struct Applied {
    pub name: String,
    pub warnings: Vec<String>,
}

impl Engine {
    pub fn new(store: Store, pki: Arc<Pki>) -> Engine {
        Engine {
            store,
            pki,
            wakers: Mutex::new(HashMap::new()),
            tick_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The Notify a host's long-poll waits on.
    pub fn waker(&self, host_id: i64) -> Arc<Notify> {
        let mut w = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
        w.entry(host_id)
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone()
    }

    fn wake(&self, host_id: i64) {
        self.waker(host_id).notify_waiters();
    }

    /// Stores a Clusterfile as the cluster's next generation and schedules what differs.
    pub async fn apply(&self, text: &str, actor: &str) -> Result<Applied, EngineError> {
        let cf = Clusterfile::parse(text).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let _guard = self.tick_lock.lock().await;
        let existing = self.store.cluster(&cf.name).await?;
        if let Some(c) = &existing {
            if c.phase == "Resetting" {
                return Err(EngineError::Conflict(format!(
                    "cluster `{}` is being reset; wait until it is gone",
                    c.name
                )));
            }
            let steps = self.store.steps(c.id).await?;
            let busy = steps
                .iter()
                .filter(|s| s.state == "released" || s.state == "running")
                .count();
            if busy > 0 {
                return Err(EngineError::Conflict(format!(
                    "an apply of cluster `{}` is in progress ({busy} steps running); wait for it (`berth status {} --watch`) and apply again",
                    c.name, c.name
                )));
            }
        }

        // Bundles.
        let mut bundles = Vec::new();
        for (i, image) in cf.images.iter().enumerate() {
            let field = format!("Clusterfile document (Cluster): spec.image[{i}]");
            let r: BundleRef = image
                .parse()
                .map_err(|e| EngineError::Invalid(format!("{field}: {e}")))?;
            let digest = match &r {
                BundleRef::Digest(d) => Some(d.to_string()),
                BundleRef::Tag { name, tag } => self.store.resolve_tag(name, tag).await?,
            };
            let row = match digest {
                Some(d) => self.store.bundle(&d).await?,
                None => None,
            };
            let row = row.ok_or_else(|| {
                EngineError::Invalid(format!("{field}: no bundle `{image}` is stored; push it with `berth bundle push DIR --tag {image}`"))
            })?;
            let manifest: Manifest =
                serde_json::from_str(&row.manifest).map_err(|e| EngineError::Internal(e.into()))?;
            if i == 0 && manifest.bundle_type != BundleType::Rootfs {
                return Err(EngineError::Invalid(format!(
                    "{field}: the first image must be a rootfs bundle, `{image}` is {:?}",
                    manifest.bundle_type
                )));
            }
            bundles.push(ResolvedBundle {
                reference: image.clone(),
                digest: row
                    .digest
                    .parse()
                    .map_err(|e: berth_shared::digest::DigestError| {
                        EngineError::Internal(e.into())
                    })?,
                manifest,
            });
        }
        for c in &cf.configs {
            if let Some(m) = &c.matches {
                if !bundles.iter().any(|b| &b.reference == m) {
                    return Err(EngineError::Invalid(format!(
                        "Clusterfile document {} (Config): spec.match: `{m}` is not one of spec.image",
                        c.doc
                    )));
                }
            }
        }

        // Hosts: by agent name, else by a reported address.
        let all_hosts = self.store.hosts().await?;
        let mut desired: Vec<Desired> = Vec::new();
        for g in &cf.hosts {
            for entry in &g.ips {
                let key = strip_port(entry);
                let host = all_hosts
                    .iter()
                    .find(|h| h.name == key)
                    .or_else(|| all_hosts.iter().find(|h| h.facts.addresses.iter().any(|a| a == &key)))
                    .ok_or_else(|| {
                        EngineError::Invalid(format!(
                            "Clusterfile document (Cluster): spec.hosts[{}].ips: no enrolled host is named or has the address `{key}`; enroll it with `berth-agent join` (see `berth get hosts`)",
                            g.index
                        ))
                    })?;
                if host.revoked {
                    return Err(EngineError::Invalid(format!(
                        "spec.hosts[{}].ips: host `{}` is revoked",
                        g.index, host.name
                    )));
                }
                if let Some(other) = self.store.cluster_of_host(host.id).await? {
                    if other != cf.name {
                        return Err(EngineError::Invalid(format!(
                            "Clusterfile document (Cluster): spec.hosts[{}].ips: host `{}` already belongs to cluster `{other}`",
                            g.index, host.name
                        )));
                    }
                }
                let ip = if key.parse::<std::net::IpAddr>().is_ok() {
                    key.clone()
                } else {
                    host.facts.addresses.first().cloned().unwrap_or_default()
                };
                desired.push(Desired {
                    host: host.clone(),
                    role: if g.is_master() {
                        "master".into()
                    } else {
                        "node".into()
                    },
                    ip,
                    env: g.env.clone(),
                });
            }
        }
        // Masters first (master0 = first master), then nodes, in Clusterfile order.
        desired.sort_by_key(|d| if d.role == "master" { 0 } else { 1 });

        let spec = ResolvedSpec {
            bundles: bundles.clone(),
            env: cf.env.clone(),
            configs: cf.configs.clone(),
            warnings: cf.warnings.clone(),
        };
        let current_hosts = match &existing {
            Some(c) => self.store.cluster_hosts(c.id).await?,
            None => Vec::new(),
        };
        let previous_spec: Option<ResolvedSpec> = existing
            .as_ref()
            .and_then(|c| serde_json::from_str(&c.spec).ok());

        let mut add_hosts = Vec::new();
        let mut host_updates = Vec::new();
        let mut steps = Vec::new();
        let step =
            |h: &HostRow, kind: &str, ord: i64, spec: &StepSpec, best_effort: bool| NewStep {
                host_id: h.id,
                host_name: h.name.clone(),
                kind: kind.into(),
                ord,
                spec: serde_json::to_string(spec).unwrap_or_else(|_| "{}".into()),
                best_effort,
            };
        let master0 = &desired[0];
        if let Some(cur0) = current_hosts
            .iter()
            .find(|h| h.ord == 0 && h.state == "active")
        {
            if cur0.host_id != master0.host.id {
                return Err(EngineError::Invalid(format!(
                    "spec.hosts: the first master must stay `{}` (master0 of cluster `{}`); master0 cannot change",
                    cur0.name, cf.name
                )));
            }
        }
        let mut new_masters = 0;
        for (ord, d) in desired.iter().enumerate() {
            let env_json =
                serde_json::to_string(&d.env).map_err(|e| EngineError::Internal(e.into()))?;
            match current_hosts.iter().find(|h| h.host_id == d.host.id) {
                Some(cur) => {
                    if cur.role != d.role {
                        return Err(EngineError::Invalid(format!(
                            "spec.hosts: host `{}` would change role from {} to {}; delete it from the cluster first, then add it back",
                            d.host.name, cur.role, d.role
                        )));
                    }
                    host_updates.push((d.host.id, d.ip.clone(), env_json, ord as i64));
                }
                None => {
                    add_hosts.push(NewClusterHost {
                        host_id: d.host.id,
                        role: d.role.clone(),
                        ord: ord as i64,
                        ip: d.ip.clone(),
                        env: env_json,
                    });
                    let none = StepSpec::default();
                    steps.push(step(&d.host, "check", 1000, &none, false));
                    steps.push(step(&d.host, "distribute", 2000, &none, false));
                    steps.push(step(&d.host, "install", 3000, &none, false));
                    if ord == 0 {
                        steps.push(step(&d.host, "init", 4000, &none, false));
                    } else if d.role == "master" {
                        steps.push(step(
                            &d.host,
                            "join-master",
                            5000 + new_masters,
                            &none,
                            false,
                        ));
                        new_masters += 1;
                    } else {
                        steps.push(step(&d.host, "join-node", 6000, &none, false));
                    }
                }
            }
        }
        let mut leaving = Vec::new();
        for (i, cur) in current_hosts
            .iter()
            .filter(|h| h.state == "active")
            .enumerate()
        {
            if desired.iter().any(|d| d.host.id == cur.host_id) {
                continue;
            }
            leaving.push(cur.host_id);
            let target = StepSpec {
                apps: vec![],
                target: Some((cur.name.clone(), cur.ip.clone())),
            };
            let h = all_hosts
                .iter()
                .find(|h| h.id == cur.host_id)
                .cloned()
                .ok_or_else(|| EngineError::Internal(anyhow::anyhow!("host vanished")))?;
            steps.push(step(&h, "leave", 8000, &target, true));
            steps.push(step(
                &master0.host,
                "remove",
                9000 + i as i64,
                &target,
                false,
            ));
        }
        // App bundles run once each, on master0.
        let old_apps: Vec<Digest> = previous_spec
            .map(|p| {
                p.bundles
                    .iter()
                    .filter(|b| b.manifest.bundle_type == BundleType::App)
                    .map(|b| b.digest)
                    .collect()
            })
            .unwrap_or_default();
        let new_apps: Vec<usize> = bundles
            .iter()
            .enumerate()
            .filter(|(_, b)| {
                b.manifest.bundle_type == BundleType::App && !old_apps.contains(&b.digest)
            })
            .map(|(i, _)| i)
            .collect();
        if !new_apps.is_empty() {
            steps.push(step(
                &master0.host,
                "apps",
                7000,
                &StepSpec {
                    apps: new_apps,
                    target: None,
                },
                false,
            ));
        }

        let spec_json =
            serde_json::to_string(&spec).map_err(|e| EngineError::Internal(e.into()))?;
        let id = self
            .store
            .apply_generation(
                &cf.name,
                text,
                &spec_json,
                add_hosts,
                &leaving,
                &host_updates,
                steps,
                actor,
            )
            .await?;
        drop(_guard);
        self.tick(id).await?;
        tracing::info!(cluster = %cf.name, "applied");
        Ok(Applied {
            name: cf.name,
            warnings: cf.warnings,
        })
    }

    /// Releases what can run, settles the cluster's phase. Idempotent.
    pub async fn tick(&self, cluster_id: i64) -> Result<()> {
        let _guard = self.tick_lock.lock().await;
        let Some(cluster) = self.store.cluster_by_id(cluster_id).await? else {
            return Ok(());
        };
        let steps = self.store.steps(cluster_id).await?;
        let finished = |s: &StepRow| {
            s.state == "succeeded"
                || s.state == "cancelled"
                || (s.best_effort && (s.state == "failed" || s.state == "interrupted"))
        };
        if let Some(f) = steps
            .iter()
            .find(|s| !s.best_effort && (s.state == "failed" || s.state == "interrupted"))
        {
            if cluster.phase != "Failed" {
                let msg = format!(
                    "step {} failed on host {}: {}{}",
                    f.kind,
                    f.host_name,
                    match f.exit_code {
                        Some(c) => format!("exit code {c}"),
                        None => f.state.clone(),
                    },
                    f.reason
                        .as_deref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                );
                tracing::warn!(cluster = %cluster.name, host = %f.host_name, step = %f.kind, "{msg}");
                self.store
                    .set_phase(cluster_id, "Failed", Some(&msg))
                    .await?;
            }
            return Ok(());
        }
        let unfinished: Vec<&StepRow> = steps.iter().filter(|s| !finished(s)).collect();
        let Some(min) = unfinished.iter().map(|s| s.ord).min() else {
            if cluster.phase == "Resetting" {
                let hosts = self.store.cluster_hosts(cluster_id).await?;
                self.store.delete_cluster(cluster_id).await?;
                for h in hosts {
                    self.wake(h.host_id);
                }
                tracing::info!(cluster = %cluster.name, "reset finished; cluster removed");
                return Ok(());
            }
            self.store.drop_left_hosts(cluster_id).await?;
            if cluster.phase != "Running" {
                self.store.set_phase(cluster_id, "Running", None).await?;
                tracing::info!(cluster = %cluster.name, "cluster is Running");
            }
            return Ok(());
        };
        let release: Vec<i64> = unfinished
            .iter()
            .filter(|s| s.ord == min && s.state == "pending")
            .map(|s| s.id)
            .collect();
        if !release.is_empty() {
            for h in self.store.release(&release).await? {
                self.wake(h);
            }
        }
        if cluster.phase == "Failed" {
            self.store
                .set_phase(cluster_id, "Reconciling", None)
                .await?;
        }
        Ok(())
    }

    /// Ticks every cluster (at start, after a restart).
    pub async fn tick_all(&self) -> Result<()> {
        for c in self.store.clusters().await? {
            self.tick(c.id).await?;
        }
        Ok(())
    }

    /// The host's current signed plan when it is newer than `have`.
    pub async fn plan_for(&self, host: &HostRow, have: u64) -> Result<Option<PlanEnvelope>> {
        let generation = self.store.plan_generation(host.id).await?;
        if generation <= have {
            return Ok(None);
        }
        let rows = self.store.host_plan_steps(host.id).await?;
        let mut steps = Vec::new();
        let mut cluster_name = String::new();
        let mut clusterfile = String::new();
        let mut cache: HashMap<i64, ClusterCtx> = HashMap::new();
        for s in rows {
            if let std::collections::hash_map::Entry::Vacant(e) = cache.entry(s.cluster_id) {
                let Some(c) = self.store.cluster_by_id(s.cluster_id).await? else {
                    continue;
                };
                let spec: ResolvedSpec = serde_json::from_str(&c.spec)?;
                let hosts = self.store.cluster_hosts(c.id).await?;
                let outputs = self.store.outputs(c.id).await?;
                e.insert((c, spec, hosts, outputs));
            }
            let (c, spec, hosts, outputs) = &cache[&s.cluster_id];
            cluster_name = c.name.clone();
            clusterfile = c.clusterfile.clone();
            let sspec: StepSpec = serde_json::from_str(&s.spec).unwrap_or_default();
            let pick = |b: &&ResolvedBundle| b.manifest.bundle_type != BundleType::App;
            let bundles: Vec<PlanBundle> = if s.kind == "apps" {
                sspec
                    .apps
                    .iter()
                    .filter_map(|i| spec.bundles.get(*i))
                    .map(plan_bundle)
                    .collect()
            } else {
                spec.bundles.iter().filter(pick).map(plan_bundle).collect()
            };
            let env = compose_env(&c.name, spec, hosts, outputs, host, &sspec);
            steps.push(PlanStep {
                id: s.id,
                attempt: s.attempt as u32,
                kind: s.kind.clone(),
                bundles,
                env,
                configs: spec
                    .configs
                    .iter()
                    .map(|c| PlanConfig {
                        path: c.path.clone(),
                        strategy: c.strategy.clone(),
                        data: c.data.clone(),
                        matches: c.matches.clone(),
                    })
                    .collect(),
            });
        }
        let now = now_unix();
        let payload = PlanPayload {
            version: PLAN_VERSION,
            cluster: cluster_name,
            host: host.name.clone(),
            generation,
            issued_at: now,
            expires_at: now + PLAN_TTL_SECS,
            clusterfile,
            steps,
        };
        let bytes = serde_json::to_vec(&payload)?;
        let sig = self.pki.plan_key.sign(&bytes);
        Ok(Some(envelope(
            &bytes,
            sig.as_ref(),
            &self.pki.plan_key_id(),
        )))
    }

    /// `berth reset`: clean hooks on every host, then the cluster is removed.
    pub async fn reset(&self, name: &str, actor: &str) -> Result<(), EngineError> {
        let c = self
            .store
            .cluster(name)
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("no cluster `{name}`")))?;
        let hosts = self.store.cluster_hosts(c.id).await?;
        let all = self.store.hosts().await?;
        let steps = hosts
            .iter()
            .filter_map(|h| all.iter().find(|a| a.id == h.host_id))
            .map(|h| NewStep {
                host_id: h.id,
                host_name: h.name.clone(),
                kind: "clean".into(),
                ord: 10_000,
                spec: "{}".into(),
                best_effort: true,
            })
            .collect();
        {
            let _g = self.tick_lock.lock().await;
            self.store.start_reset(c.id, steps, actor, name).await?;
        }
        self.tick(c.id).await?;
        Ok(())
    }

    pub async fn retry(&self, name: &str, actor: &str) -> Result<u64, EngineError> {
        let c = self
            .store
            .cluster(name)
            .await?
            .ok_or_else(|| EngineError::NotFound(format!("no cluster `{name}`")))?;
        let n = {
            let _g = self.tick_lock.lock().await;
            self.store.retry(c.id, actor, name).await?
        };
        self.tick(c.id).await?;
        Ok(n)
    }
}

fn plan_bundle(b: &ResolvedBundle) -> PlanBundle {
    PlanBundle {
        reference: b.reference.clone(),
        digest: b.digest,
        manifest: b.manifest.clone(),
    }
}

/// Env of a step, lowest precedence first: Clusterfile spec.env, per-host env, cluster
/// outputs, then the `BERTH_*` values. (Bundle env, below all of these, and the agent's
/// paths are added on the host.)
fn compose_env(
    cluster: &str,
    spec: &ResolvedSpec,
    hosts: &[ClusterHostRow],
    outputs: &BTreeMap<String, String>,
    me: &HostRow,
    step: &StepSpec,
) -> BTreeMap<String, String> {
    let mut env = spec.env.clone();
    let mine = hosts.iter().find(|h| h.host_id == me.id);
    if let Some(h) = mine {
        if let Ok(e) = serde_json::from_str::<BTreeMap<String, String>>(&h.env) {
            env.extend(e);
        }
    }
    env.extend(outputs.clone());
    let active: Vec<&ClusterHostRow> = hosts.iter().filter(|h| h.state == "active").collect();
    let masters: Vec<&str> = active
        .iter()
        .filter(|h| h.role == "master")
        .map(|h| h.ip.as_str())
        .collect();
    let nodes: Vec<&str> = active
        .iter()
        .filter(|h| h.role == "node")
        .map(|h| h.ip.as_str())
        .collect();
    let master0 = hosts.iter().find(|h| h.ord == 0);
    env.insert("BERTH_CLUSTER".into(), cluster.into());
    env.insert("BERTH_HOST".into(), me.name.clone());
    env.insert(
        "BERTH_HOST_IP".into(),
        mine.map(|h| h.ip.clone())
            .unwrap_or_else(|| me.facts.addresses.first().cloned().unwrap_or_default()),
    );
    env.insert(
        "BERTH_ROLES".into(),
        mine.map(|h| h.role.clone()).unwrap_or_default(),
    );
    env.insert(
        "BERTH_MASTER0".into(),
        master0.map(|h| h.name.clone()).unwrap_or_default(),
    );
    env.insert(
        "BERTH_MASTER0_IP".into(),
        master0.map(|h| h.ip.clone()).unwrap_or_default(),
    );
    env.insert("BERTH_MASTERS".into(), masters.join(","));
    env.insert("BERTH_NODES".into(), nodes.join(","));
    if let Some((name, ip)) = &step.target {
        env.insert("BERTH_TARGET_HOST".into(), name.clone());
        env.insert("BERTH_TARGET_IP".into(), ip.clone());
    }
    env
}
