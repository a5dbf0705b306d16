//! Air-gapped from zero, on hosts made of network namespaces (root; run when BERTH_E2E=1,
//! otherwise ignored): hosts that never saw berth-agent install themselves with the one
//! line `berth token create --install` prints and then install a cluster; the same line
//! refuses another controller at the same address; and the static agent runs hooks on a
//! host whose root file system holds nothing but a static `/bin/sh`.
#![allow(clippy::unwrap_used)]

use berth_tests::netns::{self, Fleet};
use berth_tests::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn ready_hosts(ctl: &Controller) -> Vec<String> {
    let out = ctl.cli(&["get", "hosts", "-o", "json"]);
    serde_json::from_slice::<Vec<Value>>(&out.stdout)
        .unwrap_or_default()
        .into_iter()
        .filter(|h| h["state"] == "Ready")
        .map(|h| h["name"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Runs `line` with `sh` inside namespace `ns` under hostname `name`, installing into
/// `root` (binary and data dir; no systemd in a test namespace).
fn run_line(ns: &str, name: &str, line: &str, root: &Path) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns, "unshare", "--uts", "sh", "-c"])
        .arg("hostname \"$1\" && exec sh -c \"$2\"")
        .args(["sh", name, line])
        .env("BERTH_INSTALL_DIR", root.join("bin"))
        .env("BERTH_AGENT_DATA_DIR", root.join("data"))
        .env("BERTH_SKIP_SYSTEMD", "1")
        .output()
        .unwrap()
}

#[test]
#[cfg_attr(
    not(berth_e2e),
    ignore = "needs root and BERTH_E2E=1 (network namespaces)"
)]
fn hosts_with_nothing_install_themselves_with_one_line_then_a_cluster() {
    netns::require();
    let mut fleet = Fleet::new();
    let (cns, cip) = fleet.host("ctl");
    let mut ctl = Controller::start_in(&cns, &cip, &[]);
    let out = ctl.cli(&["token", "create", "--install", "--uses", "3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let line = stdout(&out).trim().to_string();
    assert!(
        line.starts_with("echo ") && line.contains(" | sh -c '"),
        "{line}"
    );

    let names = ["h1", "h2", "h3"];
    let mut addrs = Vec::new();
    for name in names {
        let (ns, addr) = fleet.host(name);
        let root = ctl.dir.path().join("hosts").join(name);
        let out = run_line(&ns, name, &line, &root);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        assert!(root.join("bin/berth-agent").is_file());
        assert!(root.join("bin/berth-agent-uninstall.sh").is_file());
        addrs.push(addr);
    }
    wait_for(
        "3 self-installed hosts Ready",
        Duration::from_secs(60),
        || (ready_hosts(&ctl).len() == 3).then_some(()),
    );
    // Named after their hostnames, the default.
    let mut ready = ready_hosts(&ctl);
    ready.sort();
    assert_eq!(ready, names);

    ctl.push_examples();
    let mk = ctl.dir.path().join("marks");
    std::fs::create_dir_all(&mk).unwrap();
    let masters = [addrs[0].as_str()];
    let nodes = [addrs[1].as_str(), addrs[2].as_str()];
    let env = [format!("HELLO_MARKS={}", mk.display())];
    let cf = ctl.clusterfile("selfmade", &masters, &nodes, &["hello:v1"], &env);
    let out = ctl.cli(&["apply", "-f", cf.to_str().unwrap(), "--wait"]);
    assert!(
        out.status.success(),
        "apply: {}\n{}",
        stdout(&out),
        stderr(&out)
    );
    for name in names {
        assert!(
            marks(&mk, name).iter().any(|m| m.starts_with("install")),
            "{name} ran install: {:?}",
            marks(&mk, name)
        );
    }

    // Another controller (another CA) at the same address: the same line refuses and a
    // fresh host gets nothing.
    ctl.stop();
    let other = Controller::start_in(&cns, &cip, &[]);
    assert_ne!(other.ca_pem(), ctl.ca_pem());
    let (ns, _) = fleet.host("h4");
    let root = ctl.dir.path().join("hosts/h4");
    let out = run_line(&ns, "h4", &line, &root);
    assert!(!out.status.success());
    assert!(!root.exists(), "nothing installed: {}", stderr(&out));
    assert!(ready_hosts(&other).is_empty());
}

/// A root file system with only `/bin/sh` (busybox, static) and the agent: the agent
/// enrolls, runs and executes hooks there.
#[test]
#[cfg_attr(
    not(berth_e2e),
    ignore = "needs root and BERTH_E2E=1 (network namespaces)"
)]
fn the_static_agent_runs_hooks_where_root_has_only_a_static_sh() {
    netns::require();
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .expect("busybox (Debian: busybox-static) is needed for this test; .ci/run installs it");
    let ldd = Command::new("ldd").arg(&busybox).output().unwrap();
    assert!(
        !ldd.status.success() || stdout(&ldd).contains("statically"),
        "{} must be static (busybox-static)",
        busybox.display()
    );

    let mut fleet = Fleet::new();
    let (cns, cip) = fleet.host("ctl");
    let ctl = Controller::start_in(&cns, &cip, &[]);
    let (ns, addr) = fleet.host("bare");

    // The host's whole root: /bin/sh, the agent, empty /dev/null, /proc, /tmp.
    let root = ctl.dir.path().join("bare-root");
    for d in ["bin", "dev", "proc", "tmp", "var/lib"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(&busybox, root.join("bin/sh")).unwrap();
    std::fs::copy(agent_bin(), root.join("bin/berth-agent")).unwrap();
    std::fs::write(root.join("dev/null"), "").unwrap();
    let entries: Vec<String> = walk(&root);
    assert_eq!(
        entries,
        [
            "bin",
            "bin/berth-agent",
            "bin/sh",
            "dev",
            "dev/null",
            "proc",
            "tmp",
            "var",
            "var/lib"
        ]
    );

    let (token, hash) = ctl.create_token(1, "1h");
    let script = format!(
        "set -e; hostname bare; mount --bind /dev/null {r}/dev/null; mount -t proc proc {r}/proc; \
         exec chroot {r} /bin/berth-agent join --controller {url} --token {token} --ca-hash {hash} \
         --name bare --data-dir /var/lib/berth-agent --run --poll-wait 2s --backoff-max 2s",
        r = root.display(),
        url = ctl.url(),
    );
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns", "exec", &ns, "unshare", "--mount", "--uts", "sh", "-c", &script,
    ]);
    let _agent = Proc::spawn("agent bare", cmd, ctl.dir.path().join("agent-bare.log"));
    wait_for("bare Ready", Duration::from_secs(60), || {
        (ready_hosts(&ctl) == ["bare"]).then_some(())
    });

    // A bundle whose hook needs nothing but the shell's builtins.
    let bundle = ctl.dir.path().join("bare-bundle");
    std::fs::create_dir_all(bundle.join("scripts")).unwrap();
    std::fs::write(
        bundle.join("bundle.yaml"),
        "apiVersion: berth.dev/v1\nkind: Bundle\nname: bare\nversion: v1\ntype: rootfs\nhooks:\n  install: scripts/install.sh\n",
    )
    .unwrap();
    std::fs::write(
        bundle.join("scripts/install.sh"),
        "#!/bin/sh\nread -r kernel < /proc/sys/kernel/osrelease\necho \"installed on kernel $kernel\" > /tmp/proof\necho done\n",
    )
    .unwrap();
    let out = ctl.cli(&[
        "bundle",
        "push",
        bundle.to_str().unwrap(),
        "--tag",
        "bare:v1",
    ]);
    assert!(out.status.success(), "push: {}", stderr(&out));
    let cf = ctl.clusterfile("bare", &[addr.as_str()], &[], &["bare:v1"], &[]);
    let out = ctl.cli(&["apply", "-f", cf.to_str().unwrap(), "--wait"]);
    assert!(
        out.status.success(),
        "apply: {}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let proof = std::fs::read_to_string(root.join("tmp/proof")).unwrap();
    assert!(proof.starts_with("installed on kernel "), "{proof}");
}

/// Paths under `root`, sorted, relative, depth ≤ 2.
fn walk(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(root).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if e.path().is_dir() {
            for c in std::fs::read_dir(e.path()).unwrap().flatten() {
                out.push(format!("{name}/{}", c.file_name().to_string_lossy()));
            }
        }
        out.push(name);
    }
    out.sort();
    out
}
