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
