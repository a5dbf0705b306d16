//! Malicious and malformed archives: each is refused with the exact error, and nothing
//! appears outside the target directory.
#![allow(clippy::unwrap_used)]

use berth_bundle::{unpack, Limits};
use std::fs;
use std::io::Write;
use std::path::Path;

const MANIFEST: &str =
    "apiVersion: berth.dev/v1\nkind: Bundle\nname: t\nversion: v1\ntype: rootfs\n";

/// One raw tar entry; the name is written into the header bytes directly so the tar
/// crate's own path checks cannot sanitise it.
struct E<'a> {
    name: &'a str,
    kind: tar::EntryType,
    data: &'a [u8],
    link: Option<&'a str>,
    mode: u32,
    /// Overrides the ustar size field (to build a PAX/ustar disagreement).
    header_size: Option<u64>,
}

fn file<'a>(name: &'a str, data: &'a [u8]) -> E<'a> {
    E {
        name,
        kind: tar::EntryType::Regular,
        data,
        link: None,
        mode: 0o644,
        header_size: None,
    }
}
fn link<'a>(name: &'a str, kind: tar::EntryType, target: &'a str) -> E<'a> {
    E {
        name,
        kind,
        data: b"",
        link: Some(target),
        mode: 0o777,
        header_size: None,
    }
}
fn special(name: &str, kind: tar::EntryType) -> E<'_> {
    E {
        name,
        kind,
        data: b"",
        link: None,
        mode: 0o644,
        header_size: None,
    }
}

fn raw_header(
    name: &str,
    kind: tar::EntryType,
    size: u64,
    mode: u32,
    link: Option<&str>,
) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    {
        let u = h.as_ustar_mut().unwrap();
        u.name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(l) = link {
            u.linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
    }
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_cksum();
    h
}

fn archive(entries: &[E], with_manifest: bool) -> Vec<u8> {
    let mut tar = Vec::new();
    let mut push = |h: &tar::Header, data: &[u8]| {
        tar.extend_from_slice(h.as_bytes());
        tar.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        tar.extend(std::iter::repeat_n(0u8, pad));
    };
    if with_manifest {
        push(
            &raw_header(
                "bundle.yaml",
                tar::EntryType::Regular,
                MANIFEST.len() as u64,
                0o644,
                None,
            ),
            MANIFEST.as_bytes(),
        );
    }
    for e in entries {
        if let Some(hs) = e.header_size {
            // A PAX header whose size disagrees with the ustar header that follows.
            let rec = format!("size={}\n", e.data.len());
            let mut total = rec.len() + 2;
            while total != rec.len() + 1 + total.to_string().len() {
                total = rec.len() + 1 + total.to_string().len();
            }
            let rec = format!("{total} {rec}");
            let rec = rec.into_bytes();
            push(
                &raw_header(
                    "PaxHeader",
                    tar::EntryType::XHeader,
                    rec.len() as u64,
                    0o644,
                    None,
                ),
                &rec,
            );
            let h = raw_header(e.name, e.kind, hs, e.mode, e.link);
            push(&h, e.data);
        } else {
            push(
                &raw_header(e.name, e.kind, e.data.len() as u64, e.mode, e.link),
                e.data,
            );
        }
    }
    tar.extend(std::iter::repeat_n(0u8, 1024));
    zstd::encode_all(&tar[..], 3).unwrap()
}

/// Unpacks into `<tmp>/root` and returns the error text; asserts nothing else appeared in
/// `<tmp>`.
fn refused(bytes: &[u8], limits: Limits) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    let err = unpack(bytes, &root, &limits)
        .expect_err("must be refused")
        .to_string();
    let outside: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        outside,
        vec![std::ffi::OsString::from("root")],
        "something was written outside the target"
    );
    err
}

fn tmp_abs(tmp: &Path, name: &str) -> String {
    tmp.join(name).to_str().unwrap().to_string()
}

#[test]
fn absolute_path() {
    let tmp = tempfile::tempdir().unwrap();
    let abs = tmp_abs(tmp.path(), "evil");
    let err = refused(&archive(&[file(&abs, b"x")], true), Limits::default());
    assert_eq!(err, format!("entry `{abs}`: `{abs}` is an absolute path; only paths relative to the bundle root are allowed"));
    assert!(!Path::new(&abs).exists());
}

#[test]
fn parent_dir_traversal() {
    let err = refused(&archive(&[file("../evil", b"x")], true), Limits::default());
    assert_eq!(
        err,
        "entry `../evil`: `../evil` contains `..`; paths may not leave the bundle root"
    );
}

#[test]
fn nested_parent_dir_traversal() {
    let err = refused(
        &archive(&[file("a/../../evil", b"x")], true),
        Limits::default(),
    );
    assert_eq!(
        err,
        "entry `a/../../evil`: `a/../../evil` contains `..`; paths may not leave the bundle root"
    );
}

#[test]
fn symlink_to_absolute_target() {
    let err = refused(
        &archive(&[link("etc", tar::EntryType::Symlink, "/etc")], true),
        Limits::default(),
    );
    assert_eq!(
        err,
        "entry `etc`: symlink target `/etc` is absolute and would point outside the bundle"
    );
}

#[test]
fn symlink_escaping_the_root() {
    let err = refused(
        &archive(
            &[link("a/out", tar::EntryType::Symlink, "../../outside")],
            true,
        ),
        Limits::default(),
    );
    assert_eq!(
        err,
        "entry `a/out`: symlink target `../../outside` escapes the bundle root"
    );
}

#[test]
fn symlink_with_dotdot_after_a_name() {
    let err = refused(
        &archive(&[link("l", tar::EntryType::Symlink, "d/../../x")], true),
        Limits::default(),
    );
    assert_eq!(
        err,
        "entry `l`: symlink target `d/../../x` has `..` after a name; only leading `..` is allowed"
    );
}

#[test]
fn write_through_a_symlink() {
    let entries = [
        special("real", tar::EntryType::Directory),
        link("sub", tar::EntryType::Symlink, "real"),
        file("sub/file", b"x"),
    ];
    let err = refused(&archive(&entries, true), Limits::default());
    assert_eq!(
        err,
        "entry `sub/file`: would be written through the symlink `sub`"
    );
}

#[test]
fn hardlink_to_an_absolute_path() {
    let err = refused(
        &archive(&[link("pw", tar::EntryType::Link, "/etc/passwd")], true),
        Limits::default(),
    );
    assert_eq!(err, "entry `pw`: hardlink target: `/etc/passwd` is an absolute path; only paths relative to the bundle root are allowed");
}

#[test]
fn hardlink_escaping_the_root() {
    let err = refused(
        &archive(&[link("pw", tar::EntryType::Link, "../x")], true),
        Limits::default(),
    );
    assert_eq!(
        err,
        "entry `pw`: hardlink target: `../x` contains `..`; paths may not leave the bundle root"
    );
}

#[test]
fn hardlink_to_something_not_in_the_bundle() {
    let err = refused(
        &archive(&[link("h", tar::EntryType::Link, "missing")], true),
        Limits::default(),
    );
    assert_eq!(
        err,
        "entry `h`: hardlink target `missing` is not a regular file earlier in this bundle"
    );
}

#[test]
fn fifo_entry() {
    let err = refused(
        &archive(&[special("pipe", tar::EntryType::Fifo)], true),
        Limits::default(),
    );
    assert_eq!(
        err,
        "entry `pipe`: device and fifo entries are not allowed in bundles"
    );
}

#[test]
fn device_entry() {
    let err = refused(
        &archive(&[special("sda", tar::EntryType::Block)], true),
        Limits::default(),
    );
    assert_eq!(
        err,
        "entry `sda`: device and fifo entries are not allowed in bundles"
    );
    let err = refused(
        &archive(&[special("null", tar::EntryType::Char)], true),
        Limits::default(),
    );
    assert_eq!(
        err,
        "entry `null`: device and fifo entries are not allowed in bundles"
    );
}

#[test]
fn too_many_entries() {
    let entries = [file("a", b"1"), file("b", b"2"), file("c", b"3")];
    let limits = Limits {
        max_entries: 3,
        ..Limits::default()
    };
    let err = refused(&archive(&entries, true), limits);
    assert_eq!(
        err,
        "entry `c`: archive has more than 3 entries (the limit)"
    );
}

#[test]
fn file_over_the_per_file_limit() {
    let limits = Limits {
        max_file_bytes: 10,
        ..Limits::default()
    };
    let err = refused(&archive(&[file("big", &[7u8; 11])], true), limits);
    assert_eq!(
        err,
        "entry `big`: file of 11 bytes exceeds the per-file limit of 10 bytes"
    );
}

#[test]
fn total_over_the_limit() {
    let limits = Limits {
        max_total_bytes: 15,
        ..Limits::default()
    };
    let err = refused(
        &archive(&[file("a", &[1u8; 8]), file("b", &[1u8; 8])], true),
        limits,
    );
    assert_eq!(
        err,
        "entry `b`: unpacked size exceeds the limit of 15 bytes"
    );
}

#[test]
fn pax_and_ustar_sizes_disagree() {
    // ustar says 0 bytes (a reader ignoring PAX sees an empty file followed by a smuggled
    // header); PAX says 512.
    let smuggled = [b'A'; 512];
    let e = E {
        header_size: Some(0),
        ..file("innocent", &smuggled)
    };
    let err = refused(&archive(&[e], true), Limits::default());
    assert_eq!(err, "entry `innocent`: PAX size 512 disagrees with the header size 0; tar implementations would read this archive differently");
}

#[test]
fn archive_not_starting_with_the_manifest() {
    let err = refused(&archive(&[file("x", b"1")], false), Limits::default());
    assert_eq!(
        err,
        "archive: first entry is `x`, not bundle.yaml; build bundles with `berth bundle build`"
    );
}

#[test]
fn not_zstd_at_all() {
    let bundle = "a bundle is a zstd-compressed tar starting with bundle.yaml, made by `berth bundle build DIR`";
    let err = refused(b"this is not an archive", Limits::default());
    assert_eq!(
        err,
        format!("archive: this is not a zstd stream, so not a bundle; {bundle}")
    );
    assert_eq!(
        refused(b"", Limits::default()),
        format!("archive: empty; {bundle}")
    );
    assert_eq!(
        refused(&[0x1f, 0x8b, 8, 0], Limits::default()),
        format!("archive: this is gzip-compressed data, not a bundle; {bundle} (a container or sealos image archive is imported with `berth bundle import FILE`)")
    );
    let mut plain_tar = vec![0u8; 512];
    plain_tar[257..262].copy_from_slice(b"ustar");
    assert_eq!(
        refused(&plain_tar, Limits::default()),
        format!("archive: this is a plain tar archive, not a bundle; if it is a container or sealos image archive (`sealos save`, `docker save`, an OCI archive), import it with `berth bundle import FILE`; {bundle}")
    );
}

#[test]
fn setuid_bits_are_stripped_unless_allowed() {
    use std::os::unix::fs::PermissionsExt;
    let suid = E {
        mode: 0o4755,
        ..file("bin/tool", b"#!/bin/sh\n")
    };
    let tmp = tempfile::tempdir().unwrap();
    unpack(&archive(&[suid], true)[..], tmp.path(), &Limits::default()).unwrap();
    let mode = fs::metadata(tmp.path().join("bin/tool"))
        .unwrap()
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o755);
    assert!(
        !tmp.path().join("bundle.yaml").exists(),
        "the manifest is not written into the rootfs"
    );
}

#[test]
fn a_good_archive_unpacks_links_and_all() {
    let entries = [
        special("dir", tar::EntryType::Directory),
        file("dir/a", b"hello"),
        link("dir/b", tar::EntryType::Link, "dir/a"),
        link("dir/c", tar::EntryType::Symlink, "a"),
        link("top", tar::EntryType::Symlink, "dir/a"),
        link("dir/up", tar::EntryType::Symlink, "../top"),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let out = unpack(&archive(&entries, true)[..], tmp.path(), &Limits::default()).unwrap();
    assert_eq!(out.entries, 7);
    assert_eq!(fs::read(tmp.path().join("dir/b")).unwrap(), b"hello");
    assert_eq!(fs::read(tmp.path().join("dir/up")).unwrap(), b"hello");
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(tmp.path().join("dir/a"))
        .unwrap();
    f.write_all(b"!").unwrap();
    assert_eq!(
        fs::read(tmp.path().join("dir/b")).unwrap(),
        b"hello!",
        "a real hard link"
    );
}

/// Scans (the controller's upload check) and returns the error text; unpacking gives the
/// same error.
fn scan_refused(bytes: &[u8]) -> String {
    let err = berth_bundle::scan(bytes, &Limits::default())
        .expect_err("must be refused")
        .to_string();
    assert_eq!(refused(bytes, Limits::default()), err, "unpack agrees");
    err
}

#[test]
fn scan_refuses_a_template_that_does_not_parse() {
    let entries = [
        special("etc", tar::EntryType::Directory),
        file("etc/good.conf.tmpl", b"port={{ .PORT | default \"1\" }}\n"),
        file("etc/app.conf.tmpl", b"a\nb\n{{ .A "),
    ];
    let err = scan_refused(&archive(&entries, true));
    assert_eq!(
        err,
        "entry `etc/app.conf.tmpl`: line 3: unclosed action: `{{` without `}}`"
    );
    let entries = [file(
        "deep.tmpl",
        "{{ if true }}".repeat(20_000).leak().as_bytes(),
    )];
    assert_eq!(
        scan_refused(&archive(&entries, true)),
        "entry `deep.tmpl`: line 1: `if` blocks nest deeper than the limit of 64 levels"
    );
}

#[test]
fn scan_refuses_a_template_over_the_size_limit() {
    let big = vec![b'x'; (1 << 20) + 1];
    let err = scan_refused(&archive(&[file("big.tmpl", &big)], true));
    assert_eq!(
        err,
        "entry `big.tmpl`: template of 1048577 bytes exceeds the size limit of 1048576 bytes (1 MiB)"
    );
    // The same bytes under another name are just a file.
    berth_bundle::scan(
        &archive(&[file("big.bin", &big)], true)[..],
        &Limits::default(),
    )
    .unwrap();
}

#[test]
fn scan_refuses_a_template_that_is_not_utf8() {
    let err = scan_refused(&archive(&[file("x.tmpl", b"ok\n\xff")], true));
    assert_eq!(
        err,
        "entry `x.tmpl`: line 2: not UTF-8 text; templates must be UTF-8"
    );
}

#[test]
fn a_hardlinked_template_smuggled_unchecked_content() {
    let entries = [
        file("data", b"{{ if"),
        link("etc/x.conf.tmpl", tar::EntryType::Link, "data"),
    ];
    let err = scan_refused(&archive(&entries, true));
    assert_eq!(
        err,
        "entry `etc/x.conf.tmpl`: a template may only be a hardlink to another template; `data` is not one"
    );
    // A hardlink to a checked template is fine, and unpacks with its content.
    let entries = [
        file("a.tmpl", b"{{ .A }}"),
        link("b.tmpl", tar::EntryType::Link, "a.tmpl"),
    ];
    let tmp = tempfile::tempdir().unwrap();
    unpack(&archive(&entries, true)[..], tmp.path(), &Limits::default()).unwrap();
    assert_eq!(fs::read(tmp.path().join("b.tmpl")).unwrap(), b"{{ .A }}");
}

#[test]
fn good_templates_scan_and_unpack_with_their_content() {
    let src = b"name: {{ .BERTH_HOST }}\n{{- if eq .TLS \"true\" }}\ntls: on\n{{- end }}\n";
    let entries = [
        special("etc", tar::EntryType::Directory),
        file("etc/app.yaml.tmpl", src),
        // Not templates: no name before `.tmpl`.
        file("etc/.tmpl", b"{{ broken"),
    ];
    let bytes = archive(&entries, true);
    assert_eq!(
        berth_bundle::scan(&bytes[..], &Limits::default())
            .unwrap()
            .entries,
        4
    );
    let tmp = tempfile::tempdir().unwrap();
    unpack(&bytes[..], tmp.path(), &Limits::default()).unwrap();
    assert_eq!(fs::read(tmp.path().join("etc/app.yaml.tmpl")).unwrap(), src);
}

#[test]
fn default_limits_are_the_documented_ones() {
    let l = Limits::default();
    assert_eq!(l.max_total_bytes, 16 << 30);
    assert_eq!(l.max_entries, 200_000);
    assert_eq!(l.max_file_bytes, 4 << 30);
    assert!(l.max_file_bytes <= berth_bundle::unpack::MAX_FILE_BYTES_CAP);
}
