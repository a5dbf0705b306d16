//! sealos cluster images as they are (issue 23): `berth bundle import` of an oci-archive, an
//! OCI layout directory and a multi-image docker archive, and `berth bundle build` of a
//! Kubefile directory, each applied to real agents, with the hooks and commands run where
//! and how sealos runs them (asserted from files they write). Hostile layers are refused
//! with the unpack errors and store nothing.
#![allow(clippy::unwrap_used)]

use berth_tests::oci::{self, Entry, Image, Zip};
use berth_tests::*;
use std::path::{Path, PathBuf};

const CHECK: &[u8] =
    b"echo \"check cwd=$(pwd) kube=$SEALOS_SYS_KUBE_VERSION\" > \"$MARKS/$BERTH_HOST.check\"\n";
const INIT: &[u8] = b"echo \"init port=$1 mode=$SEALOS_SYS_RUN_MODE cwd=$(basename \"$(pwd)\")\" > \"$MARKS/$BERTH_HOST.init\"\n";
const CLEAN: &[u8] = b"echo clean > \"$MARKS/$BERTH_HOST.clean\"\n";
const REGISTRY: &[u8] = b"echo registry > \"$MARKS/$BERTH_HOST.registry\"\n";

/// A sealos rootfs image in two layers: the second removes a file (whiteout) and empties
/// a directory of what the first put there (opaque), adding files of its own.
fn rootfs_image(name: Option<&str>, zips: [Zip; 2]) -> Image {
    let first = oci::layer(&[
        Entry::Dir("scripts"),
        Entry::File("scripts/check.sh", CHECK, 0o755),
        Entry::File("scripts/init.sh", INIT, 0o755),
        Entry::File("scripts/clean.sh", CLEAN, 0o755),
        Entry::File("scripts/init-registry.sh", REGISTRY, 0o755),
        Entry::File("etc/old.conf", b"old\n", 0o644),
        Entry::File("etc/keep.conf", b"keep\n", 0o644),
        Entry::File("opt/dir/a", b"a\n", 0o644),
        Entry::File("opt/dir/b", b"b\n", 0o644),
    ]);
    let second = oci::layer(&[
        Entry::File("etc/.wh.old.conf", b"", 0o644),
        Entry::File("opt/dir/.wh..wh..opq", b"", 0o644),
        Entry::File("opt/dir/c", b"c\n", 0o644),
        Entry::File("etc/new.conf", b"new\n", 0o644),
    ]);
    Image {
        name: name.map(str::to_string),
        config: serde_json::json!({
            "Labels": {
                "sealos.io.type": "rootfs",
                "check": "check.sh",
                "init": "init.sh $PORT",
                "clean": "clean.sh",
                "version": "v1.27.7",
            },
            "Env": ["PORT=6443", "GREETING=hi"],
            "Cmd": ["echo \"cmd $(GREETING)\" > \"$MARKS/$BERTH_HOST.cmd\""],
        }),
        layers: vec![(first, zips[0]), (second, zips[1])],
    }
}

/// An application image without a type label (sealos reads that as an app).
fn app_image(name: &str) -> Image {
    Image {
        name: Some(name.into()),
        config: serde_json::json!({
            "Env": ["APP=demo"],
            "Cmd": ["cat manifests/app.yaml > \"$MARKS/$BERTH_HOST.app\"", "echo \"$(APP) $(pwd)\" >> \"$MARKS/$BERTH_HOST.app\""],
        }),
        layers: vec![(
            oci::layer(&[Entry::File("manifests/app.yaml", b"kind: App\n", 0o644)]),
            Zip::None,
        )],
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| format!("<{}: {e}>", p.display()))
}

fn import(ctl: &Controller, path: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["bundle", "import", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    ctl.cli(&args)
}

/// A sealos-shaped Clusterfile: master0 `m0` and node `n1`, the images, `MARKS` in spec.env,
/// and optionally `spec.command`.
fn clusterfile(
    ctl: &Controller,
    name: &str,
    images: &[&str],
    marks: &Path,
    command: Option<&str>,
) -> PathBuf {
    let mut t = format!(
        "apiVersion: apps.sealos.io/v1beta1\nkind: Cluster\nmetadata:\n  name: {name}\nspec:\n  hosts:\n  - ips:\n    - m0\n    roles:\n    - master\n    - amd64\n  - ips:\n    - n1\n    roles:\n    - node\n    - amd64\n  image:\n"
    );
    for i in images {
        t.push_str(&format!("  - {i}\n"));
    }
    t.push_str(&format!("  env:\n  - MARKS={}\n", marks.display()));
    if let Some(c) = command {
        t.push_str(&format!("  command:\n  - {c}\n"));
    }
    t.push_str("status: {}\n");
    let p = ctl.dir.path().join(format!("{name}.yaml"));
    std::fs::write(&p, t).unwrap();
    p
}

/// What the rootfs image's layers leave on a host.
fn assert_layers_applied(ctl: &Controller, cluster: &str, host: &str) {
    let rootfs = ctl
        .agent_dir(host)
        .join(format!("clusters/{cluster}/rootfs"));
    assert!(
        rootfs.join("etc/keep.conf").is_file(),
        "{}",
        rootfs.display()
    );
    assert!(rootfs.join("etc/new.conf").is_file());
    assert!(
        !rootfs.join("etc/old.conf").exists(),
        "the whiteout removed it"
    );
    assert!(!rootfs.join("etc/.wh.old.conf").exists());
    assert!(rootfs.join("opt/dir/c").is_file());
    assert!(!rootfs.join("opt/dir/a").exists(), "the opaque dir hid it");
    assert!(!rootfs.join("opt/dir/b").exists());
    assert!(!rootfs.join("opt/dir/.wh..wh..opq").exists());
}

/// The rootfs hooks ran on both hosts as sealos runs them (from `scripts/`, with the
/// label's `$PORT` expanded, SEALOS_SYS_* set), init-registry only on master0, and the
/// image's Cmd on every host with `$(GREETING)` expanded.
fn assert_rootfs_ran(marks: &Path, cmd: &str) {
    for (h, mode) in [("m0", "master"), ("n1", "node")] {
        let check = read(&marks.join(format!("{h}.check")));
        assert!(check.starts_with("check cwd=/"), "{check}");
        assert!(check.contains("/scripts kube=v1.27.7"), "{check}");
        assert_eq!(
            read(&marks.join(format!("{h}.init"))),
            format!("init port=6443 mode={mode} cwd=scripts\n")
        );
        assert_eq!(read(&marks.join(format!("{h}.cmd"))), format!("{cmd}\n"));
    }
    assert_eq!(read(&marks.join("m0.registry")), "registry\n");
    assert!(
        !marks.join("n1.registry").exists(),
        "init-registry runs on master0 only"
    );
}

fn apply_ok(ctl: &Controller, cf: &Path) {
    let out = apply_file(ctl, cf);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
}

/// `sealos save` default output: an oci-archive (gzip + zstd layers), imported under the
/// name it carries and applied to two real agents; the same image as an OCI layout
/// directory makes the same bundle; a reset runs the clean label on every host.
#[test]
fn an_oci_archive_of_a_sealos_rootfs_runs_its_hooks_where_sealos_would() {
    let ctl = Controller::start(&[]);
    let _agents = ctl.agents(&["m0", "n1"]);
    let marks = ctl.dir.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    let files = oci::oci_layout(&[rootfs_image(
        Some("docker.io/labring/kubernetes:v1.27.7"),
        [Zip::Gzip, Zip::Zstd],
    )]);
    let archive = ctl.dir.path().join("kubernetes.tar");
    oci::write_tar(&archive, &files);

    // Pushing it is refused with what to run instead.
    let out = ctl.cli(&["bundle", "push", archive.to_str().unwrap()]);
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out).trim(),
        format!(
            "error: {} is an OCI image archive (what `sealos save` and `skopeo copy … oci-archive:` write), not a berth bundle; import it with `berth bundle import {}`",
            archive.display(),
            archive.display()
        )
    );

    let out = import(&ctl, &archive, &["-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        made[0]["tags"],
        serde_json::json!(["labring/kubernetes:v1.27.7"])
    );
    let m = &made[0]["manifest"];
    assert_eq!(m["type"], "rootfs");
    assert_eq!(m["name"], "labring/kubernetes");
    assert_eq!(m["version"], "v1.27.7");
    assert_eq!(
        m["hooks"],
        serde_json::json!({"check": ".berth/check.sh", "install": ".berth/install.sh", "clean": ".berth/clean.sh"})
    );
    assert_eq!(m["env"]["PORT"], "6443");
    assert_eq!(m["env"]["SEALOS_SYS_KUBE_VERSION"], "v1.27.7");
    let digest = made[0]["digest"].as_str().unwrap().to_string();

    // The layout directory (what `sealos save --format oci-dir` writes) is the same image.
    let layout = ctl.dir.path().join("layout");
    oci::write_dir(&layout, &files);
    let out = import(
        &ctl,
        &layout,
        &["--tag", "labring/kubernetes:dir", "-o", "json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        again[0]["tags"],
        serde_json::json!(["labring/kubernetes:dir"])
    );
    assert_eq!(again[0]["manifest"]["version"], "dir");

    let cf = clusterfile(&ctl, "k8s", &["labring/kubernetes:v1.27.7"], &marks, None);
    apply_ok(&ctl, &cf);
    assert_eq!(ctl.status("k8s")["phase"], "Running");
    for h in ["m0", "n1"] {
        assert_layers_applied(&ctl, "k8s", h);
    }
    assert_rootfs_ran(&marks, "cmd hi");
    let inspect = stdout(&ctl.cli(&[
        "bundle",
        "inspect",
        "labring/kubernetes:v1.27.7",
        "-o",
        "json",
    ]));
    assert!(inspect.contains(&digest), "{inspect}");

    let out = ctl.cli(&["reset", "k8s", "--wait"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for h in ["m0", "n1"] {
        assert_eq!(read(&marks.join(format!("{h}.clean"))), "clean\n");
    }
}

/// `sealos save -m`: one docker archive with a rootfs image (uncompressed layers) and an
/// application image without a type label. Two bundles, tagged from the archive's names;
/// the app's Cmd runs on master0 only, in its own tree; `spec.command` replaces the first
/// image's Cmd.
#[test]
fn a_multi_image_docker_archive_becomes_bundles_and_runs_like_sealos() {
    let ctl = Controller::start(&[]);
    let _agents = ctl.agents(&["m0", "n1"]);
    let marks = ctl.dir.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    let archive = ctl.dir.path().join("images.tar");
    oci::write_tar(
        &archive,
        &oci::docker_archive(&[
            rootfs_image(Some("labring/kubernetes:v1.27.7"), [Zip::None, Zip::None]),
            app_image("docker.io/labring/demo-app:v1"),
        ]),
    );
    let out = import(&ctl, &archive, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("imported labring/kubernetes:v1.27.7 as sha256:"),
        "{text}"
    );
    assert!(
        text.contains(
            "(rootfs, hooks: check, clean, install, 1 command(s); image 1 of manifest.json)"
        ),
        "{text}"
    );
    assert!(
        text.contains("imported labring/demo-app:v1 as sha256:"),
        "{text}"
    );
    assert!(
        text.contains("(app, hooks: none, 2 command(s); image 2 of manifest.json)"),
        "{text}"
    );

    let cf = clusterfile(
        &ctl,
        "mixed",
        // Written the long way, as docker and buildah record it: the same image.
        &[
            "labring/kubernetes:v1.27.7",
            "docker.io/labring/demo-app:v1",
        ],
        &marks,
        Some("echo \"replaced $(GREETING)\" > \"$MARKS/$BERTH_HOST.cmd\""),
    );
    apply_ok(&ctl, &cf);
    for h in ["m0", "n1"] {
        assert_layers_applied(&ctl, "mixed", h);
    }
    assert_rootfs_ran(&marks, "replaced hi");
    let app = read(&marks.join("m0.app"));
    assert!(app.starts_with("kind: App\ndemo /"), "{app}");
    assert!(app.trim_end().ends_with("/apps/labring_demo-app"), "{app}");
    assert!(
        !marks.join("n1.app").exists(),
        "app images run on master0 only"
    );
}

/// A sealos build directory (`Kubefile`) builds without docker or buildah, and the bundle
/// runs as the image built from it would.
#[test]
fn a_kubefile_directory_builds_and_runs_like_its_image() {
    let ctl = Controller::start(&[]);
    let _agents = ctl.agents(&["m0", "n1"]);
    let marks = ctl.dir.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    let src = ctl.dir.path().join("my-rootfs");
    std::fs::create_dir_all(src.join("scripts")).unwrap();
    for (f, body) in [
        ("check.sh", CHECK),
        ("init.sh", INIT),
        ("clean.sh", CLEAN),
        ("init-registry.sh", REGISTRY),
    ] {
        std::fs::write(src.join("scripts").join(f), body).unwrap();
    }
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/keep.conf"), "keep\n").unwrap();
    std::fs::write(
        src.join("Kubefile"),
        "# a sealos rootfs\nFROM scratch\nLABEL sealos.io.type=\"rootfs\" \\\n      check=\"check.sh\" \\\n      init=\"init.sh $PORT\" \\\n      clean=\"clean.sh\" \\\n      version=\"v1.27.7\"\nENV PORT=6443 \\\n    GREETING=hi\nCOPY scripts scripts\nCOPY etc ./etc\nCMD [\"echo \\\"cmd $(GREETING)\\\" > \\\"$MARKS/$BERTH_HOST.cmd\\\"\"]\n",
    )
    .unwrap();
    let out = ctl.cli(&[
        "bundle",
        "build",
        src.to_str().unwrap(),
        "--tag",
        "my/rootfs:v1",
        "-o",
        ctl.dir.path().join("b.tar.zst").to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let built: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(built["manifest"]["name"], "my/rootfs");
    assert_eq!(built["manifest"]["type"], "rootfs");
    let out = ctl.cli(&[
        "bundle",
        "push",
        src.to_str().unwrap(),
        "--tag",
        "my/rootfs:v1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    let cf = clusterfile(&ctl, "kf", &["my/rootfs:v1"], &marks, None);
    apply_ok(&ctl, &cf);
    assert_rootfs_ran(&marks, "cmd hi");
    let keep = ctl.agent_dir("n1").join("clusters/kf/rootfs/etc/keep.conf");
    assert_eq!(read(&keep), "keep\n");

    // What needs a container runtime is refused with the line and what to do instead.
    std::fs::write(src.join("Kubefile"), "FROM scratch\nRUN make\n").unwrap();
    let out = ctl.cli(&["bundle", "build", src.to_str().unwrap()]);
    assert!(!out.status.success());
    assert_eq!(
        stderr(&out).trim(),
        format!("error: {}:2: `RUN` is not supported: berth builds without a container runtime; a Kubefile may use FROM scratch, COPY, LABEL, ENV, CMD, ENTRYPOINT", src.join("Kubefile").display())
    );
    std::fs::write(
        src.join("Kubefile"),
        "FROM labring/kubernetes:v1.27.7\nCOPY etc etc\n",
    )
    .unwrap();
    let out = ctl.cli(&["bundle", "build", src.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(
            ":1: `FROM labring/kubernetes:v1.27.7`: berth builds only `FROM scratch` images"
        ),
        "{}",
        stderr(&out)
    );
}

/// Layers that escape, carry a device, or unpack past the controller's limits are refused
/// with the unpack errors; so are layers whose bytes do not match the image's digests.
/// Nothing is stored.
#[test]
fn hostile_layers_are_refused_with_the_unpack_errors_and_store_nothing() {
    let ctl = Controller::start(&["--max-file-size", "1M"]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "escape",
            oci::layer(&[Entry::Raw("../../etc/evil", tar::EntryType::Regular, 4)]),
            "entry `../../etc/evil`: `../../etc/evil` contains `..`; paths may not leave the bundle root",
        ),
        (
            "device",
            oci::layer(&[Entry::Raw("dev/sda", tar::EntryType::Block, 0)]),
            "entry `dev/sda`: device and fifo entries are not allowed in bundles",
        ),
        (
            "symlink",
            oci::layer(&[Entry::Symlink("etc/passwd", "/etc/passwd")]),
            "entry `etc/passwd`: symlink target `/etc/passwd` is absolute and would point outside the bundle",
        ),
        (
            "through-symlink",
            oci::layer(&[
                Entry::Dir("d"),
                Entry::Symlink("d/link", "../d"),
                Entry::File("d/link/x", b"x", 0o644),
            ]),
            "entry `d/link/x`: would be written through the symlink `d/link`",
        ),
        (
            "bomb",
            oci::layer(&[Entry::Raw("big", tar::EntryType::Regular, 2 << 20)]),
            "entry `big`: file of 2097152 bytes exceeds the per-file limit of 1048576 bytes",
        ),
    ];
    for (what, tar, want) in cases {
        let img = Image {
            name: Some(format!("evil/{what}:v1")),
            config: serde_json::json!({"Labels": {"sealos.io.type": "rootfs"}}),
            layers: vec![(tar, Zip::Gzip)],
        };
        let archive = ctl.dir.path().join(format!("{what}.tar"));
        oci::write_tar(&archive, &oci::oci_layout(&[img]));
        let out = import(&ctl, &archive, &[]);
        assert!(!out.status.success(), "{what}");
        let err = stderr(&out);
        assert!(err.contains(want), "{what}: {err}");
        assert!(
            err.starts_with("error: nothing was imported"),
            "{what}: {err}"
        );
    }

    // A layer whose bytes are not what the manifest names.
    let img = Image {
        name: Some("evil/altered:v1".into()),
        config: serde_json::json!({}),
        layers: vec![(oci::layer(&[Entry::File("a", b"a", 0o644)]), Zip::None)],
    };
    let mut files = oci::oci_layout(&[img]);
    let layer = files
        .iter_mut()
        .find(|(n, d)| n.starts_with("blobs/") && d.len() > 512)
        .unwrap();
    layer.1[0] ^= 1;
    let archive = ctl.dir.path().join("altered.tar");
    oci::write_tar(&archive, &files);
    let out = import(&ctl, &archive, &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("as the image says; the archive is corrupt or was altered"),
        "{}",
        stderr(&out)
    );

    // An image the archive names by a tag only needs --tag.
    let img = Image {
        name: None,
        config: serde_json::json!({}),
        layers: vec![(oci::layer(&[Entry::File("a", b"a", 0o644)]), Zip::None)],
    };
    let archive = ctl.dir.path().join("nameless.tar");
    oci::write_tar(&archive, &oci::oci_layout(&[img]));
    let out = import(&ctl, &archive, &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("image 1 of index.json of"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("has no name"), "{}", stderr(&out));

    let list = stdout(&ctl.cli(&["bundle", "list", "-o", "json"]));
    assert_eq!(list.trim(), "[]");
}
