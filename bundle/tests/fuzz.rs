//! Bounded fuzzing of the parsers of untrusted input in `bundle`: templates, and archives
//! through `scan` and `unpack`. Every property must hold without a panic, a crash or a
//! hang, and `unpack` must never write outside the directory it is given.
//!
//! Each property runs a fixed number of cases chosen to take a few seconds in a debug
//! build; `BERTH_FUZZ_CASES=N` runs N cases of every property instead (CI can raise it).
//! Each case runs in a forked test process with a timeout, so a stack overflow or a hang
//! is reported as a failing (and shrunk) input rather than killing or stalling the run.
#![allow(clippy::unwrap_used)]

use berth_bundle::template::{check, render, MAX_OUTPUT_BYTES};
use berth_bundle::{scan, unpack, Limits};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// `default` cases per property, or `BERTH_FUZZ_CASES`.
fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("BERTH_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        // A case that takes longer is a hang.
        timeout: 20_000,
        max_shrink_time: 60_000,
        ..ProptestConfig::default()
    }
}

// ---- templates ----------------------------------------------------------------------------

const TOKENS: &[&str] = &[
    "{{", "}}", "{{- ", " -}}", "{{/*", "*/}}", " ", " ", "\n", "\t", "if ", "else ", "else if ",
    "end", "(", ")", "|", ".X", ".A", ".EMPTY", ".", ".A.B", "\"s\"", "\"", "\"\\\"\"", "\"\\q\"",
    "`raw`", "`", "\\", "true", "false", "1", "-1", "-", "default ", "eq ", "ne ", "not ", "and ",
    "or ", "lower ", "upper ", "trim ", "quote ", "range ", "with ", "nosuch ", "x", "é", "\u{0}",
    "}", "{",
];

/// Token soup, and well-formed pieces nested inside each other.
fn template_source() -> impl Strategy<Value = String> {
    let soup = prop::collection::vec(prop::sample::select(TOKENS), 0..300).prop_map(|t| t.concat());
    let leaf = prop::sample::select(vec![
        "{{ .A }}",
        "{{ .X | default \"d\" }}",
        "{{ quote .A }}",
        "text\n",
        "{{ if",
        "}}",
        "{{ end }}",
        "{{ (eq .A \"x\") }}",
    ])
    .prop_map(str::to_string);
    let nested = leaf.prop_recursive(8, 256, 4, |inner| {
        prop_oneof![
            (
                inner.clone(),
                inner.clone(),
                prop::sample::select(vec!["if .A", "if not .X", "if (and .A (or .X \"\"))"])
            )
                .prop_map(|(a, b, c)| format!("{{{{ {c} }}}}{a}{{{{ else }}}}{b}{{{{ end }}}}")),
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| v.concat()),
            inner.prop_map(|s| format!("{{{{ quote ( {s} ) }}}}")),
        ]
    });
    prop_oneof![
        2 => soup,
        1 => any::<String>(),
        1 => nested,
    ]
}

fn env() -> BTreeMap<String, String> {
    [("A", "x"), ("X", "a \"quoted\" \\ value\n"), ("EMPTY", "")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The errors a template that parses may still give when rendered.
fn is_limit_error(message: &str) -> bool {
    message.contains("exceed the limit") || message.contains("exceeds the limit")
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn templates_never_panic_and_check_agrees_with_render(src in template_source()) {
        let checked = check(&src);
        let rendered = render(&src, &env());
        match (&checked, &rendered) {
            // A parse error is the same error when rendering.
            (Err(c), Err(r)) => prop_assert_eq!(c, r),
            (Err(c), Ok(_)) => prop_assert!(false, "check refused what render accepted: {c}"),
            // What parses renders, unless it hits a size limit.
            (Ok(()), Err(r)) => prop_assert!(is_limit_error(&r.message), "{r}"),
            (Ok(()), Ok(out)) => prop_assert!(out.len() <= MAX_OUTPUT_BYTES),
        }
        if let Err(e) = checked {
            prop_assert!(e.line >= 1 && e.line <= src.matches('\n').count() + 1, "{e}");
        }
    }

    #[test]
    fn templates_never_panic_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(src) = berth_bundle::template::decode(&bytes) {
            let _ = render(src, &env());
        }
    }
}

// ---- archives -----------------------------------------------------------------------------

const MANIFESTS: &[&str] = &[
    "apiVersion: berth.dev/v1\nkind: Bundle\nname: t\nversion: v1\ntype: rootfs\n",
    "apiVersion: berth.dev/v1\nkind: Bundle\nname: t\nversion: v1\ntype: rootfs\nallowSetuid: true\nhooks:\n  install: a\n",
    "apiVersion: berth.dev/v1\nkind: Bundle\nname: t\nversion: v1\ntype: patch\nhooks:\n  install: ../x\n",
    "not: [yaml",
    "",
];

/// Entry names that are fine, and names that must be refused. `{ABS}` is replaced by the
/// absolute path of a directory beside the unpack target.
const SAFE_NAMES: &[&str] = &[
    "a",
    "b",
    "a/b",
    "a/b/c",
    "x.tmpl",
    "a/y.conf.tmpl",
    ".tmpl",
    "a/.tmpl",
    "./a",
    "a//b",
    "a/./b",
    "dir/",
    "l",
    "l/inside",
    "a/l",
    "a/l/evil",
    "m",
    "m/x",
];
const HOSTILE_NAMES: &[&str] = &[
    "..",
    "../evil",
    "a/../../evil",
    "",
    "/",
    "{ABS}",
    "{ABS}/evil",
    "{ABS}/secret",
    "bundle.yaml",
];

const LINK_TARGETS: &[&str] = &[
    "a",
    "b",
    "a/b",
    "x.tmpl",
    "a/y.conf.tmpl",
    "l",
    "m",
    ".",
    "..",
    "../..",
    "../evil",
    "/etc/passwd",
    "{ABS}",
    "{ABS}/secret",
    "a/../..",
    "",
];

const DATA: &[&[u8]] = &[
    b"",
    b"hello",
    b"{{ .A }}",
    b"{{ if .A }}",
    b"{{ (((",
    b"\xff\xfe",
    b"#!/bin/sh\necho hi\n",
];

#[derive(Debug, Clone)]
struct FuzzEntry {
    name: &'static str,
    kind: u8,
    link: &'static str,
    data: Vec<u8>,
    mode: u32,
    /// Overrides the header's size field.
    size: Option<u64>,
}

fn fuzz_entry() -> impl Strategy<Value = FuzzEntry> {
    let name = prop_oneof![
        12 => prop::sample::select(SAFE_NAMES),
        1 => prop::sample::select(HOSTILE_NAMES),
    ];
    // Regular files, directories, symlinks and hardlinks; rarely anything else.
    let kind = prop_oneof![
        30 => prop::sample::select(vec![b'0', b'0', b'5', b'2', b'1']),
        1 => prop::sample::select(vec![b'3', b'4', b'6', b'7', b'S', b'x', b'g', b'L', b'K']),
        1 => any::<u8>(),
    ];
    let data = prop_oneof![
        3 => prop::sample::select(DATA).prop_map(<[u8]>::to_vec),
        1 => prop::collection::vec(any::<u8>(), 0..1100),
    ];
    let mode = prop_oneof![
        8 => prop::sample::select(vec![0o644u32, 0o755, 0o4755, 0o2711, 0o555, 0o000]),
        1 => 0u32..0o10000,
    ];
    (
        name,
        kind,
        prop::sample::select(LINK_TARGETS),
        data,
        mode,
        prop::option::weighted(0.03, prop_oneof![Just(0u64), any::<u64>(), 0u64..2048]),
        prop::bool::weighted(0.03),
    )
        .prop_map(|(name, kind, link, data, mode, size, non_file_data)| {
            // Only regular files carry data, unless this entry tests that rule.
            let data = if kind == b'0' || non_file_data {
                data
            } else {
                Vec::new()
            };
            FuzzEntry {
                name,
                kind,
                link,
                data,
                mode,
                size,
            }
        })
}

/// Where the bytes of the tar stream get damaged.
#[derive(Debug, Clone)]
enum Damage {
    None,
    /// Flips bytes of the tar stream (headers included) before compression.
    Tar(Vec<(prop::sample::Index, u8)>),
    /// Flips bytes of the compressed stream.
    Zstd(Vec<(prop::sample::Index, u8)>),
    /// Cuts the compressed stream.
    Truncate(prop::sample::Index),
}

fn damage() -> impl Strategy<Value = Damage> {
    let flips = prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4);
    prop_oneof![
        6 => Just(Damage::None),
        2 => flips.clone().prop_map(Damage::Tar),
        1 => flips.prop_map(Damage::Zstd),
        1 => any::<prop::sample::Index>().prop_map(Damage::Truncate),
    ]
}

fn substitute(s: &str, abs: &Path) -> String {
    s.replace("{ABS}", abs.to_str().unwrap())
}

fn header(name: &str, kind: u8, size: u64, mode: u32, link: &str) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    {
        let u = h.as_ustar_mut().unwrap();
        let n = name.len().min(100);
        u.name[..n].copy_from_slice(&name.as_bytes()[..n]);
        let l = link.len().min(100);
        u.linkname[..l].copy_from_slice(&link.as_bytes()[..l]);
    }
    h.set_entry_type(tar::EntryType::new(kind));
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_cksum();
    h
}

fn build_archive(
    manifest: Option<&str>,
    entries: &[FuzzEntry],
    abs: &Path,
    damage: &Damage,
) -> Vec<u8> {
    let mut tar = Vec::new();
    let mut push = |h: &tar::Header, data: &[u8]| {
        tar.extend_from_slice(h.as_bytes());
        tar.extend_from_slice(data);
        tar.extend(std::iter::repeat_n(0u8, (512 - data.len() % 512) % 512));
    };
    if let Some(m) = manifest {
        push(
            &header("bundle.yaml", b'0', m.len() as u64, 0o644, ""),
            m.as_bytes(),
        );
    }
    for e in entries {
        let size = e.size.unwrap_or(e.data.len() as u64);
        let h = header(
            &substitute(e.name, abs),
            e.kind,
            size,
            e.mode,
            &substitute(e.link, abs),
        );
        push(&h, &e.data);
    }
    tar.extend(std::iter::repeat_n(0u8, 1024));
    let flip = |bytes: &mut Vec<u8>, flips: &[(prop::sample::Index, u8)]| {
        for (i, x) in flips {
            let p = i.index(bytes.len());
            bytes[p] ^= x;
        }
    };
    if let Damage::Tar(f) = damage {
        flip(&mut tar, f);
    }
    let mut z = zstd::encode_all(&tar[..], 1).unwrap();
    match damage {
        Damage::Zstd(f) => flip(&mut z, f),
        Damage::Truncate(i) => z.truncate(i.index(z.len())),
        _ => {}
    }
    z
}

/// `<tmp>/outside/secret` (a file an attack would overwrite or link to) and `<tmp>/root`.
struct Sandbox {
    tmp: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("outside")).unwrap();
        fs::write(tmp.path().join("outside/secret"), b"secret").unwrap();
        fs::create_dir(tmp.path().join("root")).unwrap();
        Sandbox { tmp }
    }
    fn abs(&self) -> PathBuf {
        self.tmp.path().join("outside")
    }
    fn root(&self) -> PathBuf {
        self.tmp.path().join("root")
    }

    /// Nothing outside `root` changed, and nothing inside it leads outside.
    fn assert_contained(&self) {
        let names = |p: &Path| -> Vec<String> {
            let mut v: Vec<String> = fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            names(self.tmp.path()),
            ["outside", "root"],
            "written beside the target"
        );
        assert_eq!(
            names(&self.abs()),
            ["secret"],
            "written into an absolute path"
        );
        let secret = self.abs().join("secret");
        let meta = fs::symlink_metadata(&secret).unwrap();
        assert!(
            meta.is_file() && meta.nlink() == 1,
            "the secret was linked or replaced"
        );
        assert_eq!(fs::read(&secret).unwrap(), b"secret");
        let root = self.root();
        for entry in walkdir::WalkDir::new(&root).follow_links(false) {
            let entry = entry.unwrap();
            if entry.file_type().is_symlink() {
                let target = fs::read_link(entry.path()).unwrap();
                let parent = entry.path().parent().unwrap();
                assert!(
                    stays_inside(&root, &parent.join(&target)),
                    "symlink {} -> {} leads outside",
                    entry.path().display(),
                    target.display()
                );
            }
        }
    }
}

impl Drop for Sandbox {
    /// Unpacked directories may be read-only; open them so the temp dir can be removed.
    fn drop(&mut self) {
        for entry in walkdir::WalkDir::new(self.tmp.path())
            .follow_links(false)
            .into_iter()
            .flatten()
        {
            if entry.file_type().is_dir() {
                let _ = fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o700));
            }
        }
    }
}

/// Whether `path`, resolved lexically (`..` pops), stays under `root`.
fn stays_inside(root: &Path, path: &Path) -> bool {
    let mut out: Vec<Component> = Vec::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out.iter().collect::<PathBuf>().starts_with(root)
}

/// Unpacks into a fresh sandbox, checks containment, and checks that `scan` (the
/// controller's upload check) accepts whatever `unpack` accepts.
fn unpack_contained(build: impl Fn(&Path) -> Vec<u8>) -> Result<(), TestCaseError> {
    let sandbox = Sandbox::new();
    let bytes = build(&sandbox.abs());
    let limits = Limits {
        max_entries: 40,
        max_file_bytes: 1 << 20,
        max_total_bytes: 4 << 20,
    };
    let unpacked = unpack(&bytes[..], &sandbox.root(), &limits);
    sandbox.assert_contained();
    let scanned = scan(&bytes[..], &limits);
    if let Ok(u) = &unpacked {
        let s = scanned
            .as_ref()
            .map_err(|e| TestCaseError::fail(format!("unpack accepted, scan refused: {e}")))?;
        prop_assert_eq!((u.entries, u.bytes), (s.entries, s.bytes));
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn unpack_and_scan_never_panic_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2000), compress in any::<bool>()) {
        unpack_contained(|_| if compress { zstd::encode_all(&bytes[..], 1).unwrap() } else { bytes.clone() })?;
    }

    #[test]
    fn unpack_never_escapes_with_mutated_archives(
        manifest in prop::option::weighted(0.97, prop_oneof![
            8 => Just(MANIFESTS[0]),
            1 => prop::sample::select(MANIFESTS),
        ]),
        entries in prop::collection::vec(fuzz_entry(), 0..12),
        damage in damage(),
    ) {
        unpack_contained(|abs| build_archive(manifest, &entries, abs, &damage))?;
    }
}
