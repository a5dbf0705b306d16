//! Reproducible packing, round trips, Config strategies and templates against expected
//! output files.
#![allow(clippy::unwrap_used)]

use berth_bundle::config::{apply, render_templates, ConfigError, Strategy};
use berth_bundle::{pack, unpack, Limits, PackError};
use berth_shared::SafeRelPath;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn data(p: &str) -> String {
    fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(p),
    )
    .unwrap()
}

fn sample_bundle(dir: &Path) {
    fs::create_dir_all(dir.join("scripts")).unwrap();
    fs::create_dir_all(dir.join("bin")).unwrap();
    fs::write(
        dir.join("bundle.yaml"),
        "apiVersion: berth.dev/v1\nkind: Bundle\nname: demo\nversion: v1\ntype: rootfs\nhooks:\n  install: scripts/install.sh\n",
    )
    .unwrap();
    fs::write(dir.join("scripts/install.sh"), "#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(
        dir.join("scripts/install.sh"),
        fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    fs::write(dir.join("bin/tool"), vec![42u8; 300_000]).unwrap();
    std::os::unix::fs::symlink("tool", dir.join("bin/tool-link")).unwrap();
}

#[test]
fn the_same_directory_packs_to_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b");
    sample_bundle(&dir);
    let a = pack(&dir, &tmp.path().join("a.tar.zst")).unwrap();
    // Touch everything: new mtimes must not change the digest.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let content = fs::read(dir.join("scripts/install.sh")).unwrap();
    fs::write(dir.join("scripts/install.sh"), content).unwrap();
    let b = pack(&dir, &tmp.path().join("b.tar.zst")).unwrap();
    assert_eq!(a.digest, b.digest);
    assert_eq!(
        fs::read(tmp.path().join("a.tar.zst")).unwrap(),
        fs::read(tmp.path().join("b.tar.zst")).unwrap()
    );
    let (d, size) = berth_bundle::hashio::digest_file(&tmp.path().join("a.tar.zst")).unwrap();
    assert_eq!((d, size), (a.digest, a.size));
    // A change of mode is a change of bundle.
    fs::set_permissions(dir.join("bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    let c = pack(&dir, &tmp.path().join("c.tar.zst")).unwrap();
    assert_ne!(a.digest, c.digest);
}

#[test]
fn a_packed_bundle_unpacks_with_modes_and_symlinks() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b");
    sample_bundle(&dir);
    let out = tmp.path().join("b.tar.zst");
    let packed = pack(&dir, &out).unwrap();
    assert_eq!(packed.manifest.name, "demo");
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    let u = unpack(fs::File::open(&out).unwrap(), &root, &Limits::default()).unwrap();
    assert_eq!(u.entries, packed.entries);
    assert_eq!(
        fs::metadata(root.join("scripts/install.sh"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o750
    );
    assert_eq!(
        fs::read_link(root.join("bin/tool-link")).unwrap(),
        Path::new("tool")
    );
    assert_eq!(fs::read(root.join("bin/tool")).unwrap().len(), 300_000);
}

#[test]
fn build_errors_name_the_file_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b");
    sample_bundle(&dir);
    fs::remove_file(dir.join("scripts/install.sh")).unwrap();
    let err = pack(&dir, &tmp.path().join("x.tar.zst")).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{}: bundle.yaml: hooks.install: file `scripts/install.sh` does not exist in the bundle", dir.join("bundle.yaml").display())
    );
    assert!(!tmp.path().join("x.tar.zst").exists());
    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    assert!(matches!(
        pack(&empty, &tmp.path().join("y.tar.zst")),
        Err(PackError::NoManifest { .. })
    ));
    // A symlink that escapes is refused at build time too.
    sample_bundle(&tmp.path().join("c"));
    std::os::unix::fs::symlink("/etc/passwd", tmp.path().join("c/bin/pw")).unwrap();
    let err = pack(&tmp.path().join("c"), &tmp.path().join("z.tar.zst"))
        .unwrap_err()
        .to_string();
    assert!(err.ends_with("bin/pw: symlink target `/etc/passwd` is absolute and would point outside the bundle; agents refuse such bundles"), "{err}");
}

#[test]
fn later_bundles_overlay_earlier_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    sample_bundle(&a);
    let b = tmp.path().join("b");
    fs::create_dir_all(b.join("bin")).unwrap();
    fs::write(
        b.join("bundle.yaml"),
        "apiVersion: berth.dev/v1\nkind: Bundle\nname: patch\nversion: v2\ntype: patch\n",
    )
    .unwrap();
    fs::write(b.join("bin/tool"), "patched").unwrap();
    pack(&a, &tmp.path().join("a.tar.zst")).unwrap();
    pack(&b, &tmp.path().join("b.tar.zst")).unwrap();
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    for f in ["a.tar.zst", "b.tar.zst"] {
        unpack(
            fs::File::open(tmp.path().join(f)).unwrap(),
            &root,
            &Limits::default(),
        )
        .unwrap();
    }
    assert_eq!(
        fs::read_to_string(root.join("bin/tool")).unwrap(),
        "patched"
    );
    assert!(root.join("scripts/install.sh").exists());
}

fn rootfs_with(file: &str, content: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join(file);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
    tmp
}

#[test]
fn config_merge_deep_merges_into_every_document() {
    let root = rootfs_with("etc/kubeadm.yaml", &data("config/kubeadm.yaml"));
    let rel = SafeRelPath::new("etc/kubeadm.yaml").unwrap();
    apply(
        root.path(),
        &rel,
        Strategy::Merge,
        &data("config/merge.data.yaml"),
    )
    .unwrap();
    assert_eq!(
        fs::read_to_string(root.path().join("etc/kubeadm.yaml")).unwrap(),
        data("config/kubeadm.merged.yaml")
    );
}

#[test]
fn config_override_insert_append() {
    let root = rootfs_with("etc/hosts.conf", "middle\n");
    let rel = SafeRelPath::new("etc/hosts.conf").unwrap();
    apply(root.path(), &rel, Strategy::Insert, "first").unwrap();
    apply(root.path(), &rel, Strategy::Append, "last\n").unwrap();
    assert_eq!(
        fs::read_to_string(root.path().join("etc/hosts.conf")).unwrap(),
        "first\nmiddle\nlast\n"
    );
    apply(root.path(), &rel, Strategy::Override, "only\n").unwrap();
    assert_eq!(
        fs::read_to_string(root.path().join("etc/hosts.conf")).unwrap(),
        "only\n"
    );
    // override creates a missing file
    let new = SafeRelPath::new("etc/new/file.txt").unwrap();
    apply(root.path(), &new, Strategy::Override, "x").unwrap();
    assert_eq!(
        fs::read_to_string(root.path().join("etc/new/file.txt")).unwrap(),
        "x"
    );
}

#[test]
fn config_errors_are_clear_and_change_nothing() {
    let root = rootfs_with("etc/app.ini", "[section]\nkey: [unclosed\n");
    let missing = SafeRelPath::new("etc/none.yaml").unwrap();
    let err = apply(root.path(), &missing, Strategy::Merge, "a: 1").unwrap_err();
    assert_eq!(err.to_string(), "Config for `etc/none.yaml`: the target file does not exist in the rootfs (merge needs one)");
    assert!(!root.path().join("etc/none.yaml").exists());
    let ini = SafeRelPath::new("etc/app.ini").unwrap();
    let err = apply(root.path(), &ini, Strategy::Merge, "a: 1").unwrap_err();
    assert!(matches!(err, ConfigError::TargetNotYaml { .. }), "{err}");
    assert!(
        err.to_string().starts_with(
            "Config for `etc/app.ini`: merge needs a YAML target, but it does not parse:"
        ),
        "{err}"
    );
    assert_eq!(
        fs::read_to_string(root.path().join("etc/app.ini")).unwrap(),
        "[section]\nkey: [unclosed\n"
    );
    // Never through a symlink.
    std::os::unix::fs::symlink("/etc", root.path().join("hostetc")).unwrap();
    let through = SafeRelPath::new("hostetc/passwd").unwrap();
    let err = apply(root.path(), &through, Strategy::Override, "x").unwrap_err();
    assert_eq!(
        err.to_string(),
        "Config for `hostetc/passwd`: `hostetc` is a symlink; Configs never write through symlinks"
    );
    assert!(Strategy::parse("replace").is_none());
}

#[test]
fn templates_render_against_an_expected_file() {
    let root = rootfs_with("etc/etcd.conf.tmpl", &data("templates/etcd.conf.tmpl"));
    fs::set_permissions(
        root.path().join("etc/etcd.conf.tmpl"),
        fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    let env: BTreeMap<String, String> = [
        ("BERTH_HOST", "node-1"),
        ("BERTH_HOST_IP", "10.0.0.5"),
        ("ETCD_TLS", "false"),
        ("ETCD_STATE", "existing"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let done = render_templates(root.path(), &env).unwrap();
    assert_eq!(done, vec!["etc/etcd.conf".to_string()]);
    assert_eq!(
        fs::read_to_string(root.path().join("etc/etcd.conf")).unwrap(),
        data("templates/etcd.conf.expected")
    );
    assert_eq!(
        fs::metadata(root.path().join("etc/etcd.conf"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o640
    );

    let bad = rootfs_with("x/broken.sh.tmpl", "#!/bin/sh\necho ok\necho {{ .A \n");
    let err = render_templates(bad.path(), &env).unwrap_err();
    assert_eq!(
        err.to_string(),
        "template x/broken.sh.tmpl: line 3: unclosed action: `{{` without `}}`"
    );
    assert!(!bad.path().join("x/broken.sh").exists());
}

#[test]
fn build_refuses_a_bundle_with_a_bad_template() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("b");
    sample_bundle(&dir);
    fs::create_dir_all(dir.join("etc/kube")).unwrap();
    fs::write(
        dir.join("etc/good.conf.tmpl"),
        "a={{ .A | default \"x\" }}\n",
    )
    .unwrap();
    fs::write(
        dir.join("etc/kube/kubeadm.yaml.tmpl"),
        "kind: InitConfiguration\n{{ if .A }}\nx: {{ .A }}\n",
    )
    .unwrap();
    let out = tmp.path().join("b.tar.zst");
    let err = pack(&dir, &out).unwrap_err();
    assert!(matches!(err, PackError::Template { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: line 2: `if` without a matching `end`",
            dir.join("etc/kube/kubeadm.yaml.tmpl").display()
        )
    );
    assert!(!out.exists());
    assert!(!tmp.path().join("b.tar.partial").exists());

    // The same check on its own names the file relative to the directory.
    assert_eq!(
        berth_bundle::config::check_templates(&dir)
            .unwrap_err()
            .to_string(),
        "template etc/kube/kubeadm.yaml.tmpl: line 2: `if` without a matching `end`"
    );

    // Too large, and not UTF-8.
    fs::remove_file(dir.join("etc/kube/kubeadm.yaml.tmpl")).unwrap();
    fs::write(dir.join("etc/big.tmpl"), vec![b'x'; (1 << 20) + 1]).unwrap();
    assert_eq!(
        pack(&dir, &out).unwrap_err().to_string(),
        format!(
            "{}: line 1: template exceeds the size limit of 1048576 bytes (1 MiB)",
            dir.join("etc/big.tmpl").display()
        )
    );
    fs::write(dir.join("etc/big.tmpl"), b"ok\n\xfe\n").unwrap();
    assert_eq!(
        pack(&dir, &out).unwrap_err().to_string(),
        format!(
            "{}: line 2: not UTF-8 text; templates must be UTF-8",
            dir.join("etc/big.tmpl").display()
        )
    );

    // Fixed: it builds, and both templates were checked.
    fs::remove_file(dir.join("etc/big.tmpl")).unwrap();
    assert_eq!(berth_bundle::config::check_templates(&dir).unwrap(), 1);
    pack(&dir, &out).unwrap();
    assert!(out.exists());
}

#[test]
fn check_templates_ignores_symlinks_and_non_templates() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::create_dir_all(root.join("d.tmpl")).unwrap();
    fs::write(root.join("d.tmpl/.tmpl"), "{{ broken").unwrap();
    fs::write(root.join("notes.txt"), "{{ broken").unwrap();
    fs::write(root.join("real.tmpl"), "{{ broken").unwrap();
    std::os::unix::fs::symlink("real.tmpl", root.join("link.tmpl")).unwrap();
    assert_eq!(
        berth_bundle::config::check_templates(root)
            .unwrap_err()
            .to_string(),
        "template real.tmpl: line 1: unclosed action: `{{` without `}}`"
    );
    fs::write(root.join("real.tmpl"), "{{ .A }}").unwrap();
    assert_eq!(berth_bundle::config::check_templates(root).unwrap(), 1);
}
