//! `berth bundle load` is all or nothing (issue 22, finding 5, and the non-tar message
//! of finding 8): an archive one of whose bundles the target refuses (too large, not a
//! bundle at all) uploads nothing; a tag the target has on another digest is not moved
//! without `--force`; a file that is not a tar archive is named for what it is.
#![allow(clippy::unwrap_used)]

use berth_tests::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

fn bundles(ctl: &Controller) -> Value {
    let out = ctl.cli(&["bundle", "list", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn digest_of(ctl: &Controller, reference: &str) -> String {
    let out = ctl.cli(&["bundle", "inspect", reference, "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["digest"].as_str().unwrap().to_string()
}

/// A controller with a small bundle (`small:v1`) and one of ~20 KB (`large:v1`), saved
/// in that order into `file`.
fn source_archive(file: &Path) -> Controller {
    let a = Controller::start(&[]);
    for (name, size) in [("small", 10), ("large", 20_000)] {
        let d = a.dir.path().join(name);
        write_bundle(&d, name, "v1", size);
        push_dir(&a, &d, &format!("{name}:v1"));
    }
    let out = a.cli(&[
        "bundle",
        "save",
        "small:v1",
        "large:v1",
        "-o",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    a
}

/// The target takes bundles of at most 4 KiB: the archive's second is larger, so the
/// load is refused before the first is uploaded.
#[test]
fn a_bundle_the_target_refuses_means_none_is_uploaded() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bundles.tar");
    let _a = source_archive(&file);
    let b = Controller::start(&["--max-bundle-size", "4K"]);
    let out = b.cli(&["bundle", "load", file.to_str().unwrap()]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("is refused; nothing was loaded"), "{err}");
    assert!(
        err.contains("the controller accepts bundles up to 4096 bytes (its --max-bundle-size)"),
        "{err}"
    );
    assert_eq!(bundles(&b), json!([]));
}

/// A blob whose digest matches its index entry but which is no bundle: refused by the
/// local check, before the valid bundle ahead of it is uploaded.
#[test]
fn a_blob_that_is_not_a_bundle_means_none_is_uploaded() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bundles.tar");
    let a = source_archive(&file);
    let small = a.dir.path().join("small.tar.zst");
    let out = a.cli(&[
        "bundle",
        "build",
        a.dir.path().join("small").to_str().unwrap(),
        "-o",
        small.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let good = std::fs::read(&small).unwrap();
    let bad = b"#!/bin/sh\necho I am not a bundle\n".to_vec();
    use sha2::Digest as _;
    let hex = |b: &[u8]| hex::encode(sha2::Sha256::digest(b));
    let stage = dir.path().join("stage");
    std::fs::create_dir_all(stage.join("blobs/sha256")).unwrap();
    let index = json!({"format": "berth-bundles/v1", "bundles": [
        {"digest": format!("sha256:{}", hex(&good)), "size": good.len(), "name": "small", "version": "v1", "tags": ["small:v1"]},
        {"digest": format!("sha256:{}", hex(&bad)), "size": bad.len(), "name": "evil", "version": "v1", "tags": ["evil:v1"]},
    ]});
    std::fs::write(stage.join("berth-bundles.json"), index.to_string()).unwrap();
    std::fs::write(stage.join(format!("blobs/sha256/{}", hex(&good))), &good).unwrap();
    std::fs::write(stage.join(format!("blobs/sha256/{}", hex(&bad))), &bad).unwrap();
    let crafted = dir.path().join("crafted.tar");
    let out = Command::new("tar")
        .args(["--format=ustar", "-cf"])
        .arg(&crafted)
        .arg("-C")
        .arg(&stage)
        .arg("berth-bundles.json")
        .arg(format!("blobs/sha256/{}", hex(&good)))
        .arg(format!("blobs/sha256/{}", hex(&bad)))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    let b = Controller::start(&[]);
    let out = b.cli(&["bundle", "load", crafted.to_str().unwrap()]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "`blobs/sha256/{}` is not a bundle the controller accepts",
            hex(&bad)
        )),
        "{err}"
    );
    assert_eq!(bundles(&b), json!([]));
}

/// A tag the target has on another digest: refused, naming both digests; nothing is
/// uploaded. With `--force` it moves, and says so.
#[test]
fn a_tag_on_another_digest_moves_only_with_force() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bundles.tar");
    let a = source_archive(&file);
    let b = Controller::start(&[]);
    let other = b.dir.path().join("other-small");
    write_bundle(&other, "small", "v1", 11);
    push_dir(&b, &other, "small:v1");
    let theirs = digest_of(&b, "small:v1");
    let ours = digest_of(&a, "small:v1");
    assert_ne!(theirs, ours);

    let out = b.cli(&["bundle", "load", file.to_str().unwrap()]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "would move tags the controller has: small:v1 is {theirs} there, {ours} in the archive; nothing was loaded (pass --force to move them)"
        )),
        "{err}"
    );
    assert_eq!(bundles(&b).as_array().unwrap().len(), 1);
    assert_eq!(digest_of(&b, "small:v1"), theirs);

    let out = b.cli(&["bundle", "load", file.to_str().unwrap(), "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("1 tag(s) moved"), "{}", stderr(&out));
    assert_eq!(digest_of(&b, "small:v1"), ours);
    assert_eq!(digest_of(&b, "large:v1"), digest_of(&a, "large:v1"));
}

/// A file that is not a tar archive is named for what it is, not by the tar parser's
/// complaint about a numeric field.
#[test]
fn a_file_that_is_not_an_archive_is_named_for_what_it_is() {
    let b = Controller::start(&[]);
    let dir = b.dir.path();
    let junk = dir.join("junk.bin");
    let bytes: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&junk, bytes).unwrap();
    let bundle = dir.join("one");
    write_bundle(&bundle, "one", "v1", 10);
    let zst = dir.join("one.tar.zst");
    let out = b.cli(&[
        "bundle",
        "build",
        bundle.to_str().unwrap(),
        "-o",
        zst.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    for (file, what) in [
        (&junk, "its first block is not a tar header"),
        (
            &zst,
            "it is zstd-compressed data (a single bundle? push it with `berth bundle push FILE`)",
        ),
    ] {
        let out = b.cli(&["bundle", "load", file.to_str().unwrap()]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{err}");
        assert!(
            err.contains(&format!("{} is not a tar archive: {what}; a bundle archive is written by `berth bundle save`", file.display())),
            "{err}"
        );
        assert!(!err.contains("numeric field"), "{err}");
    }
    assert_eq!(bundles(&b), json!([]));
}
