//! Multi-host end to end: a real etcd cluster (Debian's binaries, carried in the bundle)
//! installed by real agents in network namespaces, each with its own address and hostname,
//! the controller in a namespace of its own. Needs root: runs when BERTH_E2E=1 (.ci/run sets
//! it); otherwise it says it was skipped.
#![allow(clippy::unwrap_used)]

use berth_tests::netns::{self, Fleet};
use berth_tests::*;
use serde_json::Value;
use std::process::Command;

fn enabled() -> bool {
    if std::env::var("BERTH_E2E").as_deref() != Ok("1") {
        eprintln!(
            "skipped: set BERTH_E2E=1 to run the network-namespace end-to-end tests (needs root)"
        );
        return false;
    }
    assert!(
        netns::available(),
        "BERTH_E2E=1 needs root and iproute2 (ip netns)"
    );
    true
}

struct Host {
    name: String,
    ns: String,
    addr: String,
    _agent: Proc,
}

fn etcdctl(host: &Host, args: &[&str]) -> std::process::Output {
    Fleet::exec(
        &host.ns,
        &repo_root().join("examples/etcd/bin/etcdctl"),
        args,
    )
}

/// etcd processes running in a namespace.
fn etcd_pids(ns: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains("bin/etcd\0--name"))
                .unwrap_or(false)
        })
        .map(str::to_string)
        .collect()
}

fn steps_of(st: &Value, host: &str) -> usize {
    st["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["host"] == host)
        .count()
}

#[test]
fn etcd_cluster_in_namespaces_create_scale_delete_reset() {
    if !enabled() {
        return;
    }
    let assemble = Command::new(repo_root().join("examples/etcd/assemble.sh"))
        .status()
        .unwrap();
    assert!(assemble.success(), "examples/etcd/assemble.sh failed");

    let mut fleet = Fleet::new();
    let (cns, cip) = fleet.host("ctl");
    let ctl = Controller::start_in(&cns, &cip, &[]);
    let (token, hash) = ctl.create_token(5, "1h");
    let mut hosts = Vec::new();
    for i in 1..=5 {
        let name = format!("e{i}");
        let (ns, addr) = fleet.host(&name);
        let data = ctl.agent_dir(&name);
        let out = Fleet::agent_command(
            &ns,
            &name,
            &agent_bin(),
            &[
                "join",
                "--controller",
                &ctl.url(),
                "--token",
                &token,
                "--ca-hash",
                &hash,
                "--name",
                &name,
            ],
            &data,
        )
        .output()
        .unwrap();
        assert!(out.status.success(), "join {name}: {}", stderr(&out));
        let agent = Proc::spawn(
            &format!("agent {name}"),
            Fleet::agent_command(
                &ns,
                &name,
                &agent_bin(),
                &["run", "--poll-wait", "2s", "--backoff-max", "2s"],
                &data,
            ),
            ctl.dir.path().join(format!("agent-{name}.log")),
        );
        hosts.push(Host {
            name,
            ns,
            addr,
            _agent: agent,
        });
    }
    wait_for("5 hosts ready", std::time::Duration::from_secs(60), || {
        let v: Value =
            serde_json::from_slice(&ctl.cli(&["get", "hosts", "-o", "json"]).stdout).ok()?;
        (v.as_array()?
            .iter()
            .filter(|h| h["state"] == "Ready")
            .count()
            == 5)
            .then_some(())
    });
    // Each agent reports its own namespace's address and hostname.
    let v: Value =
        serde_json::from_slice(&ctl.cli(&["get", "hosts", "-o", "json"]).stdout).unwrap();
    for h in &hosts {
        let row = v
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == h.name.as_str())
            .unwrap();
        assert_eq!(row["addresses"], serde_json::json!([h.addr]));
        assert_eq!(row["facts"]["hostname"], h.name.as_str());
    }

    let etcd = repo_root().join("examples/etcd");
    let out = ctl.cli(&[
        "bundle",
        "push",
        etcd.to_str().unwrap(),
        "--tag",
        "etcd:v3.4.23",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    // 1. Three masters, matched by address (with a port, as sealos writes them).
    let addrs: Vec<String> = hosts.iter().map(|h| format!("{}:22", h.addr)).collect();
    let a: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let cf = ctl.clusterfile("etcd", &a[..3], &[], &["etcd:v3.4.23"], &[]);
    let out = ctl.cli(&["apply", "-f", cf.to_str().unwrap(), "--wait"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let endpoints = |n: usize| {
        hosts[..n]
            .iter()
            .map(|h| format!("http://{}:2379", h.addr))
            .collect::<Vec<_>>()
            .join(",")
    };
    let health = etcdctl(
        &hosts[0],
        &[
            "--endpoints",
            &endpoints(3),
            "endpoint",
            "health",
            "--cluster",
        ],
    );
    let text = format!("{}{}", stdout(&health), stderr(&health));
    assert_eq!(text.matches("is healthy").count(), 3, "{text}");
    assert!(etcdctl(
        &hosts[0],
        &[
            "--endpoints",
            &format!("http://{}:2379", hosts[0].addr),
            "put",
            "greeting",
            "ahoy"
        ]
    )
    .status
    .success());
    let got = etcdctl(
        &hosts[2],
        &[
            "--endpoints",
            &format!("http://{}:2379", hosts[2].addr),
            "get",
            "greeting",
            "--print-value-only",
        ],
    );
    assert_eq!(stdout(&got).trim(), "ahoy");

    // 2. Scale to five masters: only the two new hosts run steps.
    let before: Vec<usize> = hosts
        .iter()
        .map(|h| steps_of(&ctl.status("etcd"), &h.name))
        .collect();
    let cf = ctl.clusterfile("etcd", &a, &[], &["etcd:v3.4.23"], &[]);
    let out = ctl.cli(&["apply", "-f", cf.to_str().unwrap(), "--wait"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let st = ctl.status("etcd");
    for (i, h) in hosts.iter().enumerate() {
        let want = if i < 3 { before[i] } else { 4 };
        assert_eq!(steps_of(&st, &h.name), want, "{}", h.name);
    }
    let health = etcdctl(
        &hosts[0],
        &[
            "--endpoints",
            &endpoints(5),
            "endpoint",
            "health",
            "--cluster",
        ],
    );
    let text = format!("{}{}", stdout(&health), stderr(&health));
    assert_eq!(text.matches("is healthy").count(), 5, "{text}");

    // 3. Delete one master: 4 members, its etcd gone, its cluster directory removed.
    let out = ctl.cli(&[
        "delete",
        "--masters",
        &addrs[4],
        "--cluster",
        "etcd",
        "--wait",
    ]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let members = etcdctl(&hosts[0], &["--endpoints", &endpoints(1), "member", "list"]);
    assert_eq!(stdout(&members).lines().count(), 4, "{}", stdout(&members));
    assert!(etcd_pids(&hosts[4].ns).is_empty(), "etcd still runs on e5");
    assert!(!ctl.agent_dir("e5").join("clusters/etcd/rootfs").exists());

    // 7. Reset: no etcd anywhere, no cluster files, no cluster.
    let out = ctl.cli(&["reset", "etcd", "--wait"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    for h in &hosts {
        assert!(etcd_pids(&h.ns).is_empty(), "etcd still runs on {}", h.name);
        assert!(
            !ctl.agent_dir(&h.name).join("clusters/etcd/rootfs").exists(),
            "{}",
            h.name
        );
        assert!(
            !ctl.agent_dir(&h.name).join("clusters/etcd/etcd").exists(),
            "{}",
            h.name
        );
    }
    let list: Value =
        serde_json::from_slice(&ctl.cli(&["get", "clusters", "-o", "json"]).stdout).unwrap();
    assert_eq!(list, serde_json::json!([]));
}

#[test]
fn hosts_behind_nat_join_a_cluster_the_controller_cannot_reach_back() {
    if !enabled() {
        return;
    }
    let assemble = Command::new(repo_root().join("examples/etcd/assemble.sh"))
        .status()
        .unwrap();
    assert!(assemble.success(), "examples/etcd/assemble.sh failed");
    let mut fleet = Fleet::new();
    let (cns, cip) = fleet.host("ctl");
    let ctl = Controller::start_in(&cns, &cip, &[]);
    fleet.nat_router();
    let (token, hash) = ctl.create_token(3, "1h");
    let mut hosts = Vec::new();
    for (name, natted) in [("m1", false), ("n1", true), ("n2", true)] {
        let (ns, addr) = if natted {
            fleet.nat_host(name)
        } else {
            fleet.host(name)
        };
        let data = ctl.agent_dir(name);
        let out = Fleet::agent_command(
            &ns,
            name,
            &agent_bin(),
            &[
                "join",
                "--controller",
                &ctl.url(),
                "--token",
                &token,
                "--ca-hash",
                &hash,
                "--name",
                name,
            ],
            &data,
        )
        .output()
        .unwrap();
        assert!(out.status.success(), "join {name}: {}", stderr(&out));
        let agent = Proc::spawn(
            &format!("agent {name}"),
            Fleet::agent_command(
                &ns,
                name,
                &agent_bin(),
                &["run", "--poll-wait", "2s", "--backoff-max", "2s"],
                &data,
            ),
            ctl.dir.path().join(format!("agent-{name}.log")),
        );
        hosts.push(Host {
            name: name.to_string(),
            ns,
            addr,
            _agent: agent,
        });
    }
    // The controller has no route back to the NAT'd hosts; they dial out fine.
    for h in &hosts[1..] {
        assert!(
            !Fleet::can_connect(&cns, &h.addr, 22),
            "controller reached {} at {}",
            h.name,
            h.addr
        );
        assert!(
            Fleet::can_connect(&h.ns, &cip, 7443),
            "{} cannot reach the controller",
            h.name
        );
    }
    let etcd = repo_root().join("examples/etcd");
    assert!(ctl
        .cli(&[
            "bundle",
            "push",
            etcd.to_str().unwrap(),
            "--tag",
            "etcd:v3.4.23"
        ])
        .status
        .success());
    let cf = ctl.clusterfile(
        "natted",
        &[&hosts[0].addr],
        &["n1", "n2"],
        &["etcd:v3.4.23"],
        &[],
    );
    let out = ctl.cli(&["apply", "-f", cf.to_str().unwrap(), "--wait"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    // The nodes' join-node ran a real etcd client against master0 and registered.
    let got = etcdctl(
        &hosts[0],
        &[
            "--endpoints",
            &format!("http://{}:2379", hosts[0].addr),
            "get",
            "nodes/",
            "--prefix",
            "--keys-only",
        ],
    );
    let keys = stdout(&got);
    assert!(
        keys.contains("nodes/n1") && keys.contains("nodes/n2"),
        "{keys}"
    );
    let out = ctl.cli(&["reset", "natted", "--wait"]);
    assert!(out.status.success(), "{}", stderr(&out));
}
