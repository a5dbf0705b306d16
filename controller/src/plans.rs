//! Building signed plans at fleet scale.
//!
//! What all hosts of a cluster share is one [`ClusterContext`] per cluster version
//! (`cluster_ctx_versions`, bumped by triggers whenever the Clusterfile, the hosts or the
//! outputs change): built once, stored by its sha256 so any controller serves the exact
//! bytes, and named in each host's plan by digest. A host's plan holds only its steps,
//! bundle digests and its own env, so it stays a few KB however large the cluster is, and
//! a phase released to N hosts costs N small signatures, not N copies of the cluster.
//!
//! Signed envelopes are cached per host, keyed by everything they say (generation, the
//! steps and attempts, the context digest), so a re-poll never re-signs. New plans are
//! built on the plan [`Lane`], below the priority of reports and I/O: a wave of plans
//! gets the CPU the rest leaves, and does not queue the reports that arrive during it.

use crate::coalesce::Coalescer;
use crate::lane::Lane;
use crate::pki::Pki;
use crate::planner::{ResolvedBundle, ResolvedSpec, StepSpec};
use crate::store::clusters::{ClusterHostRow, StepRow};
use crate::store::{HostRow, Store};
use crate::time::now_unix;
use anyhow::Result;
use berth_shared::plan::{
    envelope, ClusterContext, ContextRef, PlanBundle, PlanConfig, PlanEnvelope, PlanPayload,
    PlanStep, PLAN_VERSION,
};
use berth_shared::state::HostRole;
use berth_shared::Digest;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// How long a signed plan is valid.
pub const PLAN_TTL_SECS: i64 = 3600;

/// How many nice steps below the rest of the controller plans are built and read.
const PLAN_LANE_NICE: i32 = 10;

/// Store connections of the plan lane's own (its reads are coalesced: a few suffice).
const PLAN_LANE_READERS: u32 = 3;

/// A cluster's context at one version, with what per-host plans need from it.
pub struct Context {
    pub cluster_id: i64,
    pub version: i64,
    pub name: String,
    pub digest: Digest,
    pub body: bytes::Bytes,
    pub spec: Arc<ResolvedSpec>,
    hosts: HashMap<i64, ClusterHostRow>,
}

struct CachedEnvelope {
    key: (String, u64, Digest, Vec<(i64, i64)>),
    issued_at: i64,
    envelope: PlanEnvelope,
}

/// Why a context is not served to a host.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("no context {0} is stored")]
    Unknown(String),
    #[error("context {0} belongs to a cluster this host has no released step in")]
    NotYours(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl From<crate::store::StoreError> for ContextError {
    fn from(e: crate::store::StoreError) -> Self {
        ContextError::Internal(e.into())
    }
}

pub struct Plans {
    store: Store,
    pki: Arc<Pki>,
    contexts: Mutex<HashMap<i64, Arc<Context>>>,
    /// One context build at a time: a phase released to thousands of hosts builds it once.
    building: tokio::sync::Mutex<()>,
    envelopes: Mutex<HashMap<i64, CachedEnvelope>>,
    /// Released and running steps by host, read for many polls at once.
    open_steps: Arc<Coalescer<i64, Vec<StepRow>>>,
    /// Context versions by cluster, read for many polls at once.
    ctx_versions: Arc<Coalescer<i64, Option<i64>>>,
    lane: Lane,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Plans {
    /// Starts the plan lane (as many threads as the main runtime has) and its store
    /// connections, opened from the lane so their threads share its priority.
    pub async fn start(store: Store, pki: Arc<Pki>) -> Result<Plans> {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let lane = Lane::start("plans", threads, PLAN_LANE_NICE)?;
        let store = lane
            .run(async move { store.with_own_reads(PLAN_LANE_READERS).await })
            .await??;
        Ok(Plans {
            store,
            pki,
            contexts: Mutex::new(HashMap::new()),
            building: tokio::sync::Mutex::new(()),
            envelopes: Mutex::new(HashMap::new()),
            open_steps: Arc::default(),
            ctx_versions: Arc::default(),
            lane,
        })
    }

    /// The cluster's current context (None when the cluster is gone).
    pub async fn context(&self, cluster_id: i64) -> Result<Option<Arc<Context>>> {
        let store = self.store.clone();
        let version = self
            .ctx_versions
            .load(cluster_id, move |ids| {
                let store = store.clone();
                async move { Ok(store.ctx_versions(&ids).await?) }
            })
            .await?;
        let Some(version) = version else {
            lock(&self.contexts).remove(&cluster_id);
            return Ok(None);
        };
        let cached = |c: &Mutex<HashMap<i64, Arc<Context>>>| {
            lock(c)
                .get(&cluster_id)
                .filter(|c| c.version == version)
                .cloned()
        };
        if let Some(c) = cached(&self.contexts) {
            return Ok(Some(c));
        }
        let _one = self.building.lock().await;
        if let Some(c) = cached(&self.contexts) {
            return Ok(Some(c));
        }
        // Rows read after `version` may be newer than it: then the version moved on too,
        // and the next call builds again. Never older.
        let Some(c) = self.store.cluster_by_id(cluster_id).await? else {
            return Ok(None);
        };
        let spec: ResolvedSpec = serde_json::from_str(&c.spec)?;
        let hosts = self.store.cluster_hosts(cluster_id).await?;
        let outputs = self.store.outputs(cluster_id).await?;
        let doc = shared_context(&c.name, &c.clusterfile, &spec, &hosts, &outputs);
        let body = serde_json::to_vec(&doc)?;
        let digest = Digest::of(&body);
        self.store
            .save_context(&digest.to_string(), cluster_id, &body)
            .await?;
        let ctx = Arc::new(Context {
            cluster_id,
            version,
            name: c.name,
            digest,
            body: body.into(),
            spec: Arc::new(spec),
            hosts: hosts.into_iter().map(|h| (h.host_id, h)).collect(),
        });
        lock(&self.contexts).insert(cluster_id, ctx.clone());
        Ok(Some(ctx))
    }

    /// Steps released to the host and not finished (its plan's steps). Polls woken
    /// together (a phase released to the fleet) share one query.
    pub async fn open_steps(&self, host_id: i64) -> Result<Vec<StepRow>> {
        let store = self.store.clone();
        self.open_steps
            .load(host_id, move |ids| {
                let store = store.clone();
                async move { Ok(store.plan_steps_of_hosts(&ids).await?) }
            })
            .await
    }

    /// Forgets what is cached about a host (deleted, revoked).
    pub fn forget_host(&self, host_id: i64) {
        lock(&self.envelopes).remove(&host_id);
    }

    /// The bytes of a context, for a host that has a released step in its cluster.
    pub async fn context_for_host(
        &self,
        host: &HostRow,
        digest: &Digest,
    ) -> Result<bytes::Bytes, ContextError> {
        let hit = lock(&self.contexts)
            .values()
            .find(|c| &c.digest == digest)
            .map(|c| (c.cluster_id, c.body.clone()));
        let (cluster_id, body) = match hit {
            Some(h) => h,
            None => match self.store.context(&digest.to_string()).await? {
                Some((cid, body)) => (cid, bytes::Bytes::from(body)),
                None => return Err(ContextError::Unknown(digest.to_string())),
            },
        };
        if !self.store.has_open_step_in(host.id, cluster_id).await? {
            return Err(ContextError::NotYours(digest.to_string()));
        }
        Ok(body)
    }

    /// The host's current signed plan when it is newer than `have`. The generation is read
    /// here (cached: a poll with nothing new costs no hop); the plan is read, built and
    /// signed on the plan lane.
    pub async fn plan_for(
        self: &Arc<Self>,
        host: &HostRow,
        have: u64,
    ) -> Result<Option<PlanEnvelope>> {
        let generation = self.store.plan_generation(host.id).await?;
        if generation <= have {
            return Ok(None);
        }
        let (this, host) = (self.clone(), host.clone());
        let env = self
            .lane
            .run(async move { this.build(&host, generation).await })
            .await??;
        Ok(Some(env))
    }

    /// The host's signed plan at `generation`, from the cache when nothing in it changed.
    async fn build(&self, host: &HostRow, generation: u64) -> Result<PlanEnvelope> {
        let rows = self.open_steps(host.id).await?;
        // A host is in one cluster at a time; its open steps are that cluster's.
        let ctx = match rows.first() {
            Some(s) => self.context(s.cluster_id).await?,
            None => None,
        };
        let rows: Vec<&StepRow> = match &ctx {
            Some(c) => rows
                .iter()
                .filter(|s| s.cluster_id == c.cluster_id)
                .collect(),
            None => Vec::new(),
        };
        // The name too: a deleted host's id may be given to the next one enrolled.
        let key = (
            host.name.clone(),
            generation,
            ctx.as_ref().map(|c| c.digest).unwrap_or(Digest::of(b"")),
            rows.iter().map(|s| (s.id, s.attempt)).collect::<Vec<_>>(),
        );
        let now = now_unix();
        if let Some(e) = lock(&self.envelopes).get(&host.id) {
            // Re-issued once half its lifetime is gone, so an agent never gets one about to expire.
            if e.key == key && now - e.issued_at < PLAN_TTL_SECS / 2 {
                return Ok(e.envelope.clone());
            }
        }
        let steps = match &ctx {
            Some(c) => rows.iter().map(|s| plan_step(c, host, s)).collect(),
            None => Vec::new(),
        };
        let payload = PlanPayload {
            version: PLAN_VERSION,
            cluster: ctx.as_ref().map(|c| c.name.clone()).unwrap_or_default(),
            host: host.name.clone(),
            generation,
            issued_at: now,
            expires_at: now + PLAN_TTL_SECS,
            context: ctx.as_ref().map(|c| ContextRef {
                digest: c.digest,
                size: c.body.len() as u64,
                configs: Some(c.spec.configs.len() as u32),
            }),
            steps,
        };
        let bytes = serde_json::to_vec(&payload)?;
        let sig = self.pki.plan_key.sign(&bytes);
        let env = envelope(&bytes, sig.as_ref(), &self.pki.plan_key_id());
        lock(&self.envelopes).insert(
            host.id,
            CachedEnvelope {
                key,
                issued_at: now,
                envelope: env.clone(),
            },
        );
        Ok(env)
    }
}

fn plan_step(ctx: &Context, host: &HostRow, s: &StepRow) -> PlanStep {
    let sspec = &s.spec;
    PlanStep {
        id: s.id,
        attempt: s.attempt as u32,
        kind: s.kind,
        bundles: ctx
            .spec
            .bundles_of(s.kind, sspec)
            .into_iter()
            .map(|b| plan_bundle(b, &host.facts.arch))
            .collect(),
        from: ctx
            .spec
            .from_of(s.kind)
            .iter()
            .map(|b| plan_bundle(b, &host.facts.arch))
            .collect(),
        exec: sspec.exec.clone(),
        env: host_env(ctx.hosts.get(&host.id), host, sspec),
    }
}

/// A bundle as a host of `arch` gets it: the tag's digest for its architecture.
fn plan_bundle(b: &ResolvedBundle, arch: &str) -> PlanBundle {
    let (digest, built_for) = b.for_arch(arch);
    PlanBundle {
        reference: b.reference.clone(),
        digest,
        manifest: b.manifest.clone(),
        arch: built_for.map(str::to_string),
    }
}

/// What every host of the cluster shares. Env precedence on the host, lowest first: this
/// `env` (cluster outputs, then the Clusterfile's `spec.env`, which includes `berth run -e`),
/// the host's own env (per-host env, then its `BERTH_*`), then this `berth`. Outputs never
/// override what the operator set. (Bundle env, below all of these, and the agent's paths
/// are added on the host.)
fn shared_context(
    cluster: &str,
    clusterfile: &str,
    spec: &ResolvedSpec,
    hosts: &[ClusterHostRow],
    outputs: &BTreeMap<String, String>,
) -> ClusterContext {
    let mut env: BTreeMap<String, String> = outputs
        .iter()
        .filter(|(k, _)| berth_shared::outputs::valid_name(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.extend(spec.env.clone());
    let active: Vec<&ClusterHostRow> = hosts.iter().filter(|h| h.state == "active").collect();
    let ips = |role: HostRole| {
        active
            .iter()
            .filter(|h| h.role == role)
            .map(|h| h.ip.as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    let master0 = hosts.iter().find(|h| h.ord == 0);
    let berth: BTreeMap<String, String> = [
        ("BERTH_CLUSTER", cluster.to_string()),
        (
            "BERTH_MASTER0",
            master0.map(|h| h.name.clone()).unwrap_or_default(),
        ),
        (
            "BERTH_MASTER0_IP",
            master0.map(|h| h.ip.clone()).unwrap_or_default(),
        ),
        ("BERTH_MASTERS", ips(HostRole::Master)),
        ("BERTH_NODES", ips(HostRole::Node)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    ClusterContext {
        cluster: cluster.to_string(),
        clusterfile: clusterfile.to_string(),
        env,
        berth,
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
    }
}

/// The host's own env: its per-host env, then its `BERTH_*` values.
fn host_env(
    mine: Option<&ClusterHostRow>,
    me: &HostRow,
    step: &StepSpec,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    if let Some(h) = mine {
        if let Ok(e) = serde_json::from_str::<BTreeMap<String, String>>(&h.env) {
            env.extend(e);
        }
    }
    env.insert("BERTH_HOST".into(), me.name.clone());
    env.insert(
        "BERTH_HOST_IP".into(),
        mine.map(|h| h.ip.clone())
            .unwrap_or_else(|| me.facts.addresses.first().cloned().unwrap_or_default()),
    );
    let role = mine.map(|h| h.role.to_string()).unwrap_or_default();
    // What sealos tells an image's scripts about the host they run on.
    env.insert("SEALOS_SYS_RUN_MODE".into(), role.clone());
    env.insert("BERTH_ROLES".into(), role);
    if let Some((name, ip)) = &step.target {
        env.insert("BERTH_TARGET_HOST".into(), name.clone());
        env.insert("BERTH_TARGET_IP".into(), ip.clone());
    }
    env
}
