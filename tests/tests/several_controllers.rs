//! Several controllers on one PostgreSQL database and one S3-compatible server, behind
//! haproxy, serving four agents — every part a real process in a network namespace of its
//! own (PostgreSQL through its Unix socket). The controller holding a cluster is killed
//! with SIGKILL in the middle of its apply: the other takes the cluster over within
//! seconds and it reaches Running with every hook run once and every report kept. Images
//! loaded and agent executables added through one controller are served by the other. A
//! plan issued on one controller reaches an agent long-polling the other (median of 20).
//!
//! Runs when BERTH_E2E=1 (root), BERTH_TEST_PG and BERTH_TEST_S3 are set at build time
//! (`.ci/run`'s PostgreSQL run), with `BERTH_TEST_MOTO` naming moto's `moto_server` (the
//! S3 server is started inside a namespace, where the agents' and controllers' traffic
//! stays) and haproxy installed; otherwise it is reported as ignored.
#![allow(clippy::unwrap_used)]

use berth_tests::netns::{self, Fleet};
use berth_tests::oci;
use berth_tests::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

const S3_PORT: u16 = 5000;
const LEASE_TTL_SECS: u64 = 3;

fn ns_command(ns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]);
    c
}

fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `berth get controllers -o json` as `ctl` answers it.
fn controllers(ctl: &Controller) -> Vec<Value> {
    let out = ctl.cli(&["get", "controllers", "-o", "json"]);
    assert!(out.status.success(), "get controllers: {}", stderr(&out));
    serde_json::from_slice::<Value>(&out.stdout)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap()
}

/// The name of the live controller holding `cluster`, as `ctl` sees it.
fn holder(ctl: &Controller, cluster: &str) -> Option<String> {
    controllers(ctl).into_iter().find_map(|c| {
        let holds = c["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n == cluster);
        (holds && c["live"] == true).then(|| c["name"].as_str().unwrap().to_string())
    })
}

/// A rootfs bundle whose install, init and join-node hooks each take a second and append
/// `<host> <hook>` to `$MARKS`.
fn slow_bundle(dir: &Path) -> std::path::PathBuf {
    let mark = |hook: &str| {
        format!(
            "echo {hook} running\nsleep 1\necho \"$BERTH_HOST {hook} $(date +%s%N)\" >> \"$MARKS\""
        )
    };
    hook_bundle(
        dir,
        "slow",
        &[
            ("install", &mark("install")),
            ("init", &mark("init")),
            ("join-node", &mark("join-node")),
        ],
        "",
    )
}

#[test]
#[cfg_attr(
    not(all(berth_e2e, berth_postgres, berth_s3)),
    ignore = "needs BERTH_E2E=1 (root: network namespaces), BERTH_TEST_PG and BERTH_TEST_S3 (with BERTH_TEST_MOTO and haproxy)"
)]
fn two_controllers_behind_haproxy_take_over_a_cluster_mid_apply_and_deliver_each_others_plans() {
    netns::require();
    let moto = std::env::var("BERTH_TEST_MOTO").expect(
        "BERTH_TEST_MOTO must name moto's moto_server (pip install 'moto[server]'); .ci/run sets it",
    );
    assert!(
        Command::new("haproxy").arg("-v").output().is_ok(),
        "haproxy is needed (apt-get install haproxy); .ci/run installs it"
    );
    let db = TestDb::create().expect("BERTH_TEST_PG is set");
    let mut fleet = Fleet::new();
    let (ns1, ip1) = fleet.host("ctl1");
    let (ns2, ip2) = fleet.host("ctl2");
    let (lbns, lbip) = fleet.host("lb");
    let (s3ns, s3ip) = fleet.host("s3");
    let work = tempfile::tempdir().unwrap();

    // The S3-compatible server, in its namespace, with the bucket both controllers use.
    let _s3 = Proc::spawn(
        "moto",
        {
            let mut c = ns_command(&s3ns, &moto);
            c.args(["-H", &s3ip, "-p", &S3_PORT.to_string()]);
            c
        },
        work.path().join("moto.log"),
    );
    let s3_url = format!("http://{s3ip}:{S3_PORT}");
    wait_for("moto answers", Duration::from_secs(30), || {
        let out = ns_command(&s3ns, "curl")
            .args(["-fsS", "-X", "PUT", &format!("{s3_url}/berth")])
            .output()
            .unwrap();
        out.status.success().then_some(())
    });

    // Two controllers on one database and bucket; the second gets the first's PKI.
    let blob_store = format!("s3://berth?endpoint={s3_url}");
    let controller = |ns: &str, ip: &str, name: &str| {
        let mut c = Controller::prepare_in(
            ns,
            ip,
            &[
                "--san",
                &lbip,
                "--blob-store",
                &blob_store,
                "--lease-ttl",
                &format!("{LEASE_TTL_SECS}s"),
                "--controller-name",
                name,
                "--poll-hold",
                "10s",
            ],
            Some(db.clone()),
        );
        c.env = vec![
            ("AWS_ACCESS_KEY_ID".into(), "berth-test".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "berth-test".into()),
            ("RUST_LOG".into(), "info".into()),
        ];
        c
    };
    let mut c1 = controller(&ns1, &ip1, "ctl-1");
    c1.spawn().unwrap();
    let mut c2 = controller(&ns2, &ip2, "ctl-2");
    std::fs::create_dir_all(&c2.data_dir).unwrap();
    std::fs::set_permissions(
        &c2.data_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let cp = Command::new("cp")
        .arg("-a")
        .arg(c1.data_dir.join("pki"))
        .arg(&c2.data_dir)
        .status()
        .unwrap();
    assert!(cp.success());
    c2.spawn().unwrap();
    wait_for("both controllers live", Duration::from_secs(15), || {
        let live = controllers(&c1)
            .iter()
            .filter(|c| c["live"] == true)
            .count();
        (live == 2).then_some(())
    });

    // A controller with its own PKI is refused by the database the others serve.
    let mut rogue = controller(&ns1, &ip1, "rogue");
    rogue.port = 7444;
    let (code, log) = rogue.run_serve_once(Duration::from_secs(30));
    assert_ne!(code, Some(0), "{log}");
    assert!(
        log.contains("serves this database with another PKI") && log.contains("pki"),
        "{log}"
    );

    // haproxy in front (TCP: TLS and client certificates go through to the controllers).
    let cfg = work.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 2000\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 120s\n  timeout server 120s\n  retries 3\n  option redispatch\nfrontend berth\n  bind {lbip}:7443\n  default_backend controllers\nbackend controllers\n  balance roundrobin\n  default-server inter 300ms fall 2 rise 1 on-marked-down shutdown-sessions\n  server ctl1 {ip1}:7443 check\n  server ctl2 {ip2}:7443 check\n"
        ),
    )
    .unwrap();
    let _lb = Proc::spawn(
        "haproxy",
        {
            let mut c = ns_command(&lbns, "haproxy");
            c.arg("-db").arg("-f").arg(&cfg);
            c
        },
        work.path().join("haproxy.log"),
    );
    let lb_url = format!("https://{lbip}:7443");
    wait_for("haproxy listens", Duration::from_secs(15), || {
        Fleet::can_connect(&ns1, &lbip, 7443).then_some(())
    });

    // Four agents, enrolled and served through the load balancer.
    let (token, hash) = c1.create_token(4, "1h");
    let names = ["h1", "h2", "h3", "h4"];
    let mut hosts = Vec::new();
    let mut agents = Vec::new();
    for name in names {
        let (ns, _addr) = fleet.host(name);
        let data = c1.agent_dir(name);
        let out = Fleet::agent_command(
            &ns,
            name,
            &agent_bin(),
            &[
                "join",
                "--controller",
                &lb_url,
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
        agents.push(Proc::spawn(
            &format!("agent {name}"),
            Fleet::agent_command(
                &ns,
                name,
                &agent_bin(),
                &["run", "--poll-wait", "2s", "--backoff-max", "1s"],
                &data,
            ),
            work.path().join(format!("agent-{name}.log")),
        ));
        hosts.push(ns);
    }

    // A cluster whose apply takes a few seconds: install everywhere, init, join-node.
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    push_dir(&c1, &slow_bundle(&src), "slow:v1");
    assert!(
        c1.blob_hexes().is_empty(),
        "the bundle went to the bucket, not the data dir"
    );
    let marks = work.path().join("marks");
    let cf = c1.clusterfile(
        "slow",
        &["h1"],
        &["h2", "h3", "h4"],
        &["slow:v1"],
        &[format!("MARKS={}", marks.display())],
    );
    let out = c1.cli(&["apply", "-f", cf.to_str().unwrap()]);
    assert!(out.status.success(), "apply: {}", stderr(&out));

    // Mid-apply (the first hooks are running), kill the controller holding the cluster.
    wait_for("the first hooks run", Duration::from_secs(60), || {
        let st = c1.status("slow");
        st["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["state"] == "running")
            .then_some(())
    });
    let id = c1.agent_dir("h4").join("identity");
    let held_by = holder(&c1, "slow").expect("someone holds the cluster");
    let (dead, survivor) = if held_by == "ctl-1" {
        (&mut c1, &mut c2)
    } else {
        (&mut c2, &mut c1)
    };
    dead.proc.as_mut().unwrap().kill9();
    let killed = Instant::now();
    let took_over = wait_for(
        "the survivor holds the cluster",
        Duration::from_secs(30),
        || {
            holder(survivor, "slow")
                .filter(|h| h != &held_by)
                .map(|_| killed.elapsed())
        },
    );
    eprintln!("took over {took_over:?} after SIGKILL (lease time {LEASE_TTL_SECS}s)");
    assert!(
        took_over < Duration::from_secs(LEASE_TTL_SECS + 4),
        "takeover took {took_over:?}"
    );
    let st = wait_for("Running", Duration::from_secs(120), || {
        let st = survivor.status("slow");
        (st["phase"] == "Running").then_some(st)
    });

    // Every hook ran once on each host, and every step's result arrived.
    let lines = std::fs::read_to_string(&marks).unwrap();
    let count = |host: &str, hook: &str| {
        lines
            .lines()
            .filter(|l| l.starts_with(&format!("{host} {hook} ")))
            .count()
    };
    for h in names {
        assert_eq!(count(h, "install"), 1, "install on {h}:\n{lines}");
    }
    assert_eq!(count("h1", "init"), 1, "{lines}");
    for h in ["h2", "h3", "h4"] {
        assert_eq!(count(h, "join-node"), 1, "join-node on {h}:\n{lines}");
    }
    assert_eq!(lines.lines().count(), 8, "{lines}");
    for s in st["steps"].as_array().unwrap() {
        assert_eq!(s["state"], "succeeded", "{s}");
        assert_eq!(s["attempt"], 1, "{s}");
    }
    assert_eq!(
        db.psql("SELECT COUNT(*) FROM events WHERE kind = 'step' AND message LIKE '% succeeded%'"),
        st["steps"].as_array().unwrap().len().to_string(),
        "one success recorded per step"
    );
    let members = controllers(survivor);
    let gone: Vec<&Value> = members.iter().filter(|c| c["live"] == false).collect();
    assert_eq!(gone.len(), 1, "{members:?}");
    assert_eq!(gone[0]["name"], held_by.as_str());
    assert_eq!(gone[0]["clusters"], serde_json::json!([]));

    // The killed controller comes back (a new member); then plans issued on one reach an
    // agent long-polling the other.
    dead.spawn().unwrap();
    wait_for("both live again", Duration::from_secs(15), || {
        let live = controllers(survivor)
            .iter()
            .filter(|c| c["live"] == true)
            .count();
        (live == 2).then_some(())
    });
    let (issuer, poller) = (&*dead, &*survivor);
    let ca = work.path().join("ca.crt");
    std::fs::write(&ca, issuer.ca_pem()).unwrap();

    // An image loaded and an agent executable added through one controller are served by
    // the other (from the bucket, digest-checked, kept on its disk).
    let archive = work.path().join("busy.tar");
    oci::write_tar(
        &archive,
        &oci::docker_archive(&[oci::Image {
            name: Some("tools/busy:1.0".into()),
            config: serde_json::json!({"Cmd": ["/busy"]}),
            layers: vec![(
                oci::layer(&[oci::Entry::File("busy", b"busy", 0o755)]),
                oci::Zip::Gzip,
            )],
        }]),
    );
    let out = issuer.cli(&["image", "load", archive.to_str().unwrap()]);
    assert!(out.status.success(), "image load: {}", stderr(&out));
    let get = |ctl: &Controller, path: &str, accept: &str| {
        let out = ctl
            .in_ns(Path::new("curl"))
            .args(["-fsS", "--max-time", "20", "--cacert"])
            .arg(&ca)
            .args(["-H", &format!("accept: {accept}")])
            .arg(format!("{}{path}", ctl.url()))
            .output()
            .unwrap();
        assert!(out.status.success(), "GET {path}: {}", stderr(&out));
        out.stdout
    };
    let manifest: Value = serde_json::from_slice(&get(
        poller,
        "/v2/tools/busy/manifests/1.0",
        "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json",
    ))
    .unwrap();
    for d in [
        &manifest["config"]["digest"],
        &manifest["layers"][0]["digest"],
    ] {
        let d = d.as_str().unwrap();
        let blob = get(poller, &format!("/v2/tools/busy/blobs/{d}"), "*/*");
        assert_eq!(oci::sha(&blob), d, "the other controller serves the blob");
    }
    let mut agent = std::fs::read(agent_bin()).unwrap();
    agent.extend_from_slice(b"\0added through one controller");
    let added = work.path().join("berth-agent-added");
    std::fs::write(&added, &agent).unwrap();
    let out = issuer.cli(&[
        "agent-binary",
        "add",
        added.to_str().unwrap(),
        "--arch",
        "x86_64",
    ]);
    assert!(out.status.success(), "agent-binary add: {}", stderr(&out));
    let served = get(poller, "/v1/install/berth-agent/linux/x86_64", "*/*");
    assert_eq!(
        oci::sha(&served),
        oci::sha(&agent),
        "the other controller serves the added agent"
    );

    let probe = "h4";
    let probe_ns = &hosts[3];
    let admin = issuer.admin_token();
    let mut from_commit = Vec::new();
    let mut from_request = Vec::new();
    for i in 0..20 {
        let have: u64 = db
            .psql(&format!(
                "SELECT plan_generation FROM hosts WHERE name = '{probe}'"
            ))
            .parse()
            .unwrap();
        // The probe's long-poll on the poller, as the host (its client certificate).
        let poll = ns_command(probe_ns, "curl")
            .args(["-sS", "--max-time", "20", "--cacert"])
            .arg(&ca)
            .arg("--cert")
            .arg(id.join("agent.crt"))
            .arg("--key")
            .arg(id.join("agent.key"))
            .args([
                "-H",
                "content-type: application/json",
                "-d",
                &format!("{{\"have_generation\": {have}, \"wait_secs\": 15}}"),
                &format!("{}/v1/agent/poll", poller.url()),
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let sent = wall_ms();
        let out = issuer
            .in_ns(Path::new("curl"))
            .args(["-fsS", "--max-time", "20", "--cacert"])
            .arg(&ca)
            .args([
                "-H",
                &format!("authorization: Bearer {admin}"),
                "-H",
                "content-type: application/json",
                "-d",
                &format!(
                    "{{\"hosts\": [\"{probe}\"], \"timeout_secs\": 30, \"command\": [\"true\"]}}"
                ),
                &format!("{}/v1/exec", issuer.url()),
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "exec: {}", stderr(&out));
        let answer = poll.wait_with_output().unwrap();
        let delivered = wall_ms();
        let body: Value = serde_json::from_slice(&answer.stdout)
            .unwrap_or_else(|e| panic!("poll answer {e}: {}", stdout(&answer)));
        assert!(!body["plan"].is_null(), "poll {i} got no plan: {body}");
        let released: i64 = db
            .psql(&format!(
                "SELECT MAX(at_ms) FROM events WHERE host = '{probe}' AND kind = 'step' AND message = 'exec released'"
            ))
            .parse()
            .unwrap();
        from_commit.push(delivered - released);
        from_request.push(delivered - sent);
        // Its agent runs it and reports, through the load balancer.
        wait_for("the exec succeeded", Duration::from_secs(30), || {
            let n: usize = db
                .psql("SELECT COUNT(*) FROM steps WHERE kind = 'exec' AND state = 'succeeded'")
                .parse()
                .unwrap();
            (n > i).then_some(())
        });
    }
    from_commit.sort_unstable();
    from_request.sort_unstable();
    let median = |v: &[i64]| (v[9] + v[10]) / 2;
    eprintln!(
        "cross-controller plan delivery over 20: from the release's write on one controller to the plan from the other: median {} ms (min {}, max {}); from before the exec request: median {} ms (max {})",
        median(&from_commit),
        from_commit[0],
        from_commit[19],
        median(&from_request),
        from_request[19]
    );
    assert!(
        median(&from_commit) < 100,
        "median delivery {} ms: {from_commit:?}",
        median(&from_commit)
    );
    drop(agents);
}
