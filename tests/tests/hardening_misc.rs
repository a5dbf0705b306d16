//! Hardening regressions: enrollment order, database file modes, a relative agent data dir,
//! and `berth run -e` values that are YAML syntax.
#![allow(clippy::unwrap_used)]

use berth_shared::clusterfile::Clusterfile;
use berth_tests::*;
use serde_json::{json, Value};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

/// POSTs an enrollment request with `csr_pem` as given; returns (status, body).
fn enroll_raw(ctl: &Controller, token: &str, name: &str, csr_pem: &str) -> (u16, Value) {
    let resp = ctl
        .api_client()
        .unwrap()
        .post(format!("{}/v1/enroll", ctl.url()))
        .json(&json!({
            "token": token,
            "name": name,
            "csr_pem": csr_pem,
            "facts": berth_shared::api::HostFacts::default(),
        }))
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json::<Value>().unwrap_or(Value::Null))
}

const GARBAGE_CSR: &str =
    "-----BEGIN CERTIFICATE REQUEST-----\nnot a csr\n-----END CERTIFICATE REQUEST-----\n";

#[test]
fn enroll_judges_the_token_before_it_parses_or_signs_the_csr() {
    let ctl = Controller::start(&[]);
    let (token, hash) = ctl.create_token(1, "1h");
    let (id, secret) = token.split_once('.').unwrap();

    // A wrong secret for a real token id, and an unknown id: 401 token_invalid, not the
    // 400 a bad CSR gets, so the CSR was never looked at.
    let wrong_secret = format!("{id}.{}", "0".repeat(secret.len()));
    let unknown_id = format!("{}.{secret}", "z".repeat(id.len()));
    for bad in [&wrong_secret, &unknown_id] {
        let (status, body) = enroll_raw(&ctl, bad, "h1", GARBAGE_CSR);
        assert_eq!(
            (status, body["code"].as_str(), body["message"].as_str()),
            (
                401,
                Some("token_invalid"),
                Some("bootstrap token is not valid")
            ),
            "{bad}: {body}"
        );
    }

    // A valid token with a garbage CSR: 400, and the token's one use is still there.
    let (status, body) = enroll_raw(&ctl, &token, "h1", GARBAGE_CSR);
    assert_eq!(
        (status, body["code"].as_str(), body["message"].as_str()),
        (
            400,
            Some("bad_request"),
            Some("csr_pem is not a valid, self-signed PKCS#10 certificate signing request")
        ),
        "{body}"
    );
    let out = ctl.join("h1", &token, &hash);
    assert!(out.status.success(), "join: {}", stderr(&out));

    // Now used up: an exhausted token is refused before the CSR too.
    let (status, body) = enroll_raw(&ctl, &token, "h2", GARBAGE_CSR);
    assert_eq!(
        (status, body["code"].as_str()),
        (401, Some("token_exhausted")),
        "{body}"
    );
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn assert_db_files_private(data: &Path) {
    for f in ["berth.db", "berth.db-wal", "berth.db-shm"] {
        let p = data.join(f);
        assert_eq!(mode(&p), 0o600, "{} is {:04o}", p.display(), mode(&p));
    }
}

#[test]
#[cfg_attr(
    berth_postgres,
    ignore = "berth.db's file modes: a PostgreSQL store has no database file"
)]
fn database_files_are_not_group_or_world_readable() {
    let mut ctl = Controller::start(&[]);
    // Some work, so the WAL and shared-memory files exist and were written.
    let _agents = ctl.agents(&["a1"]);
    ctl.push_examples();
    ctl.create_token(1, "1h");
    assert_db_files_private(&ctl.data_dir);

    // A database left 0644 by an earlier version is made 0600 at the next start.
    assert_eq!(ctl.stop(), Some(true));
    let db = ctl.data_dir.join("berth.db");
    fs::set_permissions(&db, fs::Permissions::from_mode(0o644)).unwrap();
    ctl.spawn().unwrap();
    ctl.create_token(1, "1h");
    assert_db_files_private(&ctl.data_dir);
}

#[test]
fn an_agent_with_a_relative_data_dir_runs_hooks() {
    let ctl = Controller::start(&[]);
    ctl.push_examples();
    let mk = ctl.dir.path().join("marks");
    fs::create_dir_all(&mk).unwrap();
    let cwd = ctl.dir.path().join("agent-cwd");
    fs::create_dir_all(&cwd).unwrap();

    let (token, hash) = ctl.create_token(1, "1h");
    let out = ctl
        .join_command("rel", &token, &hash, Path::new("agentdata"))
        .current_dir(&cwd)
        .env_remove("BERTH_AGENT_DATA_DIR")
        .output()
        .unwrap();
    assert!(out.status.success(), "join: {}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "identity stored in {}",
            cwd.join("agentdata/identity").display()
        )),
        "{}",
        stderr(&out)
    );
    let mut cmd = agent_run_command(Path::new("agentdata"));
    cmd.current_dir(&cwd).env_remove("BERTH_AGENT_DATA_DIR");
    let _agent = Proc::spawn("agent rel", cmd, ctl.dir.path().join("agent-rel.log"));

    let env = vec![format!("HELLO_MARKS={}", mk.display())];
    let cf = ctl.clusterfile("rel", &["rel"], &[], &["hello:v1", "hello-app:v1"], &env);
    let out = ctl.cli(&["apply", "-f", cf.to_str().unwrap(), "--wait"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(ctl.status("rel")["phase"], "Running");
    let m = marks(&mk, "rel");
    for hook in ["check", "install", "init", "app"] {
        assert!(m.contains(&hook.to_string()), "{hook}: {m:?}");
    }
    assert!(cwd.join("agentdata/clusters/rel/rootfs").is_dir());
}

#[test]
fn berth_run_env_values_with_quotes_colons_and_newlines_reach_the_hosts_unchanged() {
    let ctl = Controller::start(&[]);
    let _agents = ctl.agents(&["m0"]);
    let mk = ctl.dir.path().join("marks");
    fs::create_dir_all(&mk).unwrap();
    let hello = repo_root().join("examples/hello");
    let greeting = r#"va"lue: #x"#;
    let hostile = "  - a: 'b' #c\n\"q\" {x: [y]} ü ✓\n\n";
    let out = ctl.cli(&[
        "run",
        hello.to_str().unwrap(),
        "--masters",
        "m0",
        "--cluster",
        "quoted",
        "-e",
        &format!("GREETING={greeting}"),
        "-e",
        &format!("HOSTILE={hostile}"),
        "-e",
        &format!("HELLO_MARKS={}", mk.display()),
    ]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert!(
        stdout(&out).contains("cluster quoted: Running"),
        "{}",
        stdout(&out)
    );

    // The Clusterfile the controller stored (as the agent received it) holds the values.
    let text = fs::read_to_string(ctl.agent_dir("m0").join("clusters/quoted/Clusterfile")).unwrap();
    let cf = Clusterfile::parse(&text).unwrap();
    assert_eq!(cf.env["GREETING"], greeting, "{text}");
    assert_eq!(cf.env["HOSTILE"], hostile, "{text}");
    // And the hook saw the exact greeting (hello.conf is rendered from it).
    let log = wait_for("install log", Duration::from_secs(10), || {
        let o = ctl.cli(&["logs", "quoted", "--host", "m0", "--step", "install"]);
        o.status.success().then(|| stdout(&o))
    });
    assert!(
        log.contains(&format!(
            "installed on m0: {greeting} from m0 (master), master0 m0"
        )),
        "{log}"
    );
}

/// More connections than the open-files limit allows: the controller stops accepting at
/// its limit minus a reserve (the rest wait in the listen queue) instead of running out of
/// file descriptors, and serves again once they close.
#[test]
fn connections_beyond_the_open_files_limit_wait_and_never_starve_the_controller() {
    let ctl = Controller::start_with_nofile(600, &[]);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", ctl.port).parse().unwrap();
    // 600 − 512 reserved = 88 accepted; the next ones queue in the kernel's backlog and
    // the rest wait in SYN retries (without the limit the controller would accept until
    // it ran out of descriptors, at ~590).
    let connects: Vec<_> = (0..650)
        .map(|_| {
            std::thread::spawn(move || {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok()
            })
        })
        .collect();
    let idle: Vec<std::net::TcpStream> = connects
        .into_iter()
        .filter_map(|t| t.join().unwrap())
        .collect();
    assert!(idle.len() > 100, "only {} connections opened", idle.len());
    let log = wait_for(
        "the connection limit (or running out of descriptors)",
        Duration::from_secs(10),
        || {
            let log = ctl.proc.as_ref().unwrap().log_text();
            (log.contains("connection limit reached") || log.contains("Too many open files"))
                .then_some(log)
        },
    );
    assert!(
        !log.contains("Too many open files"),
        "the controller ran out of file descriptors:\n{log}"
    );
    drop(idle);
    // Accepted sockets end at the TLS handshake timeout (or when their peer closed).
    let out = wait_for(
        "the controller to serve again",
        Duration::from_secs(30),
        || {
            let o = ctl.cli(&["get", "hosts", "-o", "json"]);
            o.status.success().then_some(o)
        },
    );
    assert_eq!(stdout(&out).trim(), "[]");
    let log = ctl.proc.as_ref().unwrap().log_text();
    assert!(
        !log.contains("Too many open files"),
        "the controller ran out of file descriptors:\n{log}"
    );
}
