//! Multi-host end to end: a real etcd cluster (Debian's binaries, carried in the bundle)
//! installed by real agents in network namespaces, each with its own address and hostname,
//! the controller in a namespace of its own. Needs root: the tests run when BERTH_E2E=1 at
//! build time (.ci/run sets it; tests/build.rs turns it into `cfg(berth_e2e)`); otherwise
//! they are compiled as `#[ignore]` and show up as ignored.
#![allow(clippy::unwrap_used)]

use berth_tests::netns::{self, Fleet};
use berth_tests::*;
use serde_json::Value;
use std::process::Command;

/// Enrolls an agent named `name` from inside namespace `ns` and starts it there.
fn enroll(ctl: &Controller, ns: &str, name: &str, token: &str, hash: &str) -> Proc {
    let data = ctl.agent_dir(name);
    let out = Fleet::agent_command(
        ns,
        name,
        &agent_bin(),
        &[
            "join",
            "--controller",
            &ctl.url(),
            "--token",
            token,
            "--ca-hash",
            hash,
            "--name",
            name,
        ],
        &data,
    )
    .output()
    .unwrap();
    assert!(out.status.success(), "join {name}: {}", stderr(&out));
    Proc::spawn(
        &format!("agent {name}"),
        Fleet::agent_command(
            ns,
            name,
            &agent_bin(),
            &["run", "--poll-wait", "2s", "--backoff-max", "2s"],
            &data,
        ),
        ctl.dir.path().join(format!("agent-{name}.log")),
    )
}

/// Puts Debian's etcd binaries into the example bundle (once; the tests of this binary run
/// in parallel and must not assemble it twice at once).
fn assemble_etcd() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let st = Command::new(repo_root().join("examples/etcd/assemble.sh"))
            .status()
            .unwrap();
        assert!(st.success(), "examples/etcd/assemble.sh failed");
    });
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
#[cfg_attr(
    not(berth_e2e),
    ignore = "needs root and BERTH_E2E=1 (network namespaces)"
)]
fn etcd_cluster_in_namespaces_create_scale_delete_reset() {
    netns::require();
    assemble_etcd();

    let (_fleet, ctl, hosts, _) = flat_fleet(&["e1", "e2", "e3", "e4", "e5"]);
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
    assert!(!ctl.agent_dir("e5").join("clusters/etcd").exists());

    // 4. Upgrade to another build, masters one at a time, while a client keeps writing
    //    through every member: every write it was told succeeded is there afterwards.
    let v2 = ctl.dir.path().join("etcd-v2");
    let out = Command::new("cp")
        .arg("-r")
        .arg(&etcd)
        .arg(&v2)
        .output()
        .unwrap();
    assert!(out.status.success());
    let y = std::fs::read_to_string(v2.join("bundle.yaml")).unwrap();
    std::fs::write(
        v2.join("bundle.yaml"),
        y.replace("version: v3.4.23", "version: v3.4.23-b2"),
    )
    .unwrap();
    let out = ctl.cli(&[
        "bundle",
        "push",
        v2.to_str().unwrap(),
        "--tag",
        "etcd:v3.4.23-b2",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pids_before: Vec<Vec<String>> = hosts[..4].iter().map(|h| etcd_pids(&h.ns)).collect();
    let acked = ctl.dir.path().join("acked");
    let stop = ctl.dir.path().join("stop-writing");
    let writer_script = format!(
        "i=0; while [ ! -e '{stop}' ]; do i=$((i+1)); if '{ctl_bin}' --endpoints '{eps}' --command-timeout=3s put k/$i $i >/dev/null 2>&1; then echo $i >> '{acked}'; fi; done",
        stop = stop.display(),
        ctl_bin = repo_root().join("examples/etcd/bin/etcdctl").display(),
        eps = endpoints(4),
        acked = acked.display(),
    );
    let mut writer = Command::new("ip")
        .args(["netns", "exec", &hosts[0].ns, "sh", "-c", &writer_script])
        .env("ETCDCTL_API", "3")
        .spawn()
        .unwrap();
    wait_for(
        "the writer to write",
        std::time::Duration::from_secs(30),
        || {
            (std::fs::read_to_string(&acked)
                .unwrap_or_default()
                .lines()
                .count()
                > 5)
            .then_some(())
        },
    );
    let cf = ctl.clusterfile("etcd", &a[..4], &[], &["etcd:v3.4.23-b2"], &[]);
    let out = ctl.cli(&["apply", "-f", cf.to_str().unwrap(), "--wait"]);
    let during = std::fs::read_to_string(&acked)
        .unwrap_or_default()
        .lines()
        .count();
    std::fs::write(&stop, "").unwrap();
    let _ = writer.wait();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let acked: Vec<String> = std::fs::read_to_string(&acked)
        .unwrap()
        .lines()
        .map(|i| format!("k/{i}"))
        .collect();
    assert!(
        acked.len() >= during && during > 20,
        "the writer kept writing: {during}"
    );
    let keys = etcdctl(
        &hosts[1],
        &[
            "--endpoints",
            &endpoints(4),
            "get",
            "k/",
            "--prefix",
            "--keys-only",
        ],
    );
    let keys = stdout(&keys);
    let stored: std::collections::HashSet<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|k| !stored.contains(k.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost: {lost:?}",
        lost.len()
    );
    // Every member restarted (a new process) from the new generation, one at a time.
    for (i, h) in hosts[..4].iter().enumerate() {
        let now = etcd_pids(&h.ns);
        assert_eq!(now.len(), 1, "{}", h.name);
        assert_ne!(now, pids_before[i], "{} was not restarted", h.name);
    }
    let events = stdout(&ctl.cli(&["get", "events", "etcd", "--limit", "10000"]));
    let batches: Vec<&str> = events
        .lines()
        .filter(|l| l.contains(" batch ") && l.contains("upgrade batch"))
        .collect();
    assert_eq!(batches.len(), 4, "one member at a time: {batches:#?}");
    let health = etcdctl(
        &hosts[0],
        &[
            "--endpoints",
            &endpoints(4),
            "endpoint",
            "health",
            "--cluster",
        ],
    );
    let text = format!("{}{}", stdout(&health), stderr(&health));
    assert_eq!(text.matches("is healthy").count(), 4, "{text}");

    // 7. Reset: no etcd anywhere, no cluster files, no cluster.
    let out = ctl.cli(&["reset", "etcd", "--wait"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    for h in &hosts {
        assert!(etcd_pids(&h.ns).is_empty(), "etcd still runs on {}", h.name);
        assert!(
            !ctl.agent_dir(&h.name).join("clusters/etcd").exists(),
            "{}: cluster dir left",
            h.name
        );
    }
    let list: Value =
        serde_json::from_slice(&ctl.cli(&["get", "clusters", "-o", "json"]).stdout).unwrap();
    assert_eq!(list, serde_json::json!([]));
}

#[test]
#[cfg_attr(
    not(berth_e2e),
    ignore = "needs root and BERTH_E2E=1 (network namespaces)"
)]
fn hosts_behind_nat_join_a_cluster_the_controller_cannot_reach_back() {
    netns::require();
    assemble_etcd();
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
        let agent = enroll(&ctl, &ns, name, &token, &hash);
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
    // exec reaches the NAT'd hosts through their own polls; n2's command fails.
    let out = ctl.cli(&[
        "exec",
        "natted",
        "--",
        "sh",
        "-c",
        "echo on $(hostname) at $BERTH_HOST_IP; [ \"$BERTH_HOST\" != n2 ] || exit 3",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let so = stdout(&out);
    for h in &hosts {
        assert!(
            so.contains(&format!("{} | on {} at {}", h.name, h.name, h.addr)),
            "{so}"
        );
    }
    let se = stderr(&out);
    assert!(se.contains("n2  failed      exit 3"), "{se}");
    assert!(se.contains("n1  succeeded   exit 0"), "{se}");
    let audit = stdout(&ctl.cli(&["get", "audit", "-o", "json"]));
    assert!(audit.contains("cluster.exec"), "{audit}");
    let out = ctl.cli(&["reset", "natted", "--wait"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A flat fleet: controller plus the named hosts with running agents.
fn flat_fleet(names: &[&str]) -> (Fleet, Controller, Vec<Host>, String) {
    let mut fleet = Fleet::new();
    let (cns, cip) = fleet.host("ctl");
    let ctl = Controller::start_in(&cns, &cip, &[]);
    let (token, hash) = ctl.create_token(names.len() as u32, "1h");
    let mut hosts = Vec::new();
    for name in names {
        let (ns, addr) = fleet.host(name);
        let agent = enroll(&ctl, &ns, name, &token, &hash);
        hosts.push(Host {
            name: name.to_string(),
            ns,
            addr,
            _agent: agent,
        });
    }
    (fleet, ctl, hosts, cns)
}

fn step<'a>(st: &'a Value, host: &str, kind: &str) -> &'a Value {
    st["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["host"] == host && s["kind"] == kind)
        .unwrap()
}

#[test]
#[cfg_attr(
    not(berth_e2e),
    ignore = "needs root and BERTH_E2E=1 (network namespaces)"
)]
fn a_host_cut_off_mid_install_catches_up_and_no_report_is_lost() {
    netns::require();
    let (_fleet, ctl, hosts, _) = flat_fleet(&["p1", "p2", "p3"]);
    ctl.push_examples();
    let mk = ctl.dir.path().join("marks");
    std::fs::create_dir_all(&mk).unwrap();
    let env = vec![
        format!("HELLO_MARKS={}", mk.display()),
        "HELLO_INSTALL_SECONDS=10".to_string(),
    ];
    let cf = ctl.clusterfile("part", &["p1"], &["p2", "p3"], &["hello:v1"], &env);
    assert!(ctl
        .cli(&["apply", "-f", cf.to_str().unwrap()])
        .status
        .success());
    wait_for("p2 installing", std::time::Duration::from_secs(60), || {
        (step(&ctl.status("part"), "p2", "install")["state"] == "running").then_some(())
    });
    Fleet::cut(&hosts[1].ns);
    std::thread::sleep(std::time::Duration::from_secs(30));
    Fleet::heal(&hosts[1].ns);
    let out = ctl.cli(&["status", "part", "--watch"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let log = stdout(&ctl.cli(&["logs", "part", "--host", "p2", "--step", "install"]));
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with("installing... "))
        .collect();
    let want: Vec<String> = (0..10).map(|i| format!("installing... {i}")).collect();
    assert_eq!(
        lines, want,
        "the step log on the controller is complete and in order:\n{log}"
    );
    let st = ctl.status("part");
    for s in st["steps"].as_array().unwrap() {
        assert_eq!(
            (s["state"].as_str(), s["attempt"].as_u64()),
            (Some("succeeded"), Some(1)),
            "{s}"
        );
    }
}

#[test]
#[cfg_attr(
    not(berth_e2e),
    ignore = "needs root and BERTH_E2E=1 (network namespaces)"
)]
fn a_controller_killed_during_join_restarts_and_no_step_runs_twice() {
    netns::require();
    assemble_etcd();
    let (_fleet, mut ctl, hosts, _) = flat_fleet(&["k1", "k2", "k3"]);
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
    let a: Vec<&str> = hosts.iter().map(|h| h.addr.as_str()).collect();
    let cf = ctl.clusterfile("crash", &a, &[], &["etcd:v3.4.23"], &[]);
    assert!(ctl
        .cli(&["apply", "-f", cf.to_str().unwrap()])
        .status
        .success());
    wait_for(
        "a join running",
        std::time::Duration::from_secs(120),
        || {
            let st = ctl.status("crash");
            st["steps"]
                .as_array()?
                .iter()
                .any(|s| s["kind"] == "join-master" && s["state"] == "running")
                .then_some(())
        },
    );
    ctl.proc.as_mut().unwrap().kill9();
    std::thread::sleep(std::time::Duration::from_secs(2));
    ctl.spawn().unwrap();
    let out = ctl.cli(&["status", "crash", "--watch"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let st = ctl.status("crash");
    for s in st["steps"].as_array().unwrap() {
        assert_eq!(
            (s["state"].as_str(), s["attempt"].as_u64()),
            (Some("succeeded"), Some(1)),
            "{s}"
        );
    }
    let members = etcdctl(
        &hosts[0],
        &[
            "--endpoints",
            &format!("http://{}:2379", hosts[0].addr),
            "member",
            "list",
        ],
    );
    assert_eq!(stdout(&members).lines().count(), 3, "{}", stdout(&members));
    assert!(ctl.cli(&["reset", "crash", "--wait"]).status.success());
}

#[test]
#[cfg_attr(
    not(berth_e2e),
    ignore = "needs root and BERTH_E2E=1 (network namespaces)"
)]
fn a_bundle_download_cut_mid_way_resumes_and_is_verified() {
    netns::require();
    let (_fleet, ctl, hosts, cns) = flat_fleet(&["d1"]);
    // A bundle big enough to cut mid-way: hello plus 24 MB of incompressible data.
    let src = ctl.dir.path().join("big");
    let copy = Command::new("cp")
        .arg("-r")
        .arg(repo_root().join("examples/hello"))
        .arg(&src)
        .status()
        .unwrap();
    assert!(copy.success());
    write_bundle(&ctl.dir.path().join("payload-src"), "x", "v1", 24 << 20);
    std::fs::rename(
        ctl.dir.path().join("payload-src/bin/payload"),
        src.join("payload.bin"),
    )
    .unwrap();
    let text = std::fs::read_to_string(src.join("bundle.yaml"))
        .unwrap()
        .replace("name: hello", "name: big");
    std::fs::write(src.join("bundle.yaml"), text).unwrap();
    assert!(ctl
        .cli(&["bundle", "push", src.to_str().unwrap(), "--tag", "big:v1"])
        .status
        .success());
    // Slow the controller's side so the 24 MB download takes seconds.
    Fleet::throttle(&cns, "40mbit");
    let cf = ctl.clusterfile("dl", &["d1"], &[], &["big:v1"], &[]);
    assert!(ctl
        .cli(&["apply", "-f", cf.to_str().unwrap()])
        .status
        .success());
    let agent_log = ctl.dir.path().join("agent-d1.log");
    wait_for(
        "download started",
        std::time::Duration::from_secs(60),
        || (step(&ctl.status("dl"), "d1", "check")["state"] == "running").then_some(()),
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    Fleet::reset_tcp(&hosts[0].ns);
    std::thread::sleep(std::time::Duration::from_secs(3));
    Fleet::heal(&hosts[0].ns);
    let out = ctl.cli(&["status", "dl", "--watch"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let log = std::fs::read_to_string(&agent_log).unwrap();
    let resumed = log
        .lines()
        .find(|l| l.contains("resuming download from the bytes already fetched"))
        .unwrap_or_else(|| panic!("no resume:\n{log}"));
    let offset: u64 = resumed
        .split("offset=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(offset > 1_000_000, "resumed from {offset}");
    assert!(log.contains("blob fetched and verified"), "{log}");
    assert!(ctl.cli(&["reset", "dl", "--wait"]).status.success());
}
