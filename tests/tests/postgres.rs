//! The store on PostgreSQL (`berth serve --database-url`, issue 26). The whole suite runs
//! on PostgreSQL when `BERTH_TEST_PG` names a server's socket directory (`.ci/run` does);
//! these are what only that engine has: its start-up errors, the backup it refuses.
#![allow(clippy::unwrap_used)]

use berth_tests::*;
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `berth serve` with `url` as its database until it exits (at most 30 s): the exit
/// code and everything it printed.
fn serve_with_database(url: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(berth_bin())
        .arg("--data-dir")
        .arg(dir.path().join("controller"))
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            let text = format!("{}{}", stdout(&out), stderr(&out));
            return (out.status.code(), text);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    (None, format!("{}{}", stdout(&out), stderr(&out)))
}

/// A database the controller cannot reach stops the start with the URL in the message —
/// without its password — and one that is not a PostgreSQL URL says so.
#[test]
fn a_database_url_that_does_not_work_stops_the_start_and_never_shows_the_password() {
    let (code, text) = serve_with_database("postgres://berth:hunter2@127.0.0.1:1/berth");
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("cannot connect to PostgreSQL at postgres://berth:***@127.0.0.1:1/berth"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "the password leaked: {text}");

    let (code, text) = serve_with_database("mysql://berth:hunter2@127.0.0.1:1/berth");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("is not a PostgreSQL URL"), "{text}");
    assert!(!text.contains("hunter2"), "the password leaked: {text}");
}

/// `berth backup` of a PostgreSQL store is refused with the exact code, names the tools
/// that back it up, writes no file and audits no download.
#[test]
#[cfg_attr(
    not(berth_postgres),
    ignore = "needs PostgreSQL: set BERTH_TEST_PG to a server's socket directory"
)]
fn a_postgres_backup_is_refused_naming_the_tools() {
    let ctl = Controller::start(&[]);
    let db = ctl.database.as_ref().expect("a PostgreSQL controller");
    let file = ctl.dir.path().join("b.tar");
    let out = ctl.cli(&["backup", "-o", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("(backup_by_storage_tools)"), "{err}");
    assert!(err.contains("pg_dump"), "{err}");
    assert!(err.contains("docs/scale-out.md"), "{err}");
    assert!(!file.exists(), "no backup file is left behind");
    assert_eq!(
        db.psql("SELECT COUNT(*) FROM audit_log WHERE action = 'backup.download'"),
        "0"
    );
}

/// The controller's rows are in the database it was given: a cluster applied through
/// the API is a row there, the migrations are PostgreSQL's own, and the data dir holds
/// no SQLite file.
#[test]
#[cfg_attr(
    not(berth_postgres),
    ignore = "needs PostgreSQL: set BERTH_TEST_PG to a server's socket directory"
)]
fn a_postgres_controller_keeps_its_rows_in_postgres() {
    let ctl = Controller::start(&[]);
    let db = ctl.database.as_ref().expect("a PostgreSQL controller");
    let _agents = ctl.agents(&["m0"]);
    ctl.push_examples();
    let cf = ctl.clusterfile("c1", &["m0"], &[], &["hello:v1"], &[]);
    let out = apply_file(&ctl, &cf);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        db.psql("SELECT phase FROM clusters WHERE name = 'c1'"),
        "Running"
    );
    assert_eq!(db.psql("SELECT name FROM hosts"), "m0");
    let migrations = std::fs::read_dir(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../migrations/postgres"
    ))
    .unwrap()
    .count();
    assert_eq!(
        db.psql("SELECT COUNT(*) FROM _sqlx_migrations WHERE success"),
        migrations.to_string(),
        "every PostgreSQL migration, once"
    );
    // The controller is a member of the database and holds the cluster it ticks.
    assert_eq!(db.psql("SELECT COUNT(*) FROM controllers"), "1");
    assert_eq!(
        db.psql("SELECT c.name FROM cluster_leases l JOIN clusters c ON c.id = l.cluster_id JOIN controllers m ON m.id = l.controller_id"),
        "c1"
    );
    assert!(
        db.psql("SELECT COUNT(*) FROM events WHERE cluster = 'c1' AND kind = 'step'")
            .parse::<u32>()
            .unwrap()
            >= 8,
        "the event triggers ran"
    );
    assert!(!ctl.data_dir.join("berth.db").exists());
}

/// Only the lease holder ticks a cluster. While another controller (here a row standing in
/// for one, live and holding the cluster) has the lease, reports still land and are kept,
/// but nothing of the next phases is released by this controller; when the other's lease
/// lapses, this one claims the cluster, ticks it, and the apply finishes with every hook
/// run once.
#[test]
#[cfg_attr(
    not(berth_postgres),
    ignore = "needs PostgreSQL: set BERTH_TEST_PG to a server's socket directory"
)]
fn a_cluster_another_controller_holds_is_not_ticked_here_until_its_lease_lapses() {
    let ctl = Controller::start(&["--lease-ttl", "2s"]);
    let db = ctl.database.clone().expect("a PostgreSQL controller");
    let _agents = ctl.agents(&["m0", "n0"]);
    let src = ctl.dir.path().join("src");
    let marks = ctl.dir.path().join("marks");
    let mark = |hook: &str| format!("sleep 1\necho \"$BERTH_HOST {hook}\" >> \"$MARKS\"");
    let b = hook_bundle(
        &src,
        "slow",
        &[
            ("install", &mark("install")),
            ("init", &mark("init")),
            ("join-node", &mark("join-node")),
        ],
        "",
    );
    push_dir(&ctl, &b, "slow:v1");
    let cf = ctl.clusterfile(
        "c1",
        &["m0"],
        &["n0"],
        &["slow:v1"],
        &[format!("MARKS={}", marks.display())],
    );
    let out = ctl.cli(&["apply", "-f", cf.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Another controller, live, takes the cluster for 12 s.
    let phantom = "0123456789abcdef";
    db.psql(&format!(
        "INSERT INTO controllers (id, name, url, version, ca_hash, plan_key_id, started_ms, seen_ms)
         SELECT '{phantom}', 'phantom', 'https://phantom:7443', version, ca_hash, plan_key_id, berth_now_ms(), berth_now_ms() + 12000
         FROM controllers LIMIT 1"
    ));
    db.psql(&format!(
        "UPDATE cluster_leases SET controller_id = '{phantom}', expires_ms = berth_now_ms() + 12000"
    ));
    let taken = Instant::now();
    let released = || -> usize {
        db.psql("SELECT COUNT(*) FROM steps WHERE state != 'pending'")
            .parse()
            .unwrap()
    };
    // What was released before the lease moved runs and reports; nothing new is released.
    std::thread::sleep(Duration::from_secs(4));
    let at_4s = released();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        released(),
        at_4s,
        "nothing released while another holds the lease"
    );
    assert_ne!(ctl.status("c1")["phase"], "Running");
    let out = ctl.cli(&["get", "controllers", "-o", "json"]);
    let members: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let phantom_row = members
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "phantom")
        .unwrap_or_else(|| panic!("{members}"));
    assert_eq!(phantom_row["clusters"], serde_json::json!(["c1"]));

    // The other's lease lapses: this controller claims c1 and the apply goes on.
    wait_for("Running", Duration::from_secs(60), || {
        (ctl.status("c1")["phase"] == "Running").then_some(())
    });
    assert!(
        taken.elapsed() >= Duration::from_secs(12),
        "not before the lease lapsed"
    );
    let lines = std::fs::read_to_string(&marks).unwrap();
    let mut sorted: Vec<&str> = lines.lines().collect();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        ["m0 init", "m0 install", "n0 install", "n0 join-node"],
        "every hook once"
    );
}
