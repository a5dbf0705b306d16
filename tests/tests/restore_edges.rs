//! `berth restore` at its edges (issue 22, finding 8): a file that is not a backup, a
//! backup whose database is not one, and a restore stopped by SIGTERM or killed by
//! SIGKILL — each says what happened, names no internal path, and leaves no staging dir
//! (which holds a copy of the CA key) behind, at once or by the next restore or start.
#![allow(clippy::unwrap_used)]

use berth_tests::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn staging_dirs(parent: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(parent)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(".berth-restore-")
        })
        .map(|e| e.path())
        .collect()
}

fn restore_cmd(file: &Path, into: &Path) -> Command {
    let mut c = Command::new(berth_bin());
    c.arg("restore").arg(file).arg("--data-dir").arg(into);
    c
}

/// A backup of a running controller, written to `<dir>/backup.tar`.
fn backup_of(ctl: &Controller) -> PathBuf {
    let file = ctl.dir.path().join("backup.tar");
    let out = ctl.cli(&["backup", "-o", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    file
}

/// The backup with its database replaced by `db` (and the manifest's digest of it
/// updated, so only the database itself is wrong), backup.json first as berth writes it.
fn with_database(backup: &Path, db: &[u8], out: &Path) {
    let stage = out.with_extension("stage");
    std::fs::create_dir_all(&stage).unwrap();
    let o = Command::new("tar")
        .arg("-xf")
        .arg(backup)
        .arg("-C")
        .arg(&stage)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::write(stage.join("berth.db"), db).unwrap();
    use sha2::Digest as _;
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(stage.join("backup.json")).unwrap()).unwrap();
    m["database"] = format!("sha256:{}", hex::encode(sha2::Sha256::digest(db))).into();
    std::fs::write(stage.join("backup.json"), m.to_string()).unwrap();
    let mut names = vec!["backup.json".to_string()];
    let list = Command::new("tar").arg("-tf").arg(backup).output().unwrap();
    names.extend(
        stdout(&list)
            .lines()
            .filter(|l| *l != "backup.json")
            .map(str::to_string),
    );
    let o = Command::new("tar")
        .args(["--format=ustar", "-cf"])
        .arg(out)
        .arg("-C")
        .arg(&stage)
        .args(&names)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
#[cfg_attr(
    berth_postgres,
    ignore = "berth backup of a PostgreSQL store is refused (PostgreSQL's tools back it up): tested by a_postgres_backup_is_refused_naming_the_tools"
)]
fn a_file_that_is_not_a_backup_or_holds_no_database_restores_nothing_and_says_why() {
    let ctl = Controller::start(&[]);
    let backup = backup_of(&ctl);
    let dir = ctl.dir.path();
    let into = dir.join("restored");

    // Not a tar archive at all.
    let junk = dir.join("junk.bin");
    std::fs::write(&junk, vec![0x5a; 3000]).unwrap();
    let out = restore_cmd(&junk, &into).output().unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "{} is refused; nothing was restored: {} is not a tar archive: its first block is not a tar header; a backup is written by `berth backup -o FILE`",
            junk.display(),
            junk.display()
        )),
        "{err}"
    );
    assert!(!err.contains("numeric field"), "{err}");

    // A backup whose database is not an SQLite database.
    let bad = dir.join("not-sqlite.tar");
    with_database(&backup, b"this is not a database at all, just text\n", &bad);
    let out = restore_cmd(&bad, &into).output().unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(
            "is refused; nothing was restored: `berth.db` in the backup is not an SQLite database"
        ),
        "{err}"
    );

    // One that starts like SQLite and is not: opening it fails, and the message names
    // the backup's database, not a staging path.
    let mut fake = b"SQLite format 3\0".to_vec();
    fake.extend(std::iter::repeat_n(0xEE, 8192));
    let bad = dir.join("broken-sqlite.tar");
    with_database(&backup, &fake, &bad);
    let out = restore_cmd(&bad, &into).output().unwrap();
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("is refused; nothing was restored: its database cannot be opened"),
        "{err}"
    );
    assert!(!err.contains(".berth-restore-"), "{err}");

    assert!(!into.exists());
    assert_eq!(staging_dirs(dir), Vec::<PathBuf>::new());
}

/// A restore reading from a FIFO that goes quiet mid-way is stopped: by SIGTERM it
/// removes its staging dir and says so; by SIGKILL it cannot, and the next restore
/// removes it (and a controller start does too).
#[test]
#[cfg_attr(
    berth_postgres,
    ignore = "berth backup of a PostgreSQL store is refused (PostgreSQL's tools back it up): tested by a_postgres_backup_is_refused_naming_the_tools"
)]
fn an_interrupted_restore_leaves_no_copy_of_the_ca_key_behind() {
    let ctl = Controller::start(&[]);
    let backup = backup_of(&ctl);
    let bytes = std::fs::read(&backup).unwrap();
    let parent = ctl.dir.path().join("restores");
    std::fs::create_dir_all(&parent).unwrap();

    for signal in ["TERM", "KILL"] {
        let fifo = ctl.dir.path().join(format!("backup-{signal}.fifo"));
        let o = Command::new("mkfifo").arg(&fifo).output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let into = parent.join(format!("restored-{signal}"));
        let mut child = restore_cmd(&fifo, &into)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        // All but the end: the PKI (with the CA key) is written by then, and the restore
        // waits for the rest.
        w.write_all(&bytes[..bytes.len() - 1536]).unwrap();
        let staged = wait_for(
            "a staging dir with the CA key",
            Duration::from_secs(30),
            || {
                if let Ok(Some(st)) = child.try_wait() {
                    let mut e = String::new();
                    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut e).unwrap();
                    panic!("the restore exited ({st}): {e}");
                }
                staging_dirs(&parent)
                    .into_iter()
                    .find(|d| d.join("pki/ca.key").exists())
            },
        );
        let o = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .output()
            .unwrap();
        assert!(o.status.success());
        let out = child.wait_with_output().unwrap();
        drop(w);
        let err = stderr(&out);
        if signal == "TERM" {
            assert_eq!(out.status.code(), Some(143), "{err}");
            assert!(
                err.contains(
                    "interrupted by SIGTERM; nothing was restored (the partial copy was removed)"
                ),
                "{err}"
            );
            assert_eq!(staging_dirs(&parent), Vec::<PathBuf>::new());
        } else {
            assert!(staged.exists(), "SIGKILL leaves it");
        }
        assert!(!into.exists());
    }

    // The next restore beside it removes what the killed one left, and restores.
    assert_eq!(staging_dirs(&parent).len(), 1);
    let into = parent.join("restored");
    let out = restore_cmd(&backup, &into).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(staging_dirs(&parent), Vec::<PathBuf>::new());
    assert!(into.join("pki/ca.key").exists());

    // A controller starting beside a killed restore's leftovers removes them too.
    let leftover = parent.join(".berth-restore-999999999-abcdef");
    std::fs::create_dir_all(leftover.join("pki")).unwrap();
    std::fs::write(leftover.join("pki/ca.key"), "secret").unwrap();
    let mut c = Command::new(berth_bin());
    c.arg("serve")
        .arg("--data-dir")
        .arg(parent.join("fresh"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port())]);
    let mut p = Proc::spawn("controller", c, ctl.dir.path().join("fresh.log"));
    wait_for("leftover removed at start", Duration::from_secs(30), || {
        (!leftover.exists()).then_some(())
    });
    p.terminate(Duration::from_secs(20));
}
