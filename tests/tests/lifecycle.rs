//! Trust that lasts, and hosts that install themselves: certificate renewal (agent and
//! server, also across a controller restart), re-enrollment of a host whose certificate
//! expired while it was off, the install line (right CA and wrong CA) and agent binaries.
//! Real controller and agent processes on loopback; the multi-host versions run in
//! network namespaces in `e2e_airgap.rs`.
#![allow(clippy::unwrap_used)]

use berth_tests::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn hosts(ctl: &Controller) -> Vec<Value> {
    let out = ctl.cli(&["get", "hosts", "-o", "json"]);
    assert!(out.status.success(), "get hosts: {}", stderr(&out));
    serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap()
}

fn host(ctl: &Controller, name: &str) -> Value {
    hosts(ctl)
        .into_iter()
        .find(|h| h["name"] == name)
        .unwrap_or_else(|| panic!("no host {name}"))
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

/// The `code` of a JSON error body.
fn code(resp: reqwest::blocking::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let v: Value = resp.json().unwrap_or(Value::Null);
    (status, v["code"].as_str().unwrap_or("").to_string())
}

fn token_json(ctl: &Controller, args: &[&str]) -> Value {
    let mut all = vec!["token", "create", "-o", "json"];
    all.extend_from_slice(args);
    let out = ctl.cli(&all);
    assert!(out.status.success(), "token create: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn apply_wait(ctl: &Controller, file: &Path) {
    let out = ctl.cli(&["apply", "-f", file.to_str().unwrap(), "--wait"]);
    assert!(
        out.status.success(),
        "apply --wait: {}\n{}",
        stdout(&out),
        stderr(&out)
    );
}

/// With 30 s agent certificates and a 45 s server certificate, agents keep working across
/// several renewals of both; a cluster applied after two minutes reaches Running.
#[test]
fn certificates_renew_themselves_and_a_cluster_applied_after_two_minutes_runs() {
    let ctl = Controller::start(&["--agent-cert-ttl", "30s", "--server-cert-ttl", "45s"]);
    let _agents = ctl.agents(&["r1", "r2"]);
    wait_for("both hosts ready", Duration::from_secs(30), || {
        hosts(&ctl)
            .iter()
            .all(|h| h["state"] == "Ready")
            .then_some(())
    });
    let first_expiry = host(&ctl, "r1")["cert_expires_at"]
        .as_str()
        .unwrap()
        .to_string();
    let started = Instant::now();
    // Every host stays Ready the whole time (grace is 60 s; a host that lost its
    // certificate would stop polling and show NotReady only late, so also check that
    // its last poll is recent).
    while started.elapsed() < Duration::from_secs(125) {
        for h in hosts(&ctl) {
            assert_eq!(h["state"], "Ready", "{h}");
            assert!(
                h["last_seen_secs_ago"].as_u64().unwrap() <= 10,
                "host stopped polling: {h}"
            );
        }
        std::thread::sleep(Duration::from_secs(5));
    }
    let log = std::fs::read_to_string(ctl.dir.path().join("controller.log")).unwrap();
    for name in ["r1", "r2"] {
        let renewals = log
            .lines()
            .filter(|l| {
                l.contains("agent certificate renewed") && l.contains(&format!("host={name}"))
            })
            .count();
        assert!(renewals >= 4, "{name} renewed {renewals} times in 125 s");
    }
    let server_renewals = count(&log, "server certificate renewed");
    assert!(
        server_renewals >= 3,
        "server renewed {server_renewals} times"
    );
    assert_ne!(
        host(&ctl, "r1")["cert_expires_at"].as_str().unwrap(),
        first_expiry,
        "get hosts shows the renewed certificate's expiry"
    );
    // The first certificate of r1 has expired by now and is refused at the handshake.
    ctl.push_examples();
    let cf = ctl.clusterfile("late", &["r1"], &["r2"], &["hello:v1"], &[]);
    apply_wait(&ctl, &cf);
    assert_eq!(ctl.status("late")["phase"], "Running");
}

/// A controller that was down past its server certificate's expiry starts with a fresh
/// one (same CA); its agents reconnect without anything done on the hosts.
#[test]
fn a_controller_down_past_its_certificate_expiry_renews_it_at_start() {
    let mut ctl = Controller::start(&["--server-cert-ttl", "30s"]);
    let _agents = ctl.agents(&["s1"]);
    let crt = ctl.data_dir.join("pki/server.crt");
    let before = std::fs::read_to_string(&crt).unwrap();
    ctl.stop();
    std::thread::sleep(Duration::from_secs(36));
    ctl.spawn().unwrap();
    let after = std::fs::read_to_string(&crt).unwrap();
    assert_ne!(before, after, "the expired server certificate was replaced");
    let log = std::fs::read_to_string(ctl.dir.path().join("controller.log")).unwrap();
    assert!(
        log.contains("server certificate due for renewal"),
        "the start says why it re-issued"
    );
    // The agent (backoff ≤ 2 s) is back within a few seconds.
    wait_for("s1 polls again", Duration::from_secs(20), || {
        (host(&ctl, "s1")["last_seen_secs_ago"].as_u64()? <= 2).then_some(())
    });
}

/// A host switched off past its certificate's lifetime cannot connect; it says how to
/// re-enroll, re-enrolls with a token bound to it, and keeps its name and cluster.
#[test]
fn a_host_whose_certificate_expired_while_stopped_re_enrolls_and_keeps_its_cluster() {
    let ctl = Controller::start(&["--agent-cert-ttl", "30s"]);
    let mut agents = ctl.agents(&["x1"]);
    ctl.push_examples();
    let cf = ctl.clusterfile("keep", &["x1"], &[], &["hello:v1"], &[]);
    apply_wait(&ctl, &cf);
    let old_client = ctl.agent_client("x1");
    let enrolled_at = host(&ctl, "x1")["enrolled_at"].clone();

    agents[0].terminate(Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(35));
    let out = agent_run_command(&ctl.agent_dir("x1")).output().unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("certificate expired"), "{err}");
    assert!(err.contains("berth token create --reenroll x1"), "{err}");

    let data = ctl.agent_dir("x1");
    let reenroll = |token: &str, hash: &str| {
        Command::new(agent_bin())
            .args(["join", "--controller", &ctl.url(), "--token", token])
            .args(["--ca-hash", hash, "--reenroll", "--data-dir"])
            .arg(&data)
            .output()
            .unwrap()
    };
    // A plain token does not re-enroll, and consumes nothing.
    let (plain, hash) = ctl.create_token(1, "1h");
    let out = reenroll(&plain, &hash);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("(reenroll_not_allowed)"),
        "{}",
        stderr(&out)
    );

    let bound = token_json(&ctl, &["--reenroll", "x1"]);
    let out = reenroll(bound["token"].as_str().unwrap(), &hash);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("re-enrolled"), "{}", stderr(&out));
    // The bound token was for one use.
    let out = reenroll(bound["token"].as_str().unwrap(), &hash);
    assert!(
        stderr(&out).contains("(token_exhausted)"),
        "{}",
        stderr(&out)
    );

    let _again = ctl.run_agent("x1");
    wait_for("x1 ready again", Duration::from_secs(20), || {
        (host(&ctl, "x1")["state"] == "Ready").then_some(())
    });
    let h = host(&ctl, "x1");
    assert_eq!(h["enrolled_at"], enrolled_at, "same host record");
    assert_eq!(hosts(&ctl).len(), 1);
    // Still a member: a re-apply with an app added runs on it.
    let cf = ctl.clusterfile("keep", &["x1"], &[], &["hello:v1", "hello-app:v1"], &[]);
    apply_wait(&ctl, &cf);
    let st = ctl.status("keep");
    assert_eq!(st["phase"], "Running");
    // The old certificate is refused (expired, and no longer the host's).
    assert!(old_client
        .post(format!("{}/v1/agent/poll", ctl.url()))
        .json(&serde_json::json!({"wait_secs": 0, "have_generation": 0}))
        .send()
        .is_err_and(
            |e| format!("{e:?}").contains("xpired") || format!("{e:?}").contains("certificate")
        ));
}

/// Re-enrollment and renewal refuse everything that is not exactly allowed.
#[test]
fn reenrollment_and_renewal_refuse_what_is_not_allowed() {
    let ctl = Controller::start(&[]);
    let _agents = ctl.agents(&["n1", "n2"]);
    let api = ctl.api_client().unwrap();
    let (_, hash) = ctl.create_token(1, "1h");
    let enroll = |token: &str, name: &str, reenroll: bool| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        code(
            api.post(format!("{}/v1/enroll", ctl.url()))
                .json(&serde_json::json!({
                    "token": token, "name": name, "csr_pem": csr,
                    "facts": berth_shared::api::HostFacts::default(), "reenroll": reenroll
                }))
                .send()
                .unwrap(),
        )
    };
    let _ = hash;
    // A token bound to n1 enrolls nothing else, and not without --reenroll.
    let bound = token_json(&ctl, &["--reenroll", "n1"]);
    let t = bound["token"].as_str().unwrap();
    assert_eq!(enroll(t, "n2", true), (403, "reenroll_not_allowed".into()));
    assert_eq!(
        enroll(t, "fresh", false),
        (403, "reenroll_not_allowed".into())
    );
    assert_eq!(enroll(t, "n1", false), (403, "reenroll_not_allowed".into()));
    // --reenroll of a name nobody holds, and a bound token for a name nobody holds.
    let plain = ctl.create_token(1, "1h").0;
    assert_eq!(
        enroll(&plain, "ghost", true),
        (403, "reenroll_not_allowed".into())
    );
    let out = ctl.cli(&["token", "create", "--reenroll", "ghost"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no host named `ghost`"),
        "{}",
        stderr(&out)
    );
    let out = ctl.cli(&["token", "create", "--reenroll", "n1", "--uses", "2"]);
    assert!(stderr(&out).contains("uses must be 1"), "{}", stderr(&out));
    // A revoked host is not revived by re-enrolling.
    assert!(ctl.cli(&["host", "revoke", "n2"]).status.success());
    let bound2 = token_json(&ctl, &["--reenroll", "n2"]);
    assert_eq!(
        enroll(bound2["token"].as_str().unwrap(), "n2", true),
        (403, "host_revoked".into())
    );
    // None of the refusals used the tokens up: the bound token still re-enrolls n1.
    assert_eq!(enroll(t, "n1", true).0, 200);

    // Renewal: only over mutual TLS, only with a valid CSR; a refusal changes nothing.
    let renew = format!("{}/v1/agent/renew", ctl.url());
    assert_eq!(
        code(
            api.post(&renew)
                .json(&serde_json::json!({"csr_pem": "x"}))
                .send()
                .unwrap()
        ),
        (401, "client_certificate_required".into())
    );
    let n2 = ctl.agent_client("n2");
    assert_eq!(
        code(
            n2.post(&renew)
                .json(&serde_json::json!({"csr_pem": "x"}))
                .send()
                .unwrap()
        ),
        (401, "host_revoked".into())
    );
    let n1_old = ctl.agent_client("n1");
    assert_eq!(
        code(
            n1_old
                .post(&renew)
                .json(&serde_json::json!({"csr_pem": "x"}))
                .send()
                .unwrap()
        )
        .0,
        401,
        "n1's certificate before the re-enrollment is refused"
    );
}

/// The renewed-from certificate stays accepted until the new one is used, then is
/// refused; a lost renewal answer (renewing again with the old one) costs nothing.
#[test]
fn a_renewal_lost_on_the_way_costs_nothing_and_the_old_certificate_retires() {
    let ctl = Controller::start(&[]);
    let _agents = ctl.agents(&["q1"]);
    std::thread::sleep(Duration::from_millis(300));
    let old = ctl.agent_client("q1");
    let renew = |c: &reqwest::blocking::Client| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "q1");
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let resp = c
            .post(format!("{}/v1/agent/renew", ctl.url()))
            .json(&serde_json::json!({ "csr_pem": csr }))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().unwrap();
        (
            v["certificate_pem"].as_str().unwrap().to_string(),
            key.serialize_pem(),
        )
    };
    let poll = |c: &reqwest::blocking::Client| {
        c.post(format!("{}/v1/agent/poll", ctl.url()))
            .json(&serde_json::json!({"wait_secs": 0, "have_generation": 0}))
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    // Renew twice with the old certificate (the first answer "lost"): both work.
    let _lost = renew(&old);
    let (cert, key) = renew(&old);
    assert_eq!(poll(&old), 200, "the old certificate still works");
    let new = client(&ctl.ca_pem(), Some((&cert, &key))).unwrap();
    assert_eq!(poll(&new), 200);
    // Once the new one was used, the old one is refused; the lost one never worked.
    let (status, c) = code(
        old.post(format!("{}/v1/agent/poll", ctl.url()))
            .json(&serde_json::json!({"wait_secs": 0, "have_generation": 0}))
            .send()
            .unwrap(),
    );
    assert_eq!((status, c.as_str()), (401, "host_unknown"));
    let lost = client(&ctl.ca_pem(), Some((&_lost.0, &_lost.1))).unwrap();
    assert_eq!(poll(&lost), 401);
}

/// A fresh install dir: the one line installs, enrolls and starts the agent; running it
/// again changes nothing; the uninstall script removes it.
#[test]
fn the_install_line_installs_enrolls_and_starts_an_agent_and_is_harmless_twice() {
    let ctl = Controller::start(&[]);
    let line = token_json(&ctl, &["--uses", "1"])["install_command"]
        .as_str()
        .unwrap()
        .to_string();
    let root = ctl.dir.path().join("host");
    let run_line = |line: &str| {
        Command::new("sh")
            .args(["-c", line])
            .env("BERTH_INSTALL_DIR", root.join("bin"))
            .env("BERTH_AGENT_DATA_DIR", root.join("data"))
            .env("BERTH_NAME", "i1")
            .env("BERTH_SKIP_SYSTEMD", "1")
            .output()
            .unwrap()
    };
    let out = run_line(&line);
    assert!(out.status.success(), "{}", stderr(&out));
    let pid_file = root.join("data/agent.pid");
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_string();
    let _guard = KillOnDrop(pid.clone());
    wait_for("i1 ready", Duration::from_secs(30), || {
        (hosts(&ctl)
            .iter()
            .any(|h| h["name"] == "i1" && h["state"] == "Ready"))
        .then_some(())
    });
    // The binary is the one the controller serves, byte for byte.
    assert_eq!(
        std::fs::read(root.join("bin/berth-agent")).unwrap(),
        std::fs::read(agent_bin()).unwrap()
    );
    // Twice: the token is used up, but nothing needs it; same process keeps running.
    let out = run_line(&line);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("already installed"), "{err}");
    assert!(err.contains("already enrolled"), "{err}");
    assert!(err.contains(&format!("already runs (pid {pid})")), "{err}");
    // The uninstall script stops and removes it.
    let out = Command::new(root.join("bin/berth-agent-uninstall.sh"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!root.join("bin/berth-agent").exists());
    assert!(!root.join("data").exists());
    assert!(!root.join("bin/berth-agent-uninstall.sh").exists());
    wait_for("agent stopped", Duration::from_secs(10), || {
        (!Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    });
}

struct KillOnDrop(String);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(&self.0).status();
    }
}

/// The same line pointed at another controller (same address, other CA) stops before it
/// downloads anything and installs nothing.
#[test]
fn the_install_line_refuses_a_controller_with_another_ca() {
    let mut first = Controller::start(&[]);
    let line = token_json(&first, &[])["install_command"]
        .as_str()
        .unwrap()
        .to_string();
    let port = first.port;
    first.stop();
    // Another controller (fresh data dir, so another CA) at the same address.
    let mut other = Controller::start(&[]);
    other.stop();
    other.port = port;
    other.extra_args.clear();
    other.spawn().unwrap();
    assert_ne!(first.ca_pem(), other.ca_pem());

    let root = other.dir.path().join("host");
    let out = Command::new("sh")
        .args(["-c", &line])
        .env("BERTH_INSTALL_DIR", root.join("bin"))
        .env("BERTH_AGENT_DATA_DIR", root.join("data"))
        .env("BERTH_SKIP_SYSTEMD", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("certificate") || err.contains("SSL"),
        "curl names the TLS failure: {err}"
    );
    assert!(!root.exists(), "nothing was installed");
    assert!(hosts(&other).is_empty());
}

/// Agent binaries: only ELF executables for the named architecture, only by an admin;
/// an architecture nothing is served for is a clear 404.
#[test]
fn agent_binaries_are_checked_and_served_by_digest() {
    let ctl = Controller::start(&[]);
    let bin = ctl.dir.path().join("fake");
    std::fs::write(&bin, "#!/bin/sh\necho not an agent\n").unwrap();
    let add = |file: &Path, arch: &str| {
        ctl.cli(&[
            "agent-binary",
            "add",
            file.to_str().unwrap(),
            "--arch",
            arch,
        ])
    };
    let out = add(&bin, "x86_64");
    assert!(
        stderr(&out).contains("not an ELF executable (arch_mismatch)"),
        "{}",
        stderr(&out)
    );
    // Any small x86_64 executable stands in for an agent here (the checks read the ELF
    // header; uploading the 100+ MiB debug agent would only slow the test down).
    let small_elf = Path::new("/usr/bin/true");
    let out = add(small_elf, "aarch64");
    assert!(
        stderr(&out).contains("the executable is for x86_64, not aarch64 (arch_mismatch)"),
        "{}",
        stderr(&out)
    );
    let out = add(small_elf, "sparc64");
    assert!(
        stderr(&out).contains("arch `sparc64` is not one of x86_64, aarch64"),
        "{}",
        stderr(&out)
    );

    let api = ctl.api_client().unwrap();
    let get = |path: &str| api.get(format!("{}{path}", ctl.url())).send().unwrap();
    let (status, c) = code(get("/v1/install/berth-agent/linux/aarch64/sha256"));
    assert_eq!((status, c.as_str()), (404, "no_agent_binary"));
    // The bundled agent is served (imported in the background at start).
    let digest = wait_for("bundled agent served", Duration::from_secs(30), || {
        let r = get("/v1/install/berth-agent/linux/x86_64/sha256");
        (r.status() == 200).then(|| r.text().unwrap().trim().to_string())
    });
    let served = get("/v1/install/berth-agent/linux/x86_64").bytes().unwrap();
    use sha2::Digest as _;
    assert_eq!(hex::encode(sha2::Sha256::digest(&served)), digest);

    // Only an admin adds; a viewer lists.
    let viewer = stdout(&ctl.cli(&["api-token", "create", "--name", "v", "--role", "viewer"]));
    let listed = api
        .get(format!("{}/v1/agent-binaries", ctl.url()))
        .bearer_auth(viewer.trim())
        .send()
        .unwrap();
    assert_eq!(listed.status(), 200);
    let put = api
        .put(format!("{}/v1/agent-binaries/linux/x86_64", ctl.url()))
        .bearer_auth(viewer.trim())
        .body(std::fs::read(small_elf).unwrap())
        .send()
        .unwrap();
    assert_eq!(code(put), (403, "forbidden".into()));
    // An admin's add replaces the bundled one, also after a restart (which imports the
    // bundled one again but never over an added one).
    let out = add(small_elf, "x86_64");
    assert!(out.status.success(), "{}", stderr(&out));
    let small = hex::encode(sha2::Sha256::digest(std::fs::read(small_elf).unwrap()));
    let mut ctl = ctl;
    ctl.stop();
    ctl.spawn().unwrap();
    let list: Vec<Value> =
        serde_json::from_slice(&ctl.cli(&["agent-binary", "list", "-o", "json"]).stdout).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["source"], "added");
    assert_eq!(list[0]["digest"], format!("sha256:{small}"));
    assert_ne!(small, digest);
}

/// The agent is a static executable: nothing for the dynamic loader to resolve.
#[test]
fn the_agent_is_a_static_executable() {
    let out = Command::new("ldd").arg(agent_bin()).output().unwrap();
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        text.contains("not a dynamic executable") || text.contains("statically linked"),
        "ldd berth-agent: {text}"
    );
}

/// Two agents on one data dir would run every step twice: the second refuses to start.
#[test]
fn a_second_agent_on_the_same_data_dir_refuses_to_start() {
    let ctl = Controller::start(&[]);
    let _agents = ctl.agents(&["d1"]);
    std::thread::sleep(Duration::from_millis(500));
    let out = agent_run_command(&ctl.agent_dir("d1")).output().unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("another berth-agent runs with the data dir"),
        "{}",
        stderr(&out)
    );
}

/// A controller restored from a backup older than a host's last renewal accepts that
/// host's newer certificate (same CA, same name, issued later) once and records it; the
/// certificate on record before is refused from then on.
#[test]
#[cfg_attr(
    berth_postgres,
    ignore = "berth backup of a PostgreSQL store is refused (PostgreSQL's tools back it up): tested by a_postgres_backup_is_refused_naming_the_tools"
)]
fn a_restore_from_before_a_renewal_keeps_the_host() {
    let mut ctl = Controller::start(&["--agent-cert-ttl", "30s"]);
    let _agents = ctl.agents(&["w1"]);
    let before = ctl.agent_client("w1");
    let backup = ctl.dir.path().join("b.tar");
    let out = ctl.cli(&["backup", "-o", backup.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = ctl.dir.path().join("controller.log");
    wait_for("w1 renewed", Duration::from_secs(60), || {
        std::fs::read_to_string(&log)
            .ok()?
            .contains("agent certificate renewed host=w1")
            .then_some(())
    });
    ctl.restart_restored_from(&backup);
    wait_for(
        "w1 polls the restored controller",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(&log)
                .ok()?
                .contains("accepted a newer certificate than the one on record")
                .then_some(())
        },
    );
    assert_eq!(host(&ctl, "w1")["state"], "Ready");
    // The certificate the backup knew is no longer the host's.
    let refused = before
        .post(format!("{}/v1/agent/poll", ctl.url()))
        .json(&serde_json::json!({"wait_secs": 0, "have_generation": 0}))
        .send();
    match refused {
        Ok(r) => assert_eq!(r.status(), 401),
        Err(e) => assert!(format!("{e:?}").contains("xpired"), "{e:?}"),
    }
}
