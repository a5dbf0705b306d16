//! The controller is the cluster's registry (issue 23): images a bundle carries — a sealos
//! `registry/` tree, an OCI layout and a docker archive under `images/` — and images loaded
//! with `berth image load` are pulled by real clients (skopeo, containerd's ctr through the
//! example bundle's hosts.toml), with the distribution spec's HEAD, Range and error bodies.
#![allow(clippy::unwrap_used)]

use berth_tests::oci::{self, Entry, Image, Zip};
use berth_tests::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn small_image(name: Option<&str>, file: &str) -> Image {
    Image {
        name: name.map(str::to_string),
        config: serde_json::json!({"Cmd": ["/pause"]}),
        layers: vec![(
            oci::layer(&[Entry::File(file, file.as_bytes(), 0o755)]),
            Zip::Gzip,
        )],
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        stdout(&out),
        stderr(&out)
    );
    out
}

fn host(ctl: &Controller) -> String {
    ctl.url().trim_start_matches("https://").to_string()
}

/// A directory holding the controller's CA as skopeo's `--cert-dir` wants it.
fn cert_dir(ctl: &Controller) -> PathBuf {
    let d = ctl.dir.path().join("certs");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("ca.crt"), ctl.ca_pem()).unwrap();
    d
}

fn skopeo_inspect(ctl: &Controller, image: &str) -> serde_json::Value {
    let certs = cert_dir(ctl);
    let out = run(Command::new("skopeo").args([
        "inspect",
        "--cert-dir",
        certs.to_str().unwrap(),
        &format!("docker://{}/{image}", host(ctl)),
    ]));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// containerd on its own socket and state, stopped and removed when dropped.
struct Containerd {
    proc: Proc,
    sock: PathBuf,
}

impl Containerd {
    fn start(dir: &Path) -> Containerd {
        assert!(
            Command::new("containerd").arg("--version").output().is_ok(),
            "containerd is needed (apt-get install containerd; .ci/run installs it)"
        );
        let sock = dir.join("containerd.sock");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{1}\"\n",
                dir.display(),
                sock.display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new("containerd");
        cmd.args(["--config", config.to_str().unwrap()]);
        let proc = Proc::spawn("containerd", cmd, dir.join("containerd.log"));
        wait_for(
            "containerd's socket",
            std::time::Duration::from_secs(30),
            || sock.exists().then_some(()),
        );
        Containerd { proc, sock }
    }

    fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.args(["--address", self.sock.to_str().unwrap()]);
        c
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.proc.terminate(std::time::Duration::from_secs(10));
    }
}

#[test]
fn registry_clients_pull_the_images_bundles_carry() {
    let ctl = Controller::start(&[]);
    let _agents = ctl.agents(&["m0"]);

    // A bundle carrying images the three ways.
    let b = ctl.dir.path().join("carrier");
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(
        b.join("bundle.yaml"),
        "apiVersion: berth.dev/v1\nkind: Bundle\nname: carrier\nversion: v1\ntype: rootfs\n",
    )
    .unwrap();
    let pause = small_image(None, "pause");
    let pause_digest = oci::distribution_tree(&b.join("registry"), "library/pause", "3.9", &pause);
    oci::write_dir(
        &b.join("images/demo"),
        &oci::oci_layout(&[small_image(Some("docker.io/docs/demo:v1"), "demo")]),
    );
    oci::write_tar(
        &b.join("images/extra.tar"),
        &oci::docker_archive(&[small_image(
            Some("registry.example:5000/team/extra:v2"),
            "extra",
        )]),
    );
    // A multi-arch index carried for one architecture: served as stored.
    let (multi, index_digest) =
        oci::multi_arch_layout("docker.io/docs/multi:v1", &small_image(None, "multi"));
    oci::write_dir(&b.join("images/multi"), &multi);
    let out = ctl.cli(&["bundle", "push", b.to_str().unwrap(), "--tag", "carrier:v1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for i in [
        "library/pause:3.9",
        "docs/demo:v1",
        "team/extra:v2",
        "docs/multi:v1",
    ] {
        assert!(text.contains(&format!("serving image {i}")), "{text}");
    }
    let warnings = stderr(&out);
    assert_eq!(warnings.matches("warning").count(), 1, "{warnings}");
    assert!(
        warnings.contains("of index ")
            && warnings.contains("is not carried; clients of that platform will not find it"),
        "{warnings}"
    );

    // skopeo: inspect shows the stored digest; copy pulls every blob.
    let inspected = skopeo_inspect(&ctl, "library/pause:3.9");
    assert_eq!(inspected["Digest"], pause_digest);
    assert_eq!(
        skopeo_inspect(&ctl, "docs/demo:v1")["Name"],
        format!("{}/docs/demo", host(&ctl))
    );
    skopeo_inspect(&ctl, "team/extra:v2");
    // The index as stored, and this platform's image through it.
    let raw = run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--cert-dir",
        cert_dir(&ctl).to_str().unwrap(),
        &format!("docker://{}/docs/multi:v1", host(&ctl)),
    ]));
    assert_eq!(oci::sha(&raw.stdout), index_digest);
    assert!(stdout(&raw).contains("arm64"));
    assert_eq!(
        skopeo_inspect(&ctl, "docs/multi:v1")["Architecture"],
        "amd64"
    );
    let certs = cert_dir(&ctl);
    let copied = ctl.dir.path().join("copied");
    run(Command::new("skopeo").args([
        "copy",
        "--src-cert-dir",
        certs.to_str().unwrap(),
        &format!("docker://{}/library/pause:3.9", host(&ctl)),
        &format!("oci:{}:pause", copied.display()),
    ]));
    let layer = oci::compress(&pause.layers[0].0, Zip::Gzip);
    assert!(copied
        .join(format!("blobs/sha256/{}", &oci::sha(&layer)[7..]))
        .is_file());

    // The spec's answers, over the API's TLS.
    let http = client(&ctl.ca_pem(), None).unwrap();
    let url = |p: &str| format!("{}/v2/{p}", ctl.url());
    let r = http.get(url("")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    let r = http
        .head(url("library/pause/manifests/3.9"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["docker-content-digest"], pause_digest.as_str());
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    let len: usize = r.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = http
        .get(url("library/pause/manifests/3.9"))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(body.len(), len);
    assert_eq!(oci::sha(&body), pause_digest);
    let by_digest = http
        .get(url(&format!("library/pause/manifests/{pause_digest}")))
        .send()
        .unwrap();
    assert_eq!(by_digest.status(), 200);
    let layer_url = url(&format!("library/pause/blobs/{}", oci::sha(&layer)));
    let r = http
        .get(&layer_url)
        .header("Range", "bytes=2-9")
        .send()
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes 2-9/{}", layer.len()).as_str()
    );
    assert_eq!(&r.bytes().unwrap()[..], &layer[2..10]);
    let r = http.head(&layer_url).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-length"],
        layer.len().to_string().as_str()
    );
    let tags: serde_json::Value = http
        .get(url("library/pause/tags/list"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        tags,
        serde_json::json!({"name": "library/pause", "tags": ["3.9"]})
    );
    for (path, status, code) in [
        ("nobody/here/manifests/v1", 404, "NAME_UNKNOWN"),
        ("library/pause/manifests/4.0", 404, "MANIFEST_UNKNOWN"),
        (
            &format!("library/pause/blobs/{}", oci::sha(b"none")),
            404,
            "BLOB_UNKNOWN",
        ),
        ("library/pause/blobs/sha256:zz", 400, "DIGEST_INVALID"),
        ("Bad_Name/manifests/v1", 400, "NAME_INVALID"),
    ] {
        let r = http.get(url(path)).send().unwrap();
        assert_eq!(r.status(), status, "{path}");
        let body: serde_json::Value = r.json().unwrap();
        assert_eq!(body["errors"][0]["code"], code, "{path}: {body}");
    }
    let r = http
        .put(url("library/pause/manifests/3.9"))
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(r.status(), 405);
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["errors"][0]["code"], "UNSUPPORTED");

    // `berth image load`: a docker archive made elsewhere.
    let archive = ctl.dir.path().join("loaded.tar");
    oci::write_tar(
        &archive,
        &oci::docker_archive(&[small_image(Some("tools/busy:1.0"), "busy")]),
    );
    let out = ctl.cli(&["image", "load", archive.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "serving tools/busy:1.0\n");
    skopeo_inspect(&ctl, "tools/busy:1.0");
    let list = stdout(&ctl.cli(&["image", "list", "-o", "json"]));
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 5, "{list}");

    // containerd pulls `sealos.hub:5000/library/pause:3.9` from the controller, through
    // the hosts.toml the example bundle wrote on the host with BERTH_REGISTRY and its CA.
    let certs_d = ctl.dir.path().join("certs.d");
    let example = repo_root().join("examples/containerd-registry");
    push_dir(&ctl, &example, "containerd-registry:v1");
    let cf = ctl.clusterfile(
        "reg",
        &["m0"],
        &[],
        &["carrier:v1", "containerd-registry:v1"],
        &[format!("CONTAINERD_CERTS_DIR={}", certs_d.display())],
    );
    let out = apply_file(&ctl, &cf);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let hosts = std::fs::read_to_string(certs_d.join("sealos.hub:5000/hosts.toml")).unwrap();
    assert!(
        hosts.contains(&format!("[host.\"https://{}\"]", host(&ctl))),
        "{hosts}"
    );
    let cd_dir = tempfile::tempdir().unwrap();
    let containerd = Containerd::start(cd_dir.path());
    run(containerd.ctr().args([
        "images",
        "pull",
        "--snapshotter",
        "native",
        "--hosts-dir",
        certs_d.to_str().unwrap(),
        "sealos.hub:5000/library/pause:3.9",
    ]));
    let ls = stdout(&run(containerd.ctr().args(["images", "ls"])));
    assert!(ls.contains("sealos.hub:5000/library/pause:3.9"), "{ls}");
    assert!(ls.contains(&pause_digest), "{ls}");
    drop(containerd);

    // Removing the bundle stops serving what it carried (and only that).
    let digest = serde_json::from_str::<serde_json::Value>(&stdout(&ctl.cli(&[
        "bundle",
        "inspect",
        "carrier:v1",
        "-o",
        "json",
    ])))
    .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let out = ctl.cli(&["reset", "reg", "--wait"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = ctl.cli(&["bundle", "rm", &digest]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r = http.get(url("library/pause/manifests/3.9")).send().unwrap();
    assert_eq!(r.status(), 404);
    skopeo_inspect(&ctl, "tools/busy:1.0");
}

/// With `--registry-auth`, reads need an agent certificate or an API token (basic auth's
/// password, as registry clients send it). A backup carries the registry's blobs: the
/// restored controller serves the same image.
#[test]
#[cfg_attr(
    berth_postgres,
    ignore = "berth backup of a PostgreSQL store is refused (PostgreSQL's tools back it up): tested by a_postgres_backup_is_refused_naming_the_tools"
)]
fn registry_reads_can_require_credentials_and_survive_a_restore() {
    let mut ctl = Controller::start(&["--registry-auth"]);
    let archive = ctl.dir.path().join("one.tar");
    oci::write_tar(
        &archive,
        &oci::docker_archive(&[small_image(Some("tools/one:1"), "one")]),
    );
    let out = ctl.cli(&["image", "load", archive.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let http = client(&ctl.ca_pem(), None).unwrap();
    let r = http
        .get(format!("{}/v2/tools/one/manifests/1", ctl.url()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Basic realm=\"berth\"");
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");
    // An agent's certificate is enough, until its host is revoked.
    let _agent = ctl.agents(&["r0"]);
    let manifest_url = format!("{}/v2/tools/one/manifests/1", ctl.url());
    let r = ctl.agent_client("r0").get(&manifest_url).send().unwrap();
    assert_eq!(r.status(), 200);
    let out = ctl.cli(&["host", "revoke", "r0"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let r = ctl.agent_client("r0").get(&manifest_url).send().unwrap();
    assert_eq!(r.status(), 401);
    let certs = cert_dir(&ctl);
    let image = format!("docker://{}/tools/one:1", host(&ctl));
    let out = Command::new("skopeo")
        .args(["inspect", "--cert-dir", certs.to_str().unwrap(), &image])
        .output()
        .unwrap();
    assert!(!out.status.success());
    run(Command::new("skopeo").args([
        "inspect",
        "--cert-dir",
        certs.to_str().unwrap(),
        "--creds",
        &format!("berth:{}", ctl.admin_token()),
        &image,
    ]));

    let backup = ctl.dir.path().join("backup.tar");
    let out = ctl.cli(&["backup", "-o", backup.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    ctl.restart_restored_from(&backup);
    let out = run(Command::new("skopeo").args([
        "inspect",
        "--cert-dir",
        certs.to_str().unwrap(),
        "--creds",
        &format!("berth:{}", ctl.admin_token()),
        "--raw",
        &image,
    ]));
    assert!(stdout(&out).contains("application/vnd.oci.image.manifest.v1+json"));
}
