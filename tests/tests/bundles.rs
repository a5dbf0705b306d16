//! Bundles end to end: build, push, store, tag, serve, fetch (resumable, verified), unpack.
#![allow(clippy::unwrap_used)]

use berth_tests::*;
use serde_json::Value;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn json_out(o: &std::process::Output) -> Value {
    assert!(o.status.success(), "{}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn blob_files(ctl: &Controller) -> Vec<String> {
    ctl.blob_hexes()
}

fn tmp_files(ctl: &Controller) -> usize {
    fs::read_dir(ctl.data_dir.join("blobs/tmp"))
        .unwrap()
        .count()
}

#[test]
fn build_push_tag_list_inspect_and_remove() {
    let ctl = Controller::start(&[]);
    let dir = ctl.dir.path().join("src");
    write_bundle(&dir, "demo", "v1", 200_000);
    let out1 = ctl.dir.path().join("a.tar.zst");
    let b1 = json_out(&ctl.cli(&[
        "bundle",
        "build",
        dir.to_str().unwrap(),
        "-o",
        out1.to_str().unwrap(),
        "--format",
        "json",
    ]));
    let b2 = stdout(&ctl.cli(&[
        "bundle",
        "build",
        dir.to_str().unwrap(),
        "-o",
        ctl.dir.path().join("b.tar.zst").to_str().unwrap(),
    ]));
    assert_eq!(
        b1["digest"].as_str().unwrap(),
        b2.trim(),
        "same directory, same digest"
    );
    let digest = b1["digest"].as_str().unwrap().to_string();

    let p = json_out(&ctl.cli(&[
        "bundle",
        "push",
        dir.to_str().unwrap(),
        "--tag",
        "demo:v1",
        "-o",
        "json",
    ]));
    assert_eq!(p["digest"], digest.as_str());
    assert_eq!(p["created"], true);
    assert_eq!(
        blob_files(&ctl),
        vec![digest.trim_start_matches("sha256:").to_string()]
    );
    let again = ctl.cli(&[
        "bundle",
        "push",
        out1.to_str().unwrap(),
        "--tag",
        "demo:stable",
    ]);
    assert_eq!(
        stdout(&again).trim(),
        format!("already stored {digest} as demo:stable")
    );

    // A new version moves the tag, and says so.
    fs::write(dir.join("bin/extra"), "v2").unwrap();
    let moved = ctl.cli(&[
        "bundle",
        "push",
        dir.to_str().unwrap(),
        "--tag",
        "demo:stable",
    ]);
    assert!(moved.status.success(), "{}", stderr(&moved));
    assert!(
        stdout(&moved).contains(&format!("as demo:stable (moved from {digest})")),
        "{}",
        stdout(&moved)
    );

    let list = json_out(&ctl.cli(&["bundle", "list", "-o", "json"]));
    assert_eq!(list.as_array().unwrap().len(), 2);
    let v1 = list
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["digest"] == digest.as_str())
        .unwrap();
    assert_eq!(v1["tags"], serde_json::json!(["demo:v1"]));
    let inspect = json_out(&ctl.cli(&["bundle", "inspect", "demo:v1", "-o", "json"]));
    assert_eq!(
        inspect["manifest"]["hooks"]["install"],
        "scripts/install.sh"
    );
    assert_eq!(inspect["size"], b1["size"]);

    let miss = ctl.cli(&["bundle", "inspect", "demo:nope"]);
    assert_eq!(
        stderr(&miss).trim(),
        "error: no bundle `demo:nope`; see `berth bundle list` (not_found)"
    );

    assert!(ctl.cli(&["bundle", "rm", "demo:v1"]).status.success());
    let gone = json_out(&ctl.cli(&["bundle", "inspect", &digest, "-o", "json"]));
    assert_eq!(gone["tags"], serde_json::json!([]));
    assert!(ctl.cli(&["bundle", "rm", &digest]).status.success());
    assert!(!blob_files(&ctl).contains(&digest.trim_start_matches("sha256:").to_string()));
}

#[test]
fn invalid_or_oversized_uploads_store_nothing() {
    let ctl = Controller::start(&["--max-bundle-size", "100K"]);
    let junk = ctl.dir.path().join("junk.tar.zst");
    fs::write(&junk, vec![7u8; 5000]).unwrap();
    let out = ctl.cli(&["bundle", "push", junk.to_str().unwrap()]);
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out).trim(),
        "error: not a valid bundle: archive: this is not a zstd stream, so not a bundle; a bundle is a zstd-compressed tar starting with bundle.yaml, made by `berth bundle build DIR` (invalid_bundle)"
    );

    let dir = ctl.dir.path().join("big");
    write_bundle(&dir, "big", "v1", 300_000);
    let out = ctl.cli(&["bundle", "push", dir.to_str().unwrap(), "--tag", "big:v1"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("upload exceeds the limit of 102400 bytes (raise it with `berth serve --max-bundle-size`)"),
        "{err}"
    );
    assert!(blob_files(&ctl).is_empty(), "nothing stored");
    assert_eq!(tmp_files(&ctl), 0, "no temp file left behind");
    let list = json_out(&ctl.cli(&["bundle", "list", "-o", "json"]));
    assert_eq!(list, serde_json::json!([]));

    let bad_tag = ctl.cli(&["bundle", "push", junk.to_str().unwrap(), "--tag", "Demo"]);
    assert!(
        stderr(&bad_tag).starts_with("error: --tag: `Demo` is not a bundle reference"),
        "{}",
        stderr(&bad_tag)
    );

    // Uploads need a token.
    let c = ctl.api_client().unwrap();
    let resp = c
        .post(format!("{}/v1/bundles", ctl.url()))
        .body(vec![1u8; 10])
        .send()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}

#[test]
fn blobs_are_served_with_length_etag_and_ranges() {
    let ctl = Controller::start(&[]);
    let dir = ctl.dir.path().join("src");
    write_bundle(&dir, "demo", "v1", 100_000);
    let p = json_out(&ctl.cli(&["bundle", "push", dir.to_str().unwrap(), "-o", "json"]));
    let digest = p["digest"].as_str().unwrap();
    let size = p["size"].as_u64().unwrap();
    let url = format!(
        "{}/v1/blobs/sha256/{}",
        ctl.url(),
        digest.trim_start_matches("sha256:")
    );
    let c = ctl.api_client().unwrap();
    let full = c.get(&url).bearer_auth(ctl.admin_token()).send().unwrap();
    assert_eq!(full.status().as_u16(), 200);
    assert_eq!(full.headers()["etag"], format!("\"{digest}\"").as_str());
    assert_eq!(full.headers()["content-length"], size.to_string().as_str());
    let body = full.bytes().unwrap();
    use sha2::Digest as _;
    assert_eq!(
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&body))),
        digest
    );
    let part = c
        .get(&url)
        .bearer_auth(ctl.admin_token())
        .header("range", "bytes=100-199")
        .send()
        .unwrap();
    assert_eq!(part.status().as_u16(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 100-199/{size}").as_str()
    );
    assert_eq!(&part.bytes().unwrap()[..], &body[100..200]);
    // Neither a token nor a client certificate: refused.
    assert_eq!(c.get(&url).send().unwrap().status().as_u16(), 401);
}

fn enrolled_agent(ctl: &Controller, name: &str, controller_url: &str) -> std::path::PathBuf {
    let (token, hash) = ctl.create_token(1, "1h");
    let dir = ctl.agent_dir(name);
    let out = Command::new(agent_bin())
        .args([
            "join",
            "--controller",
            controller_url,
            "--token",
            &token,
            "--ca-hash",
            &hash,
            "--name",
            name,
            "--data-dir",
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    dir
}

/// A host may download only blobs of steps released to it: apply a one-host cluster with
/// the bundle (the agent is not running, so its check step stays released).
/// `berth bundle push DIR`: the digest.
fn push(ctl: &Controller, dir: &std::path::Path) -> String {
    json_out(&ctl.cli(&["bundle", "push", dir.to_str().unwrap(), "-o", "json"]))["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

fn release_to(ctl: &Controller, host: &str, digest: &str) {
    let cf = ctl.clusterfile(&format!("c-{host}"), &[host], &[], &[digest], &[]);
    let out = ctl.cli(&["apply", "-f", cf.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn agent_fetch(
    data_dir: &std::path::Path,
    digest: &str,
    into: &std::path::Path,
) -> std::process::Output {
    Command::new(agent_bin())
        .args(["fetch", "--digest", digest, "--into"])
        .arg(into)
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "info")
        .output()
        .unwrap()
}

#[test]
fn an_agent_fetches_verifies_and_unpacks_a_bundle() {
    let ctl = Controller::start(&[]);
    let agent = enrolled_agent(&ctl, "f1", &ctl.url());
    let dir = ctl.dir.path().join("src");
    write_bundle(&dir, "demo", "v1", 500_000);
    let digest = push(&ctl, &dir);
    release_to(&ctl, "f1", &digest);
    let into = ctl.dir.path().join("rootfs");
    let out = agent_fetch(&agent, &digest, &into);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        fs::read(into.join("bin/payload")).unwrap(),
        fs::read(dir.join("bin/payload")).unwrap()
    );
    assert_eq!(
        fs::read_link(into.join("bin/payload-link"))
            .unwrap()
            .to_str(),
        Some("payload")
    );
    assert_eq!(
        fs::metadata(into.join("scripts/install.sh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
    // The cache holds exactly the verified blob.
    let cached = agent
        .join("cache/blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    assert!(cached.is_file());
    assert!(
        stderr(&out).contains("blob fetched and verified"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_download_cut_mid_body_resumes_from_the_bytes_on_disk() {
    let ctl = Controller::start(&[]);
    let proxy = CutProxy::start(ctl.port);
    let agent = enrolled_agent(&ctl, "r1", &proxy.url());
    let dir = ctl.dir.path().join("src");
    write_bundle(&dir, "demo", "v1", 3_000_000);
    let digest = push(&ctl, &dir);
    release_to(&ctl, "r1", &digest);
    proxy.cut_next_after(1_200_000);
    let into = ctl.dir.path().join("rootfs");
    let out = agent_fetch(&agent, &digest, &into);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert_eq!(proxy.cuts(), 1, "the proxy really cut a connection");
    assert!(log.contains("download interrupted"), "{log}");
    let resumed = log
        .lines()
        .find(|l| l.contains("resuming download from the bytes already fetched"))
        .unwrap_or_else(|| panic!("no resume line:\n{log}"));
    let offset: u64 = resumed
        .split("offset=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // How much of the 1.2 MB the agent had on disk when the connection broke depends on
    // how its writer thread was scheduled (a loaded machine: less); what matters is that
    // it resumed from what it had, not from the start.
    assert!(
        (64 * 1024..1_200_000).contains(&offset),
        "resumed from {offset}"
    );
    assert_eq!(
        fs::read(into.join("bin/payload")).unwrap(),
        fs::read(dir.join("bin/payload")).unwrap()
    );
}

#[test]
fn a_tampered_blob_is_refused_and_nothing_is_unpacked() {
    let ctl = Controller::start(&[]);
    let agent = enrolled_agent(&ctl, "t1", &ctl.url());
    let dir = ctl.dir.path().join("src");
    write_bundle(&dir, "demo", "v1", 100_000);
    let digest = push(&ctl, &dir);
    release_to(&ctl, "t1", &digest);
    let mut bytes = ctl.blob_bytes(&digest);
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    ctl.tamper_blob(&digest, &bytes);

    let into = ctl.dir.path().join("rootfs");
    let out = agent_fetch(&agent, &digest, &into);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "not {digest}; discarded it and everything unpacked from it"
        )),
        "{err}"
    );
    // It streamed into a staging directory while it downloaded; that is gone too.
    assert!(!into.exists(), "nothing unpacked");
    let leftovers: Vec<_> = fs::read_dir(ctl.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("rootfs"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let cache = agent.join("cache/blobs/sha256");
    assert_eq!(
        fs::read_dir(&cache).unwrap().count(),
        0,
        "the bad download is discarded"
    );
}

#[test]
fn junk_kept_from_an_earlier_download_never_reaches_the_unpacked_tree() {
    let ctl = Controller::start(&[]);
    let agent = enrolled_agent(&ctl, "j1", &ctl.url());
    let good = ctl.dir.path().join("good");
    write_bundle(&good, "demo", "v1", 50_000);
    let digest = push(&ctl, &good);
    release_to(&ctl, "j1", &digest);
    // A valid bundle with an extra file, larger than the real blob, left as the partial
    // download of the real blob's digest (a proxy once served the wrong file).
    let other = ctl.dir.path().join("other");
    write_bundle(&other, "demo", "v1", 400_000);
    fs::write(other.join("bin/planted"), "not in the real bundle").unwrap();
    let junk = ctl.dir.path().join("other.tar.zst");
    let out = ctl.cli(&[
        "bundle",
        "build",
        other.to_str().unwrap(),
        "-o",
        junk.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cache = agent.join("cache/blobs/sha256");
    fs::create_dir_all(&cache).unwrap();
    let hex = digest.trim_start_matches("sha256:");
    fs::copy(&junk, cache.join(format!("{hex}.partial"))).unwrap();

    let into = ctl.dir.path().join("rootfs");
    let out = agent_fetch(&agent, &digest, &into);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("the download restarted from zero"), "{log}");
    assert!(
        !into.join("bin/planted").exists(),
        "a file of the junk survived"
    );
    assert_eq!(
        fs::read(into.join("bin/payload")).unwrap(),
        fs::read(good.join("bin/payload")).unwrap()
    );
    assert!(cache.join(hex).is_file());
}

/// A bundle in a bucket (`--blob-store`): it goes up as a multipart upload (moto's ETag of
/// a multipart object ends in `-<parts>`), nothing of it stays in the data dir, and an agent
/// whose download is cut resumes it with a `Range` the controller answers from the bucket.
#[test]
#[cfg_attr(
    not(berth_s3),
    ignore = "needs an S3-compatible server: set BERTH_TEST_S3 to its URL (moto_server)"
)]
fn a_bundle_in_a_bucket_goes_up_in_parts_and_comes_down_in_ranges() {
    let ctl = Controller::start(&[]);
    let bucket = ctl.bucket.clone().expect("a controller with a bucket");
    let proxy = CutProxy::start(ctl.port);
    let agent = enrolled_agent(&ctl, "r1", &proxy.url());
    let dir = ctl.dir.path().join("src");
    write_bundle(&dir, "big", "v1", 20_000_000);
    let digest = push(&ctl, &dir);
    let hex = digest.trim_start_matches("sha256:");
    let etag = bucket.etag(&format!("sha256/{hex}"));
    let parts: u32 = etag
        .trim_matches('"')
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or_else(|| panic!("not a multipart ETag: {etag}"));
    assert!(parts >= 3, "{parts} parts of at most 8 MiB for 20 MB");
    assert_eq!(ctl.blob_hexes(), vec![hex.to_string()]);
    let local = fs::read_dir(ctl.data_dir.join("blobs/sha256"))
        .unwrap()
        .count();
    assert_eq!(local, 0, "no blob in the data dir");
    assert_eq!(tmp_files(&ctl), 0, "the staged upload is gone");

    release_to(&ctl, "r1", &digest);
    proxy.cut_next_after(9_000_000);
    let into = ctl.dir.path().join("rootfs");
    let out = agent_fetch(&agent, &digest, &into);
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert_eq!(proxy.cuts(), 1, "the proxy really cut a connection");
    assert!(
        log.contains("resuming download from the bytes already fetched"),
        "{log}"
    );
    assert_eq!(
        fs::read(into.join("bin/payload")).unwrap(),
        fs::read(dir.join("bin/payload")).unwrap()
    );

    // `bundle rm` deletes the object of a bundle no cluster uses.
    let small = ctl.dir.path().join("small");
    write_bundle(&small, "small", "v1", 1000);
    let other = push(&ctl, &small);
    assert_eq!(ctl.blob_hexes().len(), 2);
    let out = ctl.cli(&["bundle", "rm", &other]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        ctl.blob_hexes(),
        vec![hex.to_string()],
        "{:?}",
        bucket.keys()
    );
}

/// A bucket that is not there stops the start, naming it; a backup of a controller whose
/// blobs are in a bucket is refused with the code that says where backups come from.
#[test]
#[cfg_attr(
    not(berth_s3),
    ignore = "needs an S3-compatible server: set BERTH_TEST_S3 to its URL (moto_server)"
)]
fn a_missing_bucket_stops_the_start_and_a_bucket_is_not_backed_up_by_berth() {
    let ctl = Controller::start(&[]);
    let bucket = ctl.bucket.clone().expect("a controller with a bucket");
    let file = ctl.dir.path().join("b.tar");
    let out = ctl.cli(&["backup", "-o", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("(backup_by_storage_tools)"),
        "{}",
        stderr(&out)
    );
    assert!(!file.exists());

    let dir = tempfile::tempdir().unwrap();
    // (`timeout`: a controller that started anyway must not hang the test.)
    let out = Command::new("timeout")
        .arg("30")
        .arg(berth_bin())
        .arg("--data-dir")
        .arg(dir.path())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--blob-store",
            &format!("s3://no-such-bucket-here?endpoint={}", bucket.endpoint),
        ])
        .env("AWS_ACCESS_KEY_ID", "berth-test")
        .env("AWS_SECRET_ACCESS_KEY", "berth-test")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("cannot use the bucket s3://no-such-bucket-here at"),
        "{err}"
    );
}
