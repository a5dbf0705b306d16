//! The pure planner: what an apply or a reset must run, from the desired cluster and what
//! is recorded. No IO, no clock: `engine` loads, calls these and persists the result.
//!
//! Steps carry an `ord` (`StepKind::base_ord`): every step with a lower ord must be
//! finished before a step is released; equal ords run in parallel. join-master and remove
//! add an index so they run one at a time.

use crate::scheduler::{waves, Policy};
use berth_shared::api::codes;
use berth_shared::bundle::{BundleType, Manifest};
use berth_shared::clusterfile::ConfigDoc;
use berth_shared::state::{HostRole, StepKind};
use berth_shared::Digest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How long `distribute` may take when no hook timeout says otherwise (fetch + unpack).
pub const DISTRIBUTE_TIMEOUT_SECS: u64 = 1800;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResolvedBundle {
    pub reference: String,
    /// The tag's primary digest (whose manifest this is).
    pub digest: Digest,
    pub manifest: Manifest,
    /// The tag's digest per architecture (empty: `digest` for every one).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub arches: BTreeMap<String, Digest>,
}

impl ResolvedBundle {
    /// The digest a host of `arch` gets, and the architecture it is built for (None: any):
    /// the tag's digest for that architecture, else the primary one (which the host's
    /// check then refuses when it is built for another architecture).
    pub fn for_arch(&self, arch: &str) -> (Digest, Option<&str>) {
        if let Some((a, d)) = self.arches.get_key_value(arch) {
            return (*d, Some(a.as_str()));
        }
        let primary = self
            .arches
            .iter()
            .find(|(_, d)| **d == self.digest)
            .map(|(a, _)| a.as_str());
        (self.digest, primary.or(self.manifest.arch.as_deref()))
    }
}

/// What a cluster's `spec` column holds: the Clusterfile with bundles resolved to digests.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct ResolvedSpec {
    pub bundles: Vec<ResolvedBundle>,
    pub env: BTreeMap<String, String>,
    pub configs: Vec<ConfigDoc>,
    pub warnings: Vec<String>,
    /// The rootfs/patch bundles the hosts had before the last upgrade or rollback: what
    /// its steps move from (empty: the cluster was never upgraded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<ResolvedBundle>,
    /// How upgrades and rollbacks roll over the hosts.
    #[serde(default)]
    pub rollout: Policy,
}

impl ResolvedSpec {
    /// The rootfs and patch bundles, in Clusterfile order (what hooks run from).
    pub fn base(&self) -> impl Iterator<Item = &ResolvedBundle> {
        self.bundles
            .iter()
            .filter(|b| b.manifest.bundle_type != BundleType::App)
    }

    /// The bundles a step works with: the app bundles it names for `apps`, else the base
    /// (for upgrade and rollback: the generation the host moves to).
    pub fn bundles_of<'a>(&'a self, kind: StepKind, step: &'a StepSpec) -> Vec<&'a ResolvedBundle> {
        match kind {
            StepKind::Apps => step
                .apps
                .iter()
                .filter_map(|i| self.bundles.get(*i))
                .collect(),
            // A command of the operator's: it runs from the rootfs the host has.
            StepKind::Exec => Vec::new(),
            // The app bundles taken out: in the step (a later apply's spec no longer has
            // them, and a failed clean is resumed by one).
            StepKind::CleanApps => step.removed.iter().collect(),
            _ => self.base().collect(),
        }
    }

    /// Upgrade and rollback: the generation the host moves from.
    pub fn from_of(&self, kind: StepKind) -> &[ResolvedBundle] {
        match kind {
            StepKind::Upgrade | StepKind::Rollback => &self.from,
            _ => &[],
        }
    }

    /// The bundles whose hooks a step runs, each with the hook: a rollback runs those of
    /// the generation it leaves (which know what their upgrade did); an upgrade runs a
    /// changed bundle's `upgrade` and a new patch bundle's `install` (as the agent does).
    fn hook_bundles<'a>(
        &'a self,
        kind: StepKind,
        step: &'a StepSpec,
    ) -> Vec<(&'a ResolvedBundle, &'static str)> {
        let Some(hook) = kind.hook() else {
            return Vec::new();
        };
        match kind {
            StepKind::Rollback => self.from.iter().map(|b| (b, hook)).collect(),
            StepKind::Upgrade => self
                .bundles_of(kind, step)
                .into_iter()
                .filter_map(|b| {
                    match self
                        .from
                        .iter()
                        .find(|o| o.manifest.name == b.manifest.name)
                    {
                        Some(o) if o.digest == b.digest => None,
                        Some(_) => Some((b, hook)),
                        None => Some((b, "install")),
                    }
                })
                .collect(),
            _ => self
                .bundles_of(kind, step)
                .into_iter()
                .map(|b| (b, hook))
                .collect(),
        }
    }

    /// Every bundle a step may fetch.
    pub fn fetchable<'a>(&'a self, kind: StepKind, step: &'a StepSpec) -> Vec<&'a ResolvedBundle> {
        let mut v = self.bundles_of(kind, step);
        v.extend(self.from_of(kind));
        v
    }

    /// The longest a step may take on its host: the sum of its bundles' hook timeouts
    /// (hooks run one after the other), plus distribute's for steps that may unpack.
    pub fn step_timeout_secs(&self, kind: StepKind, step: &StepSpec) -> u64 {
        let hooks: u64 = self
            .hook_bundles(kind, step)
            .iter()
            .filter(|(b, h)| *h == "cmd" || b.manifest.hooks.contains_key(*h))
            .map(|(b, h)| b.manifest.timeout(h).as_secs())
            .sum();
        let unpack = match kind {
            // check and apps unpack what they run; a hook step may re-distribute a stale rootfs.
            StepKind::Leave | StepKind::Remove | StepKind::Clean => 0,
            StepKind::Exec => return step.exec.as_ref().map_or(0, |e| e.timeout_secs),
            _ => DISTRIBUTE_TIMEOUT_SECS,
        };
        hooks + unpack
    }

    /// Whether the step's `hook` of some bundle may publish output `key`.
    pub fn may_output(&self, kind: StepKind, step: &StepSpec, key: &str) -> bool {
        self.hook_bundles(kind, step)
            .iter()
            .any(|(b, h)| b.manifest.may_output(h, key))
    }
}

// ---- what an apply stores (decided here, persisted by `store::clusters`) ----

/// A step to create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewStep {
    pub host_id: i64,
    pub host_name: String,
    pub kind: StepKind,
    pub ord: i64,
    pub spec: StepSpec,
    pub best_effort: bool,
}

impl crate::scheduler::Scheduled for NewStep {
    fn ord(&self) -> i64 {
        self.ord
    }
    /// A step to create is pending.
    fn state(&self) -> berth_shared::state::StepState {
        berth_shared::state::StepState::Pending
    }
    fn best_effort(&self) -> bool {
        self.best_effort
    }
}

/// A host to record in a cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct NewClusterHost {
    pub host_id: i64,
    pub role: HostRole,
    pub ord: i64,
    pub ip: String,
    pub env: String,
}

/// A recorded host whose address, env or order changes.
#[derive(Debug, Clone, PartialEq)]
pub struct HostUpdate {
    pub host_id: i64,
    pub ip: String,
    pub env: String,
    pub ord: i64,
}

/// Everything one apply stores, in one transaction.
#[derive(Debug, Default)]
pub struct Generation {
    pub add_hosts: Vec<NewClusterHost>,
    pub host_updates: Vec<HostUpdate>,
    pub leaving: Vec<i64>,
    pub steps: Vec<NewStep>,
    /// What the stored spec's `from` becomes (an upgrade's old generation, or what the
    /// recorded spec had).
    pub from: Vec<ResolvedBundle>,
    /// Steps this change supersedes (a rollback's unfinished upgrade steps): cancelled.
    pub cancel: Vec<i64>,
    /// The app bundles this apply takes out (its `clean-apps` step cleans them).
    pub removed: Vec<ResolvedBundle>,
}

/// What a step's `spec` column holds.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct StepSpec {
    /// Indexes into `ResolvedSpec::bundles` (app bundles for `apps`).
    #[serde(default)]
    pub apps: Vec<usize>,
    /// For leave/remove: the host being removed and its IP.
    #[serde(default)]
    pub target: Option<(String, String)>,
    /// For exec: what runs, and how long it may.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<berth_shared::plan::PlanExec>,
    /// For clean-apps: the app bundles taken out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<ResolvedBundle>,
}

/// A host the Clusterfile asks for, resolved to an enrolled host.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredHost {
    pub host_id: i64,
    pub name: String,
    pub role: HostRole,
    pub ip: String,
    /// Per-host env, JSON.
    pub env: String,
}

/// A host the cluster has on record.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedHost {
    pub host_id: i64,
    pub name: String,
    pub role: HostRole,
    pub ord: i64,
    pub ip: String,
    /// false: leaving.
    pub active: bool,
}

/// What is recorded of a cluster (nothing for a new one).
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    pub hosts: Vec<RecordedHost>,
    /// The spec of the current generation.
    pub spec: Option<ResolvedSpec>,
    /// Some host ran `install` successfully: the base bundles are in use.
    pub installed: bool,
    /// The cluster's phase when it is not Running and has unfinished or failed steps
    /// (an upgrade waits for a settled cluster).
    pub unsettled: Option<berth_shared::state::ClusterPhase>,
    /// The last change was an upgrade that left a failed step (a rollback can undo it).
    pub upgrade_failed: bool,
    /// An upgrade or rollback has steps still to run (pending, failed or interrupted):
    /// hosts may not join or leave before it is finished or turned back.
    pub upgrade_unfinished: bool,
}

/// Why an apply cannot be planned. Each maps to a stable API code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("spec.hosts: a cluster needs at least one master")]
    NoMaster,
    #[error("spec.hosts: the first master must stay `{master0}` (master0 of cluster `{cluster}`); master0 cannot change")]
    Master0Changed { master0: String, cluster: String },
    #[error("`{master0}` is master0 of cluster `{cluster}` and cannot be deleted from it; `berth reset {cluster}` removes the whole cluster")]
    Master0Removed { master0: String, cluster: String },
    #[error("spec.hosts: host `{host}` would change role from {from} to {to}; delete it from the cluster first, then add it back")]
    RoleChanged {
        host: String,
        from: HostRole,
        to: HostRole,
    },
    #[error("spec.image: {what}, so the installed cluster cannot be upgraded in place and nothing was applied; re-apply with the bundles it runs, or `berth reset` it and apply again")]
    UpgradeUnsupported { what: String },
    #[error("spec.image: cluster `{cluster}` is {phase}: an upgrade starts from a Running cluster; `berth retry {cluster}` finishes the change it was making{rollback}, then apply again")]
    NotSettled {
        cluster: String,
        phase: String,
        rollback: &'static str,
    },
    #[error("spec.hosts: an upgrade cannot add or remove hosts in the same apply ({what}); apply the host change with the images the cluster runs first, then the upgrade")]
    UpgradeWithHostChange { what: String },
    #[error("spec.hosts: cluster `{cluster}` is in the middle of an upgrade or rollback ({what}); finish it first (`berth retry {cluster}`, or `berth rollback {cluster}`), then change its hosts")]
    HostChangeDuringUpgrade { cluster: String, what: String },
    #[error("nothing to roll back: {why}")]
    NothingToRollBack { why: String },
}

impl PlanError {
    pub fn code(&self) -> &'static str {
        match self {
            PlanError::UpgradeUnsupported { .. } => codes::UPGRADE_UNSUPPORTED,
            PlanError::NotSettled { .. } | PlanError::HostChangeDuringUpgrade { .. } => {
                codes::CLUSTER_NOT_SETTLED
            }
            PlanError::NothingToRollBack { .. } => codes::NOTHING_TO_ROLL_BACK,
            PlanError::Master0Removed { .. } => codes::MASTER0_REMOVAL,
            _ => codes::INVALID_CLUSTERFILE,
        }
    }
}

fn new_step(h: &DesiredHost, kind: StepKind, ord: i64, spec: &StepSpec) -> NewStep {
    NewStep {
        host_id: h.host_id,
        host_name: h.name.clone(),
        kind,
        ord,
        spec: spec.clone(),
        best_effort: kind == StepKind::Leave || kind == StepKind::Clean,
    }
}

/// The difference between what an apply asks for and what is recorded: hosts to add,
/// update and remove, and the steps that get there. `desired.hosts` is in Clusterfile
/// order; masters go first (master0 = the first master).
pub fn diff(
    cluster: &str,
    hosts: &[DesiredHost],
    spec: &ResolvedSpec,
    recorded: &Recorded,
) -> Result<Generation, PlanError> {
    let cur0 = recorded.hosts.iter().find(|h| h.ord == 0 && h.active);
    if let Some(cur0) = cur0.filter(|c| !hosts.iter().any(|d| d.host_id == c.host_id)) {
        return Err(PlanError::Master0Removed {
            master0: cur0.name.clone(),
            cluster: cluster.to_string(),
        });
    }
    let mut desired: Vec<&DesiredHost> = hosts.iter().collect();
    desired.sort_by_key(|d| if d.role == HostRole::Master { 0 } else { 1 });
    let master0 = *desired
        .first()
        .filter(|d| d.role == HostRole::Master)
        .ok_or(PlanError::NoMaster)?;
    if let Some(cur0) = cur0 {
        if cur0.host_id != master0.host_id {
            return Err(PlanError::Master0Changed {
                master0: cur0.name.clone(),
                cluster: cluster.to_string(),
            });
        }
    }
    let upgrade_from = match (&recorded.spec, recorded.installed) {
        (Some(prev), true) => upgrade_of(prev, spec)?,
        _ => None,
    };
    if upgrade_from.is_some() {
        if let Some(phase) = recorded.unsettled {
            return Err(PlanError::NotSettled {
                cluster: cluster.to_string(),
                phase: phase.to_string(),
                rollback: if recorded.upgrade_failed {
                    ", `berth rollback` turns back the failed upgrade"
                } else {
                    ""
                },
            });
        }
    }

    let mut g = Generation {
        from: match &upgrade_from {
            Some(from) => from.clone(),
            None => recorded
                .spec
                .as_ref()
                .map(|p| p.from.clone())
                .unwrap_or_default(),
        },
        ..Generation::default()
    };
    let none = StepSpec::default();
    let mut new_masters = 0;
    for (ord, d) in desired.iter().enumerate() {
        let ord = ord as i64;
        match recorded.hosts.iter().find(|h| h.host_id == d.host_id) {
            Some(cur) => {
                if cur.role != d.role {
                    return Err(PlanError::RoleChanged {
                        host: d.name.clone(),
                        from: cur.role,
                        to: d.role,
                    });
                }
                g.host_updates.push(HostUpdate {
                    host_id: d.host_id,
                    ip: d.ip.clone(),
                    env: d.env.clone(),
                    ord,
                });
            }
            None => {
                g.add_hosts.push(NewClusterHost {
                    host_id: d.host_id,
                    role: d.role,
                    ord,
                    ip: d.ip.clone(),
                    env: d.env.clone(),
                });
                for kind in [StepKind::Check, StepKind::Distribute, StepKind::Install] {
                    g.steps.push(new_step(d, kind, kind.base_ord(), &none));
                }
                let (kind, ord) = if ord == 0 {
                    (StepKind::Init, StepKind::Init.base_ord())
                } else if d.role == HostRole::Master {
                    new_masters += 1;
                    (
                        StepKind::JoinMaster,
                        StepKind::JoinMaster.base_ord() + new_masters - 1,
                    )
                } else {
                    (StepKind::JoinNode, StepKind::JoinNode.base_ord())
                };
                g.steps.push(new_step(d, kind, ord, &none));
            }
        }
    }
    for cur in recorded.hosts.iter().filter(|h| h.active) {
        if desired.iter().any(|d| d.host_id == cur.host_id) {
            continue;
        }
        let i = g.leaving.len();
        g.leaving.push(cur.host_id);
        let target = StepSpec {
            target: Some((cur.name.clone(), cur.ip.clone())),
            ..StepSpec::default()
        };
        let leaver = DesiredHost {
            host_id: cur.host_id,
            name: cur.name.clone(),
            role: cur.role,
            ip: cur.ip.clone(),
            env: String::new(),
        };
        g.steps.push(new_step(
            &leaver,
            StepKind::Leave,
            StepKind::Leave.base_ord(),
            &target,
        ));
        g.steps.push(new_step(
            master0,
            StepKind::Remove,
            StepKind::Remove.base_ord() + i as i64,
            &target,
        ));
    }
    // After the cluster is up, commands run as sealos's guest runs them: a rootfs or patch
    // bundle's on every host (here: every host that is new to the cluster), then app
    // bundles' once each, on master0; in Clusterfile order.
    let base_cmds: Vec<usize> = spec
        .bundles
        .iter()
        .enumerate()
        .filter(|(_, b)| b.manifest.bundle_type != BundleType::App && b.manifest.runs_commands())
        .map(|(i, _)| i)
        .collect();
    let new_hosts: Vec<i64> = g.add_hosts.iter().map(|h| h.host_id).collect();
    if !base_cmds.is_empty() {
        for d in desired
            .iter()
            .filter(|d| d.host_id != master0.host_id && new_hosts.contains(&d.host_id))
        {
            g.steps.push(new_step(
                d,
                StepKind::Apps,
                StepKind::Apps.base_ord(),
                &StepSpec {
                    apps: base_cmds.clone(),
                    ..StepSpec::default()
                },
            ));
        }
    }
    let old_apps: Vec<Digest> = recorded
        .spec
        .iter()
        .flat_map(|p| p.bundles.iter())
        .filter(|b| b.manifest.bundle_type == BundleType::App)
        .map(|b| b.digest)
        .collect();
    let new_apps: Vec<usize> = spec
        .bundles
        .iter()
        .enumerate()
        .filter(|(_, b)| b.manifest.bundle_type == BundleType::App && !old_apps.contains(&b.digest))
        .map(|(i, _)| i)
        .collect();
    let (mut clean_apps_ord, mut apps_ord) =
        (StepKind::CleanApps.base_ord(), StepKind::Apps.base_ord());
    // App bundles taken out (by name: a new digest of an app is installed over it) run
    // their `clean` on master0, before new apps install.
    g.removed = recorded
        .spec
        .iter()
        .flat_map(|p| p.bundles.iter())
        .filter(|b| b.manifest.bundle_type == BundleType::App)
        .filter(|b| {
            !spec.bundles.iter().any(|n| {
                n.manifest.bundle_type == BundleType::App && n.manifest.name == b.manifest.name
            })
        })
        .cloned()
        .collect();
    let host_change = !g.add_hosts.is_empty() || !g.leaving.is_empty();
    if host_change && (upgrade_from.is_some() || recorded.upgrade_unfinished) {
        let names = |ids: Vec<i64>| -> Vec<String> {
            ids.iter()
                .filter_map(|id| {
                    desired
                        .iter()
                        .map(|d| (d.host_id, &d.name))
                        .chain(recorded.hosts.iter().map(|h| (h.host_id, &h.name)))
                        .find(|(i, _)| i == id)
                        .map(|(_, n)| format!("`{n}`"))
                })
                .collect()
        };
        let mut what = Vec::new();
        let added = names(g.add_hosts.iter().map(|h| h.host_id).collect());
        if !added.is_empty() {
            what.push(format!("adds {}", added.join(", ")));
        }
        let removed = names(g.leaving.clone());
        if !removed.is_empty() {
            what.push(format!("removes {}", removed.join(", ")));
        }
        let what = what.join(" and ");
        return Err(match upgrade_from {
            Some(_) => PlanError::UpgradeWithHostChange { what },
            None => PlanError::HostChangeDuringUpgrade {
                cluster: cluster.to_string(),
                what,
            },
        });
    }
    if upgrade_from.is_some() {
        // Host by host: master0, the other masters one at a time, nodes in batches.
        let order: Vec<(&DesiredHost, HostRole)> = desired.iter().map(|d| (*d, d.role)).collect();
        let waves = waves(&order, spec.rollout);
        for (i, wave) in waves.iter().enumerate() {
            for d in wave {
                g.steps.push(new_step(
                    d,
                    StepKind::Upgrade,
                    StepKind::Upgrade.base_ord() + i as i64,
                    &none,
                ));
            }
        }
        // New app bundles install once the hosts run the new generation.
        clean_apps_ord = StepKind::Upgrade.base_ord() + waves.len() as i64;
        apps_ord = clean_apps_ord + 1;
    }
    if !g.removed.is_empty() {
        g.steps.push(new_step(
            master0,
            StepKind::CleanApps,
            clean_apps_ord,
            &StepSpec {
                removed: g.removed.clone(),
                ..StepSpec::default()
            },
        ));
    }
    let mut master0_runs = new_apps;
    if new_hosts.contains(&master0.host_id) {
        master0_runs.extend(&base_cmds);
        master0_runs.sort_unstable();
    }
    if !master0_runs.is_empty() {
        g.steps.push(new_step(
            master0,
            StepKind::Apps,
            apps_ord,
            &StepSpec {
                apps: master0_runs,
                ..StepSpec::default()
            },
        ));
    }
    Ok(g)
}

/// Whether applying `new` over the installed `prev` upgrades the hosts: the rootfs/patch
/// bundles they had (to roll back to) when some changed digest. Refused when the change
/// cannot be made in place: another rootfs, a rootfs/patch bundle removed, or a changed
/// bundle without an `upgrade` hook. A new patch bundle is installed by the upgrade.
fn upgrade_of(
    prev: &ResolvedSpec,
    new: &ResolvedSpec,
) -> Result<Option<Vec<ResolvedBundle>>, PlanError> {
    let old: Vec<&ResolvedBundle> = prev.base().collect();
    let next: Vec<&ResolvedBundle> = new.base().collect();
    if old
        .iter()
        .map(|b| b.digest)
        .eq(next.iter().map(|b| b.digest))
    {
        return Ok(None);
    }
    let refuse = |what: String| Err(PlanError::UpgradeUnsupported { what });
    if let (Some(a), Some(b)) = (old.first(), next.first()) {
        if a.manifest.name != b.manifest.name {
            return refuse(format!(
                "the rootfs would change from `{}` ({}) to `{}` ({}): another rootfs cannot replace an installed one",
                a.reference, a.manifest.name, b.reference, b.manifest.name
            ));
        }
    }
    for a in &old {
        if !next.iter().any(|b| b.manifest.name == a.manifest.name) {
            return refuse(format!(
                "`{}` ({}) would be removed: a rootfs or patch bundle cannot be taken out of an installed cluster",
                a.reference, a.manifest.name
            ));
        }
    }
    for b in &next {
        let Some(a) = old.iter().find(|a| a.manifest.name == b.manifest.name) else {
            continue;
        };
        if a.digest != b.digest && !b.manifest.hooks.contains_key("upgrade") {
            return refuse(format!(
                "`{}` would change from {} (version {}) to {} (version {}), and the new one declares no `upgrade` hook; a bundle without one cannot be upgraded in place",
                b.reference, a.digest, a.manifest.version, b.digest, b.manifest.version
            ));
        }
    }
    Ok(Some(old.into_iter().cloned().collect()))
}

/// A host's step of the last upgrade, as a rollback weighs it.
#[derive(Debug, Clone)]
pub struct UpgradeStep {
    pub id: i64,
    pub host_id: i64,
    pub ord: i64,
    pub state: berth_shared::state::StepState,
}

/// `berth rollback`: the spec to return to (the generation the last upgrade came from, with
/// the app bundles kept) and the steps: `rollback` on every host whose upgrade started,
/// in the reverse of the upgrade's order (its batches reversed); its unfinished upgrade
/// steps are cancelled. `hosts` are the cluster's, in order.
pub fn rollback(
    cluster: &str,
    spec: &ResolvedSpec,
    hosts: &[RecordedHost],
    upgrade: &[UpgradeStep],
) -> Result<(ResolvedSpec, Generation), PlanError> {
    use berth_shared::state::StepState;
    if spec.from.is_empty() || upgrade.is_empty() {
        return Err(PlanError::NothingToRollBack {
            why: format!("the last change of cluster `{cluster}` was not an upgrade"),
        });
    }
    if let Some(s) = upgrade.iter().find(|s| s.state.is_active()) {
        let host = hosts
            .iter()
            .find(|h| h.host_id == s.host_id)
            .map_or("?", |h| h.name.as_str());
        return Err(PlanError::NothingToRollBack {
            why: format!("the upgrade is still running on `{host}`; wait until it finishes or fails (`berth status {cluster} --watch`), then roll back"),
        });
    }
    let started: Vec<&UpgradeStep> = upgrade
        .iter()
        .filter(|s| {
            matches!(
                s.state,
                StepState::Succeeded | StepState::Failed | StepState::Interrupted
            )
        })
        .collect();
    if started.is_empty() {
        return Err(PlanError::NothingToRollBack {
            why: format!("no host of cluster `{cluster}` has started the upgrade"),
        });
    }
    // A host that joined after the upgrade was installed with the new bundles: there is
    // no older generation on it to return to.
    let joined_after: Vec<&str> = hosts
        .iter()
        .filter(|h| h.active && !upgrade.iter().any(|s| s.host_id == h.host_id))
        .map(|h| h.name.as_str())
        .collect();
    if !joined_after.is_empty() {
        return Err(PlanError::NothingToRollBack {
            why: format!(
                "{} joined cluster `{cluster}` after the upgrade, with the new bundles; delete them from the cluster first (`berth delete --nodes …`), then roll back",
                joined_after.join(", ")
            ),
        });
    }
    let mut back = spec.clone();
    back.bundles = spec
        .from
        .iter()
        .cloned()
        .chain(
            spec.bundles
                .iter()
                .filter(|b| b.manifest.bundle_type == BundleType::App)
                .cloned(),
        )
        .collect();
    back.from = spec.base().cloned().collect();
    let last = started.iter().map(|s| s.ord).max().unwrap_or(0);
    let none = StepSpec::default();
    let mut g = Generation {
        from: back.from.clone(),
        cancel: upgrade
            .iter()
            .filter(|s| s.state != StepState::Succeeded && s.state != StepState::Cancelled)
            .map(|s| s.id)
            .collect(),
        ..Generation::default()
    };
    for s in &started {
        let Some(h) = hosts.iter().find(|h| h.host_id == s.host_id) else {
            continue;
        };
        let d = DesiredHost {
            host_id: h.host_id,
            name: h.name.clone(),
            role: h.role,
            ip: h.ip.clone(),
            env: String::new(),
        };
        g.steps.push(new_step(
            &d,
            StepKind::Rollback,
            StepKind::Rollback.base_ord() + (last - s.ord),
            &none,
        ));
    }
    Ok((back, g))
}

/// `berth exec`: the command on each selected host, all at once; best effort (a failing
/// host stops nothing, and `berth retry` never runs an exec again).
pub fn exec_steps(hosts: &[RecordedHost], exec: &berth_shared::plan::PlanExec) -> Vec<NewStep> {
    let spec = StepSpec {
        exec: Some(exec.clone()),
        ..StepSpec::default()
    };
    hosts
        .iter()
        .map(|h| NewStep {
            host_id: h.host_id,
            host_name: h.name.clone(),
            kind: StepKind::Exec,
            ord: StepKind::Exec.base_ord(),
            spec: spec.clone(),
            best_effort: true,
        })
        .collect()
}

/// `berth reset`: `clean` on every host of the cluster, all at once.
pub fn reset_steps(hosts: &[RecordedHost]) -> Vec<NewStep> {
    hosts
        .iter()
        .map(|h| NewStep {
            host_id: h.host_id,
            host_name: h.name.clone(),
            kind: StepKind::Clean,
            ord: StepKind::Clean.base_ord(),
            spec: StepSpec::default(),
            best_effort: true,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use berth_shared::bundle::RawManifest;

    fn manifest(name: &str, t: &str) -> Manifest {
        RawManifest {
            api_version: "berth.dev/v1".into(),
            kind: "Bundle".into(),
            name: name.into(),
            version: "v1".into(),
            bundle_type: t.into(),
            env: BTreeMap::new(),
            hooks: BTreeMap::new(),
            timeouts: BTreeMap::new(),
            cmd: if t == "app" { vec!["x".into()] } else { vec![] },
            commands: vec![],
            rerunnable: vec![],
            allow_setuid: false,
            outputs: None,
            arch: None,
        }
        .validate(|_| true)
        .unwrap()
    }

    fn bundle(name: &str, t: &str, d: u8) -> ResolvedBundle {
        ResolvedBundle {
            reference: format!("{name}:v1"),
            digest: format!("sha256:{}", hex::encode([d; 32])).parse().unwrap(),
            manifest: manifest(name, t),
            arches: BTreeMap::new(),
        }
    }

    fn spec(bundles: Vec<ResolvedBundle>) -> ResolvedSpec {
        ResolvedSpec {
            bundles,
            ..Default::default()
        }
    }

    fn host(id: i64, role: HostRole) -> DesiredHost {
        DesiredHost {
            host_id: id,
            name: format!("h{id}"),
            role,
            ip: format!("10.0.0.{id}"),
            env: "{}".into(),
        }
    }

    /// Recorded state after `hosts` were applied with `spec`.
    fn recorded(hosts: &[DesiredHost], spec: &ResolvedSpec) -> Recorded {
        let g = diff("c", hosts, spec, &Recorded::default()).unwrap();
        Recorded {
            hosts: g
                .add_hosts
                .iter()
                .map(|h| RecordedHost {
                    host_id: h.host_id,
                    name: format!("h{}", h.host_id),
                    role: h.role,
                    ord: h.ord,
                    ip: h.ip.clone(),
                    active: true,
                })
                .collect(),
            spec: Some(spec.clone()),
            installed: true,
            ..Recorded::default()
        }
    }

    /// (host, kind, ord) of each step, sorted.
    fn steps(g: &Generation) -> Vec<(String, &'static str, i64)> {
        let mut v: Vec<_> = g
            .steps
            .iter()
            .map(|s| (s.host_name.clone(), s.kind.as_str(), s.ord))
            .collect();
        v.sort();
        v
    }

    fn row(h: &str, k: &'static str, o: i64) -> (String, &'static str, i64) {
        (h.to_string(), k, o)
    }

    use HostRole::{Master, Node};

    #[test]
    fn planner_table() {
        let base = spec(vec![bundle("hello", "rootfs", 1)]);
        let with_app = spec(vec![bundle("hello", "rootfs", 1), bundle("app", "app", 2)]);
        let three = [host(1, Master), host(2, Node), host(3, Node)];
        let per_host = |h: &str, last: &'static str, o: i64| {
            vec![
                row(h, "check", 1000),
                row(h, "distribute", 2000),
                row(h, "install", 3000),
                row(h, last, o),
            ]
        };
        struct Case {
            name: &'static str,
            hosts: Vec<DesiredHost>,
            spec: ResolvedSpec,
            recorded: Recorded,
            want: Result<Vec<(String, &'static str, i64)>, &'static str>,
        }
        let cases = vec![
            Case {
                name: "create: check, distribute, install everywhere; init on master0; joins; apps",
                hosts: vec![
                    host(1, Master),
                    host(4, Master),
                    host(5, Master),
                    host(2, Node),
                ],
                spec: with_app.clone(),
                recorded: Recorded::default(),
                want: Ok({
                    let mut v = per_host("h1", "init", 4000);
                    v.extend(per_host("h4", "join-master", 5000));
                    v.extend(per_host("h5", "join-master", 5001));
                    v.extend(per_host("h2", "join-node", 6000));
                    v.push(row("h1", "apps", 7000));
                    v.sort();
                    v
                }),
            },
            Case {
                name: "a re-apply that changes nothing runs nothing",
                hosts: three.to_vec(),
                spec: base.clone(),
                recorded: recorded(&three, &base),
                want: Ok(vec![]),
            },
            Case {
                name: "scale up nodes: only the new node runs",
                hosts: vec![host(1, Master), host(2, Node), host(3, Node), host(6, Node)],
                spec: base.clone(),
                recorded: recorded(&three, &base),
                want: Ok(per_host("h6", "join-node", 6000)),
            },
            Case {
                name: "scale up masters: one at a time",
                hosts: vec![
                    host(1, Master),
                    host(7, Master),
                    host(8, Master),
                    host(2, Node),
                    host(3, Node),
                ],
                spec: base.clone(),
                recorded: recorded(&three, &base),
                want: Ok({
                    let mut v = per_host("h7", "join-master", 5000);
                    v.extend(per_host("h8", "join-master", 5001));
                    v.sort();
                    v
                }),
            },
            Case {
                name: "scale down: leave on the node, then remove on master0, one per host",
                hosts: vec![host(1, Master)],
                spec: base.clone(),
                recorded: recorded(&three, &base),
                want: Ok(vec![
                    row("h1", "remove", 9000),
                    row("h1", "remove", 9001),
                    row("h2", "leave", 8000),
                    row("h3", "leave", 8000),
                ]),
            },
            Case {
                name: "scale down a master",
                hosts: vec![host(1, Master), host(2, Node)],
                spec: base.clone(),
                recorded: recorded(&[host(1, Master), host(9, Master), host(2, Node)], &base),
                want: Ok(vec![row("h1", "remove", 9000), row("h9", "leave", 8000)]),
            },
            Case {
                name: "an added app bundle runs apps on master0 only",
                hosts: three.to_vec(),
                spec: with_app.clone(),
                recorded: recorded(&three, &base),
                want: Ok(vec![row("h1", "apps", 7000)]),
            },
            Case {
                name: "a changed rootfs of an installed cluster is refused",
                hosts: three.to_vec(),
                spec: spec(vec![bundle("hello", "rootfs", 9)]),
                recorded: recorded(&three, &base),
                want: Err("upgrade_unsupported"),
            },
            Case {
                name: "a changed rootfs before anything was installed is taken",
                hosts: three.to_vec(),
                spec: spec(vec![bundle("hello", "rootfs", 9)]),
                recorded: Recorded {
                    installed: false,
                    ..recorded(&three, &base)
                },
                want: Ok(vec![]),
            },
            Case {
                name: "master0 cannot change",
                hosts: vec![host(4, Master), host(1, Master)],
                spec: base.clone(),
                recorded: recorded(&three, &base),
                want: Err("invalid_clusterfile"),
            },
            Case {
                name: "master0 cannot leave",
                hosts: vec![host(4, Master), host(2, Node)],
                spec: base.clone(),
                recorded: recorded(&three, &base),
                want: Err("master0_removal"),
            },
            Case {
                name: "a role cannot change",
                hosts: vec![host(1, Master), host(2, Master)],
                spec: base.clone(),
                recorded: recorded(&three, &base),
                want: Err("invalid_clusterfile"),
            },
            Case {
                name: "no master",
                hosts: vec![host(2, Node)],
                spec: base.clone(),
                recorded: Recorded::default(),
                want: Err("invalid_clusterfile"),
            },
        ];
        for c in cases {
            let got = diff("c", &c.hosts, &c.spec, &c.recorded);
            match (&got, &c.want) {
                (Ok(g), Ok(w)) => assert_eq!(&steps(g), w, "{}", c.name),
                (Err(e), Err(code)) => assert_eq!(e.code(), *code, "{}: {e}", c.name),
                _ => panic!("{}: got {got:?}", c.name),
            }
        }
    }

    #[test]
    fn scale_down_marks_leaving_and_updates_the_rest() {
        let base = spec(vec![bundle("hello", "rootfs", 1)]);
        let three = [host(1, Master), host(2, Node), host(3, Node)];
        let g = diff(
            "c",
            &[host(1, Master), host(3, Node)],
            &base,
            &recorded(&three, &base),
        )
        .unwrap();
        assert_eq!(g.leaving, vec![2]);
        assert!(g.add_hosts.is_empty());
        assert_eq!(
            g.host_updates
                .iter()
                .map(|u| (u.host_id, u.ord))
                .collect::<Vec<_>>(),
            vec![(1, 0), (3, 1)]
        );
        let remove = g.steps.iter().find(|s| s.kind == StepKind::Remove).unwrap();
        assert!(
            remove
                .spec
                .target
                .as_ref()
                .is_some_and(|t| t.1 == "10.0.0.2"),
            "{:?}",
            remove.spec
        );
        assert!(g
            .steps
            .iter()
            .all(|s| s.best_effort == (s.kind == StepKind::Leave)));
    }

    #[test]
    fn reset_cleans_every_host() {
        let base = spec(vec![bundle("hello", "rootfs", 1)]);
        let r = recorded(&[host(1, Master), host(2, Node)], &base);
        let s = reset_steps(&r.hosts);
        assert_eq!(
            s.iter()
                .map(|s| (s.host_id, s.kind, s.ord, s.best_effort))
                .collect::<Vec<_>>(),
            vec![
                (1, StepKind::Clean, 1_000_000, true),
                (2, StepKind::Clean, 1_000_000, true)
            ]
        );
    }

    #[test]
    fn step_timeouts_and_outputs_follow_the_bundles() {
        let mut b = bundle("hello", "rootfs", 1);
        b.manifest.hooks.insert(
            "init".into(),
            berth_shared::SafeRelPath::new("init.sh").unwrap(),
        );
        b.manifest.timeouts.insert("init".into(), 60);
        let s = spec(vec![b]);
        let none = StepSpec::default();
        assert_eq!(
            s.step_timeout_secs(StepKind::Init, &none),
            60 + DISTRIBUTE_TIMEOUT_SECS
        );
        assert_eq!(s.step_timeout_secs(StepKind::Clean, &none), 0);
        // Nothing declared: nothing published.
        assert!(!s.may_output(StepKind::Init, &none, "JOIN_TOKEN"));
        let mut b = bundle("hello", "rootfs", 1);
        b.manifest
            .outputs
            .insert("init".into(), vec!["JOIN_TOKEN".into(), "PATH".into()]);
        let s = spec(vec![b]);
        assert!(s.may_output(StepKind::Init, &none, "JOIN_TOKEN"));
        assert!(!s.may_output(StepKind::Init, &none, "OTHER"));
        // Never, declared or not.
        assert!(!s.may_output(StepKind::Init, &none, "PATH"));
        assert!(!s.may_output(StepKind::JoinNode, &none, "JOIN_TOKEN"));
    }
}
