//! Moving things between controllers: `bundle save`/`load` (sneakernet into an air gap)
//! and `backup`/`restore` (a new controller the old agents keep talking to).
#![allow(clippy::unwrap_used)]

use berth_tests::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

fn bundles(ctl: &Controller) -> Vec<(String, Vec<String>)> {
    let out = ctl.cli(&["bundle", "list", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let mut all: Vec<(String, Vec<String>)> = v
        .iter()
        .map(|b| {
            let mut tags: Vec<String> = b["tags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_string())
                .collect();
            tags.sort();
            (b["digest"].as_str().unwrap().to_string(), tags)
        })
        .collect();
    all.sort();
    all
}

#[test]
fn bundles_saved_on_one_controller_load_on_another_with_digests_and_tags() {
    let a = Controller::start(&[]);
    a.push_examples();
    let dir = a.dir.path();
    let file = dir.join("bundles.tar");
    let out = a.cli(&[
        "bundle",
        "save",
        "hello:v1",
        "hello-app:v1",
        "-o",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    let b = Controller::start(&[]);
    // A damaged copy is refused whole: nothing is uploaded or tagged.
    let mut bytes = std::fs::read(&file).unwrap();
    // The first blob's data: after the index entry (a 512-byte header, data padded to 512)
    // and the blob's own header. The size field is octal at offset 124 of a header.
    let size_of = |header: &[u8]| {
        let field = String::from_utf8_lossy(&header[124..136]).to_string();
        u64::from_str_radix(field.trim_matches(|c: char| c == '\0' || c == ' '), 8).unwrap()
            as usize
    };
    let second = 512 + size_of(&bytes[..512]).div_ceil(512) * 512;
    bytes[second + 512 + 100] ^= 0xff;
    let damaged = dir.join("damaged.tar");
    std::fs::write(&damaged, bytes).unwrap();
    let out = b.cli(&["bundle", "load", damaged.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("is refused; nothing was loaded"), "{err}");
    assert!(
        err.contains("corrupt or was altered") || err.contains("bytes"),
        "{err}"
    );
    assert!(bundles(&b).is_empty());
    // A file that is not an archive at all.
    let out = b.cli(&["bundle", "load", "/etc/hostname"]);
    assert!(!out.status.success());
    assert!(bundles(&b).is_empty());

    let out = b.cli(&["bundle", "load", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(bundles(&b), bundles(&a));
    assert_eq!(bundles(&b).len(), 2);
    // Loading again changes nothing.
    let out = b.cli(&["bundle", "load", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(bundles(&b), bundles(&a));
}

#[test]
#[cfg_attr(
    berth_postgres,
    ignore = "berth backup of a PostgreSQL store is refused (PostgreSQL's tools back it up): tested by a_postgres_backup_is_refused_naming_the_tools"
)]
fn a_backup_taken_during_an_apply_restores_a_controller_the_agents_keep_using() {
    let mut ctl = Controller::start(&[]);
    let _agents = ctl.agents(&["b1", "b2"]);
    ctl.push_examples();
    let mk = ctl.dir.path().join("marks");
    std::fs::create_dir_all(&mk).unwrap();
    let env = [
        format!("HELLO_MARKS={}", mk.display()),
        "HELLO_INSTALL_SECONDS=4".to_string(),
    ];
    let cf = ctl.clusterfile(
        "kept",
        &["b1"],
        &["b2"],
        &["hello:v1", "hello-app:v1"],
        &env,
    );
    let out = ctl.cli(&["apply", "-f", cf.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for("an install step running", Duration::from_secs(60), || {
        let st = ctl.status("kept");
        st["steps"]
            .as_array()?
            .iter()
            .any(|s| s["kind"] == "install" && s["state"] == "running")
            .then_some(())
    });

    let file = ctl.dir.path().join("backup.tar");
    let out = ctl.cli(&["backup", "-o", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The old controller goes on until both installs succeeded (results that are not in
    // the backup), then is gone.
    wait_for(
        "installs done on the old controller",
        Duration::from_secs(60),
        || {
            let st = ctl.status("kept");
            st["steps"]
                .as_array()?
                .iter()
                .filter(|s| s["kind"] == "install")
                .all(|s| s["state"] == "succeeded")
                .then_some(())
        },
    );
    let hosts_before = stdout(&ctl.cli(&["get", "hosts", "-o", "json"]));
    ctl.stop();

    // Restoring into a directory with something in it changes nothing.
    let busy = ctl.dir.path().join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("keep"), "x").unwrap();
    let restore = |dir: &std::path::Path| {
        std::process::Command::new(berth_bin())
            .arg("--data-dir")
            .arg(dir)
            .args(["restore", file.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let out = restore(&busy);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("is not empty"), "{}", stderr(&out));
    assert_eq!(std::fs::read_dir(&busy).unwrap().count(), 1);

    let restored = ctl.dir.path().join("restored");
    let out = restore(&restored);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("restored 2 hosts, 1 clusters and 2 bundles"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::metadata(restored.join("pki/ca.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    // The restored controller at the old address: same CA, same hosts, same cluster; the
    // agents (never told anything) finish the apply against it.
    ctl.data_dir = restored;
    ctl.spawn().unwrap();
    let names = |json: &str| {
        let v: Vec<Value> = serde_json::from_str(json).unwrap();
        v.iter()
            .map(|h| h["name"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(&stdout(&ctl.cli(&["get", "hosts", "-o", "json"]))),
        names(&hosts_before)
    );
    let out = ctl.cli(&["status", "kept", "--watch"]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(ctl.status("kept")["phase"], "Running");
    // The install results the backup lacked came again from the agents' journals.
    let resent = ["b1", "b2"]
        .iter()
        .filter(|h| {
            std::fs::read_to_string(ctl.dir.path().join(format!("agent-{h}.log")))
                .unwrap_or_default()
                .contains("sending its result again")
        })
        .count();
    assert!(
        resent > 0,
        "no agent re-sent a result the restored controller lacked"
    );
    for h in ["b1", "b2"] {
        let m = marks(&mk, h);
        assert_eq!(
            m.iter().filter(|l| l.starts_with("install")).count(),
            1,
            "{h} installed exactly once: {m:?}"
        );
    }
}
