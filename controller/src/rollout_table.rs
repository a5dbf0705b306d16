//! The rollout's table tests: what the planner lays out, released by the scheduler's one
//! rule, wave by wave, for every kind of change.

#![allow(clippy::unwrap_used)]

use crate::planner::{
    self, DesiredHost, NewStep, Recorded, RecordedHost, ResolvedBundle, ResolvedSpec, UpgradeStep,
};
use crate::scheduler::{next_release, Next, Policy, Scheduled, View};
use berth_shared::bundle::{Manifest, RawManifest};
use berth_shared::state::{HostRole, StepKind, StepState};
use std::collections::BTreeMap;

#[derive(Debug, Clone)]
struct Sim {
    step: NewStep,
    state: StepState,
}

impl Scheduled for Sim {
    fn ord(&self) -> i64 {
        self.step.ord
    }
    fn state(&self) -> StepState {
        self.state
    }
    fn best_effort(&self) -> bool {
        self.step.best_effort
    }
}

/// The waves the scheduler releases, each as sorted `host:kind`, until done or stopped
/// (then the stopping step last, as `STOP host:kind`). Steps in `fail` fail.
fn run(steps: &[NewStep], fail: &[(&str, StepKind)]) -> Vec<String> {
    let mut sims: Vec<Sim> = steps
        .iter()
        .map(|s| Sim {
            step: s.clone(),
            state: StepState::Pending,
        })
        .collect();
    let mut out = Vec::new();
    for _ in 0..1000 {
        match next_release(View::of(&sims)) {
            Next::Done => return out,
            Next::Stop(s) => {
                out.push(format!("STOP {}:{}", s.step.host_name, s.step.kind));
                return out;
            }
            Next::Release(r) => {
                assert!(!r.is_empty(), "nothing running and nothing released");
                let mut wave: Vec<String> = r
                    .iter()
                    .map(|s| format!("{}:{}", s.step.host_name, s.step.kind))
                    .collect();
                wave.sort();
                out.push(wave.join(" "));
                for sim in sims.iter_mut() {
                    if r.iter().any(|x| x.step == sim.step) {
                        let failing = fail
                            .iter()
                            .any(|(h, k)| sim.step.host_name == *h && sim.step.kind == *k);
                        sim.state = if failing {
                            StepState::Failed
                        } else {
                            StepState::Succeeded
                        };
                    }
                }
            }
        }
    }
    panic!("no end");
}

fn manifest(name: &str, t: &str, version: &str, upgrade: bool) -> Manifest {
    let mut hooks = BTreeMap::new();
    hooks.insert("install".to_string(), "install.sh".to_string());
    if upgrade {
        hooks.insert("upgrade".to_string(), "upgrade.sh".to_string());
        hooks.insert("rollback".to_string(), "rollback.sh".to_string());
    }
    RawManifest {
        api_version: "berth.dev/v1".into(),
        kind: "Bundle".into(),
        name: name.into(),
        version: version.into(),
        bundle_type: t.into(),
        env: BTreeMap::new(),
        hooks,
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

fn bundle(name: &str, t: &str, version: &str, d: u8, upgrade: bool) -> ResolvedBundle {
    ResolvedBundle {
        reference: format!("{name}:{version}"),
        digest: format!("sha256:{}", hex::encode([d; 32])).parse().unwrap(),
        manifest: manifest(name, t, version, upgrade),
        arches: BTreeMap::new(),
    }
}

fn spec(bundles: Vec<ResolvedBundle>, max_unavailable: u32) -> ResolvedSpec {
    ResolvedSpec {
        bundles,
        rollout: Policy { max_unavailable },
        ..Default::default()
    }
}

fn host(id: i64, name: &str, role: HostRole) -> DesiredHost {
    DesiredHost {
        host_id: id,
        name: name.into(),
        role,
        ip: format!("10.0.0.{id}"),
        env: "{}".into(),
    }
}

/// 1 master, 3 nodes.
fn cluster() -> Vec<DesiredHost> {
    vec![
        host(1, "m0", HostRole::Master),
        host(2, "n1", HostRole::Node),
        host(3, "n2", HostRole::Node),
        host(4, "n3", HostRole::Node),
    ]
}

fn recorded(hosts: &[DesiredHost], spec: &ResolvedSpec) -> Recorded {
    Recorded {
        hosts: hosts
            .iter()
            .enumerate()
            .map(|(i, h)| RecordedHost {
                host_id: h.host_id,
                name: h.name.clone(),
                role: h.role,
                ord: i as i64,
                ip: h.ip.clone(),
                active: true,
            })
            .collect(),
        spec: Some(spec.clone()),
        installed: true,
        ..Recorded::default()
    }
}

fn v1() -> ResolvedSpec {
    spec(vec![bundle("k8s", "rootfs", "v1", 1, true)], 1)
}

fn v2(max_unavailable: u32) -> ResolvedSpec {
    spec(
        vec![bundle("k8s", "rootfs", "v2", 2, true)],
        max_unavailable,
    )
}

#[test]
fn rollouts() {
    let per_phase = |kind: &str| format!("m0:{kind} n1:{kind} n2:{kind} n3:{kind}");
    struct Case {
        name: &'static str,
        hosts: Vec<DesiredHost>,
        spec: ResolvedSpec,
        recorded: Recorded,
        fail: Vec<(&'static str, StepKind)>,
        want: Vec<String>,
    }
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let cases = vec![
        Case {
            name: "create: phase by phase, master0 first, the nodes together",
            hosts: cluster(),
            spec: v1(),
            recorded: Recorded::default(),
            fail: vec![],
            want: vec![
                per_phase("check"),
                per_phase("distribute"),
                per_phase("install"),
                "m0:init".into(),
                "n1:join-node n2:join-node n3:join-node".into(),
            ],
        },
        Case {
            name: "create with a failing install stops before init",
            hosts: cluster(),
            spec: v1(),
            recorded: Recorded::default(),
            fail: vec![("n2", StepKind::Install)],
            want: vec![
                per_phase("check"),
                per_phase("distribute"),
                per_phase("install"),
                "STOP n2:install".into(),
            ],
        },
        Case {
            name: "scale up: the new hosts only; masters one at a time",
            hosts: {
                let mut h = cluster();
                h.insert(1, host(5, "m1", HostRole::Master));
                h.insert(2, host(6, "m2", HostRole::Master));
                h.push(host(7, "n4", HostRole::Node));
                h
            },
            spec: v1(),
            recorded: recorded(&cluster(), &v1()),
            fail: vec![],
            want: s(&[
                "m1:check m2:check n4:check",
                "m1:distribute m2:distribute n4:distribute",
                "m1:install m2:install n4:install",
                "m1:join-master",
                "m2:join-master",
                "n4:join-node",
            ]),
        },
        Case {
            name: "scale down: leave (best effort, a failure goes on), then remove one at a time",
            hosts: cluster()[..2].to_vec(),
            spec: v1(),
            recorded: recorded(&cluster(), &v1()),
            fail: vec![("n2", StepKind::Leave)],
            want: s(&["n2:leave n3:leave", "m0:remove", "m0:remove"]),
        },
        Case {
            name: "upgrade, max-unavailable 1: master0, then one node at a time",
            hosts: cluster(),
            spec: v2(1),
            recorded: recorded(&cluster(), &v1()),
            fail: vec![],
            want: s(&["m0:upgrade", "n1:upgrade", "n2:upgrade", "n3:upgrade"]),
        },
        Case {
            name: "upgrade, max-unavailable 2: nodes in batches of two",
            hosts: cluster(),
            spec: v2(2),
            recorded: recorded(&cluster(), &v1()),
            fail: vec![],
            want: s(&["m0:upgrade", "n1:upgrade n2:upgrade", "n3:upgrade"]),
        },
        Case {
            name: "upgrade, max-unavailable over the node count: every node at once",
            hosts: cluster(),
            spec: v2(10),
            recorded: recorded(&cluster(), &v1()),
            fail: vec![],
            want: s(&["m0:upgrade", "n1:upgrade n2:upgrade n3:upgrade"]),
        },
        Case {
            name: "upgrade of three masters: one at a time, before any node",
            hosts: {
                let mut h = cluster();
                h.insert(1, host(5, "m1", HostRole::Master));
                h.insert(2, host(6, "m2", HostRole::Master));
                h
            },
            spec: v2(3),
            recorded: {
                let mut h = cluster();
                h.insert(1, host(5, "m1", HostRole::Master));
                h.insert(2, host(6, "m2", HostRole::Master));
                recorded(&h, &v1())
            },
            fail: vec![],
            want: s(&[
                "m0:upgrade",
                "m1:upgrade",
                "m2:upgrade",
                "n1:upgrade n2:upgrade n3:upgrade",
            ]),
        },
        Case {
            name: "a failed batch stops the upgrade: no later batch starts",
            hosts: cluster(),
            spec: v2(2),
            recorded: recorded(&cluster(), &v1()),
            fail: vec![("n2", StepKind::Upgrade)],
            want: s(&["m0:upgrade", "n1:upgrade n2:upgrade", "STOP n2:upgrade"]),
        },
        Case {
            name: "an upgrade that adds an app installs it after the last batch",
            hosts: cluster(),
            spec: {
                let mut s = v2(2);
                s.bundles.push(bundle("app", "app", "v1", 9, false));
                s
            },
            recorded: recorded(&cluster(), &v1()),
            fail: vec![],
            want: s(&[
                "m0:upgrade",
                "n1:upgrade n2:upgrade",
                "n3:upgrade",
                "m0:apps",
            ]),
        },
    ];
    for c in cases {
        let g = planner::diff("c", &c.hosts, &c.spec, &c.recorded)
            .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        let fail: Vec<(&str, StepKind)> = c.fail.clone();
        assert_eq!(run(&g.steps, &fail), c.want, "{}", c.name);
    }
}

#[test]
fn rollback_runs_on_the_upgraded_hosts_in_reverse() {
    // v2 → v3 with batches of 2 failed on n3 (the last batch): n3, then n1+n2, then m0.
    let hosts = recorded(&cluster(), &v1()).hosts;
    let mut current = spec(vec![bundle("k8s", "rootfs", "v3", 3, true)], 2);
    current.from = vec![bundle("k8s", "rootfs", "v2", 2, true)];
    let up = |id: i64, ord: i64, state: StepState| UpgradeStep {
        id: id * 10,
        host_id: id,
        ord,
        state,
    };
    let base = StepKind::Upgrade.base_ord();
    let upgrade = vec![
        up(1, base, StepState::Succeeded),
        up(2, base + 1, StepState::Succeeded),
        up(3, base + 1, StepState::Succeeded),
        up(4, base + 2, StepState::Failed),
    ];
    let (back, g) = planner::rollback("c", &current, &hosts, &upgrade).unwrap();
    assert_eq!(back.base().next().unwrap().manifest.version, "v2");
    assert_eq!(back.from[0].manifest.version, "v3");
    assert_eq!(g.cancel, vec![40], "the failed upgrade step is superseded");
    assert_eq!(
        run(&g.steps, &[]),
        vec!["n3:rollback", "n1:rollback n2:rollback", "m0:rollback"]
    );

    // The upgrade stopped at n1+n2 (n2 failed): n3 never started and does not roll back.
    let upgrade = vec![
        up(1, base, StepState::Succeeded),
        up(2, base + 1, StepState::Succeeded),
        up(3, base + 1, StepState::Failed),
        up(4, base + 2, StepState::Pending),
    ];
    let (_, g) = planner::rollback("c", &current, &hosts, &upgrade).unwrap();
    assert_eq!(g.cancel, vec![30, 40]);
    assert_eq!(
        run(&g.steps, &[]),
        vec!["n1:rollback n2:rollback", "m0:rollback"]
    );

    // A node that joined after the upgrade has nothing older to return to: refused.
    let mut more = hosts.clone();
    more.push(RecordedHost {
        host_id: 9,
        name: "n9".into(),
        role: HostRole::Node,
        ord: 4,
        ip: "10.0.0.9".into(),
        active: true,
    });
    let e = planner::rollback("c", &current, &more, &upgrade).unwrap_err();
    assert!(
        e.to_string()
            .contains("n9 joined cluster `c` after the upgrade"),
        "{e}"
    );

    // Still running: refused, and so is a cluster never upgraded.
    let running = vec![up(1, base, StepState::Running)];
    let e = planner::rollback("c", &current, &hosts, &running).unwrap_err();
    assert_eq!(e.code(), "nothing_to_roll_back");
    let e = planner::rollback("c", &v1(), &hosts, &[]).unwrap_err();
    assert_eq!(e.code(), "nothing_to_roll_back");
}

#[test]
fn reset_cleans_every_host_at_once_after_what_runs() {
    let hosts = recorded(&cluster(), &v1()).hosts;
    let steps = planner::reset_steps(&hosts);
    assert_eq!(
        run(&steps, &[("n1", StepKind::Clean)]),
        vec!["m0:clean n1:clean n2:clean n3:clean"],
        "a failed clean (best effort) stops nothing"
    );
    // A running upgrade step (any ord a rollout uses) is before clean.
    assert!(StepKind::Clean.base_ord() > StepKind::Rollback.base_ord() + 100_000);
}

#[test]
fn upgrades_that_cannot_be_made_in_place_are_refused() {
    let hosts = cluster();
    let rec = recorded(&hosts, &v1());
    let code = |s: ResolvedSpec, r: &Recorded| {
        planner::diff("c", &hosts, &s, r)
            .map(|_| "ok")
            .unwrap_or_else(|e| e.code())
    };
    // No upgrade hook in the new version.
    let plain = spec(vec![bundle("k8s", "rootfs", "v2", 2, false)], 1);
    assert_eq!(code(plain, &rec), "upgrade_unsupported");
    // Another rootfs.
    let other = spec(vec![bundle("other", "rootfs", "v2", 2, true)], 1);
    assert_eq!(code(other, &rec), "upgrade_unsupported");
    // A patch bundle taken out.
    let with_patch = spec(
        vec![
            bundle("k8s", "rootfs", "v1", 1, true),
            bundle("p", "patch", "v1", 5, false),
        ],
        1,
    );
    let rec_patch = recorded(&hosts, &with_patch);
    assert_eq!(code(v2(1), &rec_patch), "upgrade_unsupported");
    // A new patch bundle is an upgrade (its install runs in the upgrade step).
    let mut added = v1();
    added.bundles.push(bundle("p", "patch", "v1", 5, false));
    assert_eq!(code(added, &rec), "ok");
    // Not from a settled cluster.
    let failed = Recorded {
        unsettled: Some(berth_shared::state::ClusterPhase::Failed),
        upgrade_failed: true,
        ..rec.clone()
    };
    assert_eq!(code(v2(1), &failed), "cluster_not_settled");
    // With a host change.
    let more = {
        let mut h = hosts.clone();
        h.push(host(9, "n9", HostRole::Node));
        h
    };
    let e = planner::diff("c", &more, &v2(1), &rec).unwrap_err();
    assert!(e.to_string().contains("adds `n9`"), "{e}");
    // Nor while an upgrade is unfinished (re-applying its own Clusterfile with a host more
    // or less): leave/remove would run on a host between two generations.
    let mut mid = recorded(&hosts, &v2(1));
    mid.spec.as_mut().unwrap().from = v1().bundles;
    mid.upgrade_unfinished = true;
    let e = planner::diff("c", &more, &v2(1), &mid).unwrap_err();
    assert_eq!(e.code(), "cluster_not_settled", "{e}");
    assert!(
        planner::diff("c", &hosts, &v2(1), &mid).is_ok(),
        "the same hosts: it resumes"
    );
}

#[test]
fn exec_is_released_at_once_and_stops_nothing() {
    let hosts = recorded(&cluster(), &v1()).hosts;
    let exec = berth_shared::plan::PlanExec {
        command: vec!["true".into()],
        timeout_secs: 60,
    };
    let steps = planner::exec_steps(&hosts, &exec);
    assert_eq!(
        run(&steps, &[("n2", StepKind::Exec)]),
        vec!["m0:exec n1:exec n2:exec n3:exec"],
        "every host at once; a failing host stops nothing"
    );
    // A failed exec is never the failure that stops a cluster: the rollout goes on.
    let rollout = planner::diff("c", &cluster(), &v2(1), &recorded(&cluster(), &v1()))
        .unwrap()
        .steps;
    let mut sims: Vec<Sim> = steps
        .iter()
        .map(|s| Sim {
            step: s.clone(),
            state: StepState::Failed,
        })
        .collect();
    sims.extend(rollout.iter().map(|s| Sim {
        step: s.clone(),
        state: StepState::Pending,
    }));
    match next_release(View::of(&sims)) {
        Next::Release(r) => assert_eq!(
            r.iter()
                .map(|s| format!("{}:{}", s.step.host_name, s.step.kind))
                .collect::<Vec<_>>(),
            vec!["m0:upgrade"]
        ),
        other => panic!("{other:?}"),
    }
}
