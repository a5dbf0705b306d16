//! Foundation: controller PKI and restart, enrollment over mutual TLS, host lifecycle,
//! API authentication. Real binaries as processes, real TLS, real SQLite.
#![allow(clippy::unwrap_used)] // tests fail loudly by design

use berth_tests::*;
use serde_json::Value;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

fn json(resp: reqwest::blocking::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let body = resp.json::<Value>().unwrap_or(Value::Null);
    (status, body)
}

fn poll(
    client: &reqwest::blocking::Client,
    ctl: &Controller,
) -> reqwest::Result<reqwest::blocking::Response> {
    client
        .post(format!("{}/v1/agent/poll", ctl.url()))
        .json(&serde_json::json!({ "wait_secs": 0 }))
        .send()
}

fn enrolled(ctl: &Controller, names: &[&str]) {
    let (token, hash) = ctl.create_token(names.len() as u32, "1h");
    for n in names {
        let out = ctl.join(n, &token, &hash);
        assert!(out.status.success(), "join {n}: {}", stderr(&out));
    }
}

#[test]
fn controller_restart_reuses_ca_keys_and_token() {
    let mut ctl = Controller::start(&[]);
    let pki = ctl.data_dir.join("pki");
    let read = |f: &str| fs::read(pki.join(f)).unwrap();
    let before: Vec<Vec<u8>> = [
        "ca.crt",
        "ca.key",
        "plan-signing.key",
        "admin.token",
        "server.crt",
        "server.key",
    ]
    .iter()
    .map(|f| read(f))
    .collect();
    for secret in ["ca.key", "plan-signing.key", "admin.token", "server.key"] {
        let mode = fs::metadata(pki.join(secret)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{secret} must be 0600");
    }
    let hash1 = ctl
        .api_client()
        .unwrap()
        .get(format!("{}/v1/healthz", ctl.url()))
        .send()
        .unwrap();
    let hash1 = json(hash1).1["ca_hash"].clone();

    // Graceful stop on SIGTERM exits 0 and says so.
    assert_eq!(
        ctl.stop(),
        Some(true),
        "SIGTERM must stop the controller cleanly"
    );
    ctl.spawn().unwrap();
    let after: Vec<Vec<u8>> = [
        "ca.crt",
        "ca.key",
        "plan-signing.key",
        "admin.token",
        "server.crt",
        "server.key",
    ]
    .iter()
    .map(|f| read(f))
    .collect();
    assert_eq!(before, after, "a restart must not regenerate any PKI file");
    let hash2 = json(
        ctl.api_client()
            .unwrap()
            .get(format!("{}/v1/healthz", ctl.url()))
            .send()
            .unwrap(),
    )
    .1["ca_hash"]
        .clone();
    assert_eq!(hash1, hash2);
    // The admin token from the first start still works.
    let out = ctl.cli(&["get", "hosts", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let log = ctl.proc.as_ref().unwrap().log_text();
    assert!(
        log.contains("controller stopped"),
        "graceful shutdown must be logged:\n{log}"
    );
}

#[test]
fn three_agents_enroll_with_a_three_use_token_and_a_fourth_is_refused() {
    let ctl = Controller::start(&[]);
    let (token, hash) = ctl.create_token(3, "1h");
    for n in ["a1", "a2", "a3"] {
        let out = ctl.join(n, &token, &hash);
        assert!(out.status.success(), "join {n}: {}", stderr(&out));
        let key = ctl.agent_dir(n).join("identity/agent.key");
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let out = ctl.join("a4", &token, &hash);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("enrollment refused: bootstrap token")
            && stderr(&out).contains("has no uses left"),
        "{}",
        stderr(&out)
    );
    assert!(
        !ctl.agent_dir("a4").join("identity").exists(),
        "a refused join writes no identity"
    );

    let mut agents: Vec<Proc> = ["a1", "a2", "a3"]
        .iter()
        .map(|n| ctl.run_agent(n))
        .collect();
    for a in &agents {
        wait_for("agent connected", Duration::from_secs(20), || {
            a.log_text()
                .contains("connected to controller")
                .then_some(())
        });
    }
    let out = ctl.cli(&["get", "hosts", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let hosts: Value = serde_json::from_slice(&out.stdout).unwrap();
    let hosts = hosts.as_array().unwrap();
    assert_eq!(
        hosts
            .iter()
            .map(|h| h["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["a1", "a2", "a3"]
    );
    for h in hosts {
        assert_eq!(h["state"], "Ready", "{h}");
        assert_eq!(h["arch"], std::env::consts::ARCH);
        assert_eq!(h["agent_version"], env!("CARGO_PKG_VERSION"));
        let f = &h["facts"];
        assert!(f["cpus"].as_u64().unwrap() >= 1, "{f}");
        assert!(f["memory_bytes"].as_u64().unwrap() > 0, "{f}");
        assert!(!f["kernel"].as_str().unwrap().is_empty());
        assert!(!f["os"].as_str().unwrap().is_empty());
        assert!(!f["hostname"].as_str().unwrap().is_empty());
    }
    // The table names the same hosts.
    let table = stdout(&ctl.cli(&["get", "hosts"]));
    assert!(
        table.lines().next().unwrap().contains("NAME") && table.contains("a3"),
        "{table}"
    );
    for a in &mut agents {
        assert_eq!(
            a.terminate(Duration::from_secs(10)),
            Some(true),
            "agent stops cleanly on SIGTERM"
        );
    }
}

#[test]
fn an_expired_token_is_refused() {
    let ctl = Controller::start(&[]);
    let (token, hash) = ctl.create_token(5, "1s");
    std::thread::sleep(Duration::from_millis(2100));
    let out = ctl.join("late", &token, &hash);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("expired at"), "{}", stderr(&out));
    assert!(stderr(&out).contains("(token_expired)"), "{}", stderr(&out));
    assert!(!ctl.agent_dir("late").exists());
}

#[test]
fn a_wrong_ca_hash_stops_the_join_and_writes_nothing() {
    let ctl = Controller::start(&[]);
    let (token, hash) = ctl.create_token(1, "1h");
    let wrong = format!("sha256:{}", "0".repeat(64));
    assert_ne!(hash, wrong);
    let out = ctl.join("victim", &token, &wrong);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "the controller's CA has hash {hash}, but --ca-hash is {wrong}; refusing to trust it"
        )),
        "{err}"
    );
    assert!(!ctl.agent_dir("victim").exists(), "nothing may be written");
    // The token was not spent: the right hash still joins.
    let out = ctl.join("victim", &token, &hash);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn join_rejects_malformed_arguments_before_any_network_call() {
    let ctl = Controller::start(&[]);
    let (token, hash) = ctl.create_token(1, "1h");
    let out = ctl.join("ok", "not-a-token", &hash);
    assert!(
        stderr(&out).contains("--token: bootstrap token is malformed"),
        "{}",
        stderr(&out)
    );
    let out = ctl.join("ok", &token, "md5:abc");
    assert!(
        stderr(&out).contains("--ca-hash: digest `md5:abc` must start with `sha256:`"),
        "{}",
        stderr(&out)
    );
    let out = ctl.join("Bad_Name", &token, &hash);
    assert!(
        stderr(&out).contains("host name `Bad_Name` is not valid"),
        "{}",
        stderr(&out)
    );
    assert!(!ctl.agent_dir("ok").exists());
}

#[test]
fn agent_calls_need_a_client_certificate_from_our_ca() {
    let ctl = Controller::start(&[]);
    enrolled(&ctl, &["good"]);
    // Positive control: the real agent certificate is accepted.
    let (status, body) = json(poll(&ctl.agent_client("good"), &ctl).unwrap());
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["host"], "good");

    // No client certificate: 401 with a clear code.
    let (status, body) = json(poll(&ctl.api_client().unwrap(), &ctl).unwrap());
    assert_eq!(status, 401);
    assert_eq!(body["code"], "client_certificate_required");

    // A certificate from another CA: the TLS handshake itself fails.
    let other_ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other_ca = rcgen::CertifiedIssuer::self_signed(ca_params, other_ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "good");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let forged = params.signed_by(&key, &other_ca).unwrap();
    let c = client(&ctl.ca_pem(), Some((&forged.pem(), &key.serialize_pem()))).unwrap();
    let err = poll(&c, &ctl).expect_err("a foreign client certificate must be rejected");
    assert!(err.is_connect() || err.is_request(), "{err:?}");
}

#[test]
fn revoke_and_delete_cut_an_agent_off_and_keep_its_identity() {
    let ctl = Controller::start(&[]);
    enrolled(&ctl, &["h1"]);
    let agent = ctl.run_agent("h1");
    wait_for("agent connected", Duration::from_secs(20), || {
        agent
            .log_text()
            .contains("connected to controller")
            .then_some(())
    });

    // Same name again (another data dir) is refused while h1 exists.
    let (token, hash) = ctl.create_token(2, "1h");
    let out = std::process::Command::new(agent_bin())
        .args([
            "join",
            "--controller",
            &ctl.url(),
            "--token",
            &token,
            "--ca-hash",
            &hash,
            "--name",
            "h1",
            "--data-dir",
        ])
        .arg(ctl.agent_dir("h1-impostor"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out)
            .contains("a host named `h1` is already enrolled; to give it a new identity create a token with `berth token create --reenroll h1`"),
        "{}",
        stderr(&out)
    );
    assert!(!ctl.agent_dir("h1-impostor").exists());

    let out = ctl.cli(&["host", "revoke", "h1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (status, body) = json(poll(&ctl.agent_client("h1"), &ctl).unwrap());
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("host_revoked")),
        "{body}"
    );
    wait_for("agent sees the rejection", Duration::from_secs(20), || {
        agent
            .log_text()
            .contains("controller rejected this agent")
            .then_some(())
    });
    assert!(
        ctl.agent_dir("h1").join("identity/agent.key").exists(),
        "a rejection never deletes the identity"
    );
    let hosts: Value =
        serde_json::from_slice(&ctl.cli(&["get", "hosts", "-o", "json"]).stdout).unwrap();
    assert_eq!(hosts[0]["state"], "Revoked");

    let out = ctl.cli(&["host", "delete", "h1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (status, body) = json(poll(&ctl.agent_client("h1"), &ctl).unwrap());
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("host_unknown")),
        "{body}"
    );
    let out = ctl.cli(&["host", "delete", "h1"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no host named `h1`"),
        "{}",
        stderr(&out)
    );

    // After the delete, the name can enroll again.
    let out = std::process::Command::new(agent_bin())
        .args([
            "join",
            "--controller",
            &ctl.url(),
            "--token",
            &token,
            "--ca-hash",
            &hash,
            "--name",
            "h1",
            "--data-dir",
        ])
        .arg(ctl.agent_dir("h1-new"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn api_calls_without_a_valid_token_get_401_with_a_json_error() {
    let ctl = Controller::start(&[]);
    let c = ctl.api_client().unwrap();
    let (status, body) = json(c.get(format!("{}/v1/hosts", ctl.url())).send().unwrap());
    assert_eq!(status, 401);
    assert_eq!(body["code"], "unauthenticated");
    assert_eq!(
        body["message"],
        "missing `Authorization: Bearer <token>` header"
    );
    let (status, body) = json(
        c.get(format!("{}/v1/hosts", ctl.url()))
            .bearer_auth("berth_admin_nope")
            .send()
            .unwrap(),
    );
    assert_eq!(
        (status, body["message"].as_str()),
        (401, Some("API token is unknown or revoked"))
    );
    let (status, _) = json(
        c.get(format!("{}/v1/hosts", ctl.url()))
            .bearer_auth(ctl.admin_token())
            .send()
            .unwrap(),
    );
    assert_eq!(status, 200);
    let (status, body) = json(
        c.post(format!("{}/v1/tokens", ctl.url()))
            .bearer_auth(ctl.admin_token())
            .header("content-type", "application/json")
            .body("{\"ttl_secs\": 0, \"uses\": 1}")
            .send()
            .unwrap(),
    );
    assert_eq!(
        (status, body["message"].as_str()),
        (
            400,
            Some("ttl_secs must be between 1 and 31536000 (365 days), got 0")
        )
    );
    let (status, body) = json(
        c.post(format!("{}/v1/tokens", ctl.url()))
            .bearer_auth(ctl.admin_token())
            .header("content-type", "application/json")
            .body("{\"ttl_secs\": 10, \"uses\": 1, \"surprise\": true}")
            .send()
            .unwrap(),
    );
    assert_eq!(status, 422);
    assert_eq!(body["code"], "bad_request");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `surprise`"),
        "{body}"
    );

    // The CLI prints one clear line and exits non-zero.
    let out = ctl.cli(&["--token", "berth_admin_nope", "get", "hosts"]);
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out).trim(),
        "error: API token is unknown or revoked (unauthenticated); check --token / BERTH_TOKEN"
    );
    // And says what to do when it cannot find a controller at all.
    let out = std::process::Command::new(berth_bin())
        .args(["--data-dir", "/nonexistent/berth", "get", "hosts"])
        .env_remove("BERTH_SERVER")
        .output()
        .unwrap();
    assert!(
        stderr(&out).starts_with("error: no controller URL: pass --server or set BERTH_SERVER"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_group_readable_secret_stops_the_controller_from_starting() {
    let mut ctl = Controller::start(&[]);
    assert_eq!(ctl.stop(), Some(true));
    let key = ctl.data_dir.join("pki/ca.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o640)).unwrap();
    let (code, log) = ctl.run_serve_once(Duration::from_secs(20));
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains(&format!(
            "secret file {} has mode 0640, which lets other users read it; run `chmod 600 {}` and start again",
            key.display(),
            key.display()
        )),
        "{log}"
    );
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    ctl.spawn().unwrap();
}

#[test]
fn hosts_go_not_ready_when_heartbeats_stop() {
    let ctl = Controller::start(&["--host-grace", "3s"]);
    enrolled(&ctl, &["n1"]);
    let mut agent = ctl.run_agent("n1");
    wait_for("agent connected", Duration::from_secs(20), || {
        agent
            .log_text()
            .contains("connected to controller")
            .then_some(())
    });
    let state = |ctl: &Controller| -> String {
        let v: Value =
            serde_json::from_slice(&ctl.cli(&["get", "hosts", "-o", "json"]).stdout).unwrap();
        v[0]["state"].as_str().unwrap().to_string()
    };
    assert_eq!(state(&ctl), "Ready");
    agent.kill9();
    wait_for("NotReady", Duration::from_secs(20), || {
        (state(&ctl) == "NotReady").then_some(())
    });
}

#[test]
fn the_agent_survives_a_controller_outage_and_reconnects() {
    let mut ctl = Controller::start(&[]);
    enrolled(&ctl, &["s1"]);
    let agent = ctl.run_agent("s1");
    wait_for("agent connected", Duration::from_secs(20), || {
        agent
            .log_text()
            .contains("connected to controller")
            .then_some(())
    });
    assert_eq!(ctl.stop(), Some(true));
    wait_for("agent notices", Duration::from_secs(20), || {
        agent
            .log_text()
            .contains("controller unreachable")
            .then_some(())
    });
    ctl.spawn().unwrap();
    wait_for("agent reconnects", Duration::from_secs(30), || {
        (agent.log_text().matches("connected to controller").count() >= 2).then_some(())
    });
    assert!(ctl.agent_dir("s1").join("identity/agent.key").exists());
}

#[test]
fn an_overloaded_controller_answers_503_with_retry_after_and_agents_back_off() {
    let ctl = Controller::start(&["--max-polls", "1", "--poll-hold", "10s"]);
    enrolled(&ctl, &["p1", "p2"]);
    // p1's agent holds the only poll slot.
    let a1 = ctl.run_agent("p1");
    std::thread::sleep(Duration::from_millis(1500));
    let resp = ctl
        .agent_client("p2")
        .post(format!("{}/v1/agent/poll", ctl.url()))
        .json(&serde_json::json!({ "wait_secs": 1 }))
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(resp.headers().get("retry-after").unwrap(), "5");
    let a2 = ctl.run_agent("p2");
    wait_for("agent backs off", Duration::from_secs(20), || {
        a2.log_text()
            .contains("controller is overloaded; backing off as asked")
            .then_some(())
    });
    drop(a1);
}

#[test]
fn api_token_roles_limit_what_a_caller_may_do() {
    let ctl = Controller::start(&[]);
    let viewer = stdout(&ctl.cli(&[
        "api-token",
        "create",
        "--name",
        "dashboard",
        "--role",
        "viewer",
    ]))
    .trim()
    .to_string();
    assert!(viewer.starts_with("berth_viewer_"), "{viewer}");
    let as_viewer = |args: &[&str]| {
        let mut a = vec!["--token", viewer.as_str()];
        a.extend_from_slice(args);
        ctl.cli(&a)
    };
    assert!(
        as_viewer(&["get", "hosts"]).status.success(),
        "viewers read"
    );
    let out = as_viewer(&["token", "create"]);
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out).trim(),
        "error: token `dashboard` has role viewer; this needs operator or higher (forbidden)"
    );
    let out = as_viewer(&["api-token", "create", "--name", "x", "--role", "admin"]);
    assert!(
        stderr(&out).contains("this needs admin or higher (forbidden)"),
        "{}",
        stderr(&out)
    );
    let out = ctl.cli(&["api-token", "create", "--name", "ci", "--role", "root"]);
    assert_eq!(
        stderr(&out).trim(),
        "error: role `root` is not one of admin, operator, viewer (bad_request)"
    );
    let op = stdout(&ctl.cli(&["api-token", "create", "--name", "ci", "--role", "operator"]))
        .trim()
        .to_string();
    let out = ctl.cli(&["--token", &op, "token", "create"]);
    assert!(
        out.status.success(),
        "operators create bootstrap tokens: {}",
        stderr(&out)
    );
}

/// On either engine the controller is a member of its database: `berth get controllers`
/// names it (marked as the one answering), live, with the clusters it ticks; a lease time
/// below a second is refused before anything starts; and a second controller with a PKI
/// of its own is refused by a database another controller serves.
#[test]
fn get_controllers_names_this_controller_and_the_clusters_it_ticks() {
    let mut ctl = Controller::start(&["--controller-name", "ctl-a"]);
    let _agents = ctl.agents(&["m0"]);
    ctl.push_examples();
    let cf = ctl.clusterfile("c1", &["m0"], &[], &["hello:v1"], &[]);
    let out = apply_file(&ctl, &cf);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ctl.cli(&["get", "controllers", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let all: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
    let me = &all[0];
    assert_eq!(me["name"], "ctl-a");
    assert_eq!(me["live"], true);
    assert_eq!(me["this"], true);
    assert_eq!(me["clusters"], serde_json::json!(["c1"]));
    assert_eq!(me["url"], ctl.url());
    assert!(
        me["ca_hash"].as_str().unwrap().starts_with("sha256:"),
        "{me}"
    );
    let table = stdout(&ctl.cli(&["get", "controllers"]));
    let row = table.lines().nth(1).unwrap_or_default().trim();
    assert!(
        row.starts_with("ctl-a *") && row.contains("live") && row.ends_with("c1"),
        "{table}"
    );

    // A graceful stop leaves the list; the next start is a new member holding c1 again.
    assert_eq!(ctl.stop(), Some(true));
    ctl.extra_args = vec!["--lease-ttl".into(), "500ms".into()];
    let (code, log) = ctl.run_serve_once(Duration::from_secs(20));
    assert!(matches!(code, Some(c) if c != 0), "{code:?} {log}");
    assert!(log.contains("--lease-ttl must be at least 1s"), "{log}");
    ctl.extra_args = vec!["--controller-name".into(), "ctl-b".into()];
    ctl.spawn().unwrap();
    let all: Vec<Value> =
        serde_json::from_slice(&ctl.cli(&["get", "controllers", "-o", "json"]).stdout).unwrap();
    assert_eq!(all.len(), 1, "the stopped one left: {all:?}");
    assert_eq!(all[0]["name"], "ctl-b");
    wait_for("ctl-b holds c1", Duration::from_secs(10), || {
        let all: Vec<Value> =
            serde_json::from_slice(&ctl.cli(&["get", "controllers", "-o", "json"]).stdout).unwrap();
        (all[0]["clusters"] == serde_json::json!(["c1"])).then_some(())
    });

    // Another PKI on the same database: refused, and nothing it would have written is.
    let Some(db) = ctl.database.clone() else {
        return; // SQLite: one controller per data dir, nothing to share.
    };
    let admin_hash = db.psql("SELECT secret_hash FROM api_tokens WHERE id = 'admin'");
    let mut other = Controller::prepare(&[], Some(db.clone()));
    let (code, log) = other.run_serve_once(Duration::from_secs(30));
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("controller ctl-b (")
            && log.contains("serves this database with another PKI (CA sha256:"),
        "{log}"
    );
    assert_eq!(
        db.psql("SELECT secret_hash FROM api_tokens WHERE id = 'admin'"),
        admin_hash,
        "the admin token is the first PKI's"
    );
    assert_eq!(db.psql("SELECT COUNT(*) FROM controllers"), "1");
    other.proc = None;
}
