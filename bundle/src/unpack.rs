//! Streaming, safe unpacking of a bundle `tar.zst`.
//!
//! The archive is read once, through zstd and tar, into a directory the caller owns
//! (normally a staging directory that is renamed into place afterwards). Memory stays
//! bounded whatever the bundle's size. Refused, with an error naming the entry: absolute
//! paths, `..`, links whose target escapes the root, writing through a symlink, device and
//! fifo entries, sparse or unknown entry types, entries beyond the limits, and archives
//! whose PAX and ustar sizes disagree (read differently by different tar implementations).
//! setuid/setgid bits are stripped unless the manifest sets `allowSetuid: true`.
//!
//! Every regular `*.tmpl` entry (what [`crate::config::render_templates`] will render) is
//! read into memory, bounded by [`MAX_TEMPLATE_BYTES`], and parsed; one that is larger, not
//! UTF-8 or does not parse is refused with the entry and line. A hardlink named `*.tmpl`
//! must point at a file that was checked as a template.

use crate::template::{self, TemplateError, MAX_TEMPLATE_BYTES};
use berth_shared::bundle::{Manifest, ManifestError, MANIFEST_FILE, MAX_MANIFEST_BYTES};
use berth_shared::SafeRelPath;
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Default [`Limits::max_total_bytes`]: 16 GiB.
pub const DEFAULT_MAX_TOTAL_BYTES: u64 = 16 << 30;
/// Default [`Limits::max_entries`]: 200,000.
pub const DEFAULT_MAX_ENTRIES: u64 = 200_000;
/// Default [`Limits::max_file_bytes`]: 4 GiB.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 4 << 30;
/// The most [`Limits::max_file_bytes`] may be: 8 GiB - 1, so every legitimate size fits the
/// ustar header and any PAX size that disagrees with it is an attack.
pub const MAX_FILE_BYTES_CAP: u64 = (8 << 30) - 1;

/// Bounds on what one archive may unpack to. The defaults are sized for the largest real
/// bundle, a whole Kubernetes cluster image (sealos `labring/kubernetes`: kubeadm, kubelet,
/// kubectl, containerd, CNI plugins, and a registry directory with every control-plane and
/// add-on container image), which unpacks to 1-3 GiB in a few thousand files. They leave
/// room for several times that, and still stop an archive that would fill a host's disk
/// or inode table. Raise them with the agent's and controller's flags.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Sum of all file sizes. Default 16 GiB: a Kubernetes rootfs with its container images
    /// is 1-3 GiB unpacked, and a bundle that also carries several large application images
    /// (CUDA-based ones are several GiB each) still fits. 64 GiB, the earlier default, was
    /// more than the root disk of a typical node.
    pub max_total_bytes: u64,
    /// Number of entries (files, directories, links), the manifest included. Default
    /// 200,000: a Kubernetes cluster image has a few thousand (registry blobs included),
    /// a bundle with a JavaScript or Python application tree some tens of thousands. Each
    /// entry costs an inode and a few syscalls on every host.
    pub max_entries: u64,
    /// Size of one file. Default 4 GiB: the largest single files in real bundles are
    /// compressed container image layers in the registry directory, and even the CUDA
    /// library layers are roughly 2-3 GiB. At most [`MAX_FILE_BYTES_CAP`].
    pub max_file_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_total_bytes: DEFAULT_MAX_TOTAL_BYTES,
            max_entries: DEFAULT_MAX_ENTRIES,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("entry `{entry}`: {why}")]
    Entry { entry: String, why: String },
    /// A `*.tmpl` entry that does not parse (or is not UTF-8).
    #[error("entry `{entry}`: {source}")]
    Template {
        entry: String,
        #[source]
        source: TemplateError,
    },
    #[error("archive: {0}")]
    Archive(String),
    #[error("bundle.yaml in the archive: {0}")]
    Manifest(#[from] ManifestError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub(crate) fn entry_err(entry: &str, why: impl Into<String>) -> UnpackError {
    UnpackError::Entry {
        entry: entry.to_string(),
        why: why.into(),
    }
}

pub(crate) fn io_at(path: &Path) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What the entries of one archive — or of one image's layers together — have used of the
/// limits. Every walker (bundle unpack, image layers, image archives) counts through it, so
/// the rules and their messages are one.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub limits: Limits,
    pub entries: u64,
    pub bytes: u64,
}

impl Budget {
    pub fn new(limits: Limits) -> Self {
        Budget {
            limits,
            entries: 0,
            bytes: 0,
        }
    }

    /// Counts `entry` against the entry limit; returns its UTF-8 name and its size, once the
    /// PAX and ustar sizes are seen to agree.
    pub(crate) fn entry<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
    ) -> Result<(String, u64), UnpackError> {
        let raw = entry.path().map_err(corrupt)?;
        let name = raw
            .to_str()
            .ok_or_else(|| entry_err(&raw.to_string_lossy(), "path is not UTF-8"))?
            .to_string();
        self.entries += 1;
        if self.entries > self.limits.max_entries {
            return Err(entry_err(
                &name,
                format!(
                    "archive has more than {} entries (the limit)",
                    self.limits.max_entries
                ),
            ));
        }
        let ustar_size = entry.header().entry_size().map_err(corrupt)?;
        let size = entry.size();
        if ustar_size != size {
            return Err(entry_err(
                &name,
                format!(
                    "PAX size {size} disagrees with the header size {ustar_size}; tar implementations would read this archive differently"
                ),
            ));
        }
        Ok((name, size))
    }

    /// A regular file of `size` bytes, against the per-file and total limits.
    pub(crate) fn file(&mut self, name: &str, size: u64) -> Result<(), UnpackError> {
        if size > self.limits.max_file_bytes {
            return Err(entry_err(
                name,
                format!(
                    "file of {size} bytes exceeds the per-file limit of {} bytes",
                    self.limits.max_file_bytes
                ),
            ));
        }
        self.bytes = self.bytes.saturating_add(size);
        if self.bytes > self.limits.max_total_bytes {
            return Err(entry_err(
                name,
                format!(
                    "unpacked size exceeds the limit of {} bytes",
                    self.limits.max_total_bytes
                ),
            ));
        }
        Ok(())
    }
}

pub(crate) fn corrupt(e: io::Error) -> UnpackError {
    UnpackError::Archive(format!("corrupt or truncated: {e}"))
}

/// The target of the symlink entry `name` at `rel`, checked to stay inside the root.
pub(crate) fn symlink_target<R: Read>(
    entry: &tar::Entry<'_, R>,
    name: &str,
    rel: &SafeRelPath,
) -> Result<String, UnpackError> {
    let link = entry
        .link_name()
        .map_err(corrupt)?
        .ok_or_else(|| entry_err(name, "symlink without a target"))?;
    let link = link
        .to_str()
        .ok_or_else(|| entry_err(name, "symlink target is not UTF-8"))?
        .to_string();
    check_symlink_target(rel.as_str(), &link).map_err(|why| entry_err(name, why))?;
    Ok(link)
}

/// The target of the hardlink entry `name`: a path inside the root.
pub(crate) fn hardlink_target<R: Read>(
    entry: &tar::Entry<'_, R>,
    name: &str,
) -> Result<SafeRelPath, UnpackError> {
    let link = entry
        .link_name()
        .map_err(corrupt)?
        .ok_or_else(|| entry_err(name, "hardlink without a target"))?;
    SafeRelPath::new(&link.to_string_lossy())
        .map_err(|e| entry_err(name, format!("hardlink target: {e}")))
}

/// What an unpack produced.
#[derive(Debug, Clone)]
pub struct Unpacked {
    pub manifest: Manifest,
    pub entries: u64,
    pub bytes: u64,
    /// Regular `*.tmpl` files (hardlinks included): what `render_templates` renders.
    pub templates: u64,
    /// Every entry that is not a directory (files, links), in archive order, bundle.yaml
    /// left out: what a Clusterfile `Config` can target.
    pub files: Vec<String>,
}

/// Checks a symlink at `link` (relative to the root) pointing at `target`: the target must
/// be relative, `..` may only lead it, and it must resolve inside the root.
pub fn check_symlink_target(link: &str, target: &str) -> Result<(), String> {
    if target.is_empty() || target.contains('\0') {
        return Err("symlink has an empty or NUL target".into());
    }
    if target.starts_with('/') {
        return Err(format!(
            "symlink target `{target}` is absolute and would point outside the bundle"
        ));
    }
    let mut depth: Vec<&str> = link
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    depth.pop(); // the link's own name
    let mut seen_name = false;
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if seen_name {
                    return Err(format!(
                        "symlink target `{target}` has `..` after a name; only leading `..` is allowed"
                    ));
                }
                if depth.pop().is_none() {
                    return Err(format!("symlink target `{target}` escapes the bundle root"));
                }
            }
            name => {
                seen_name = true;
                depth.push(name);
            }
        }
    }
    Ok(())
}

/// Reads the manifest and checks every entry header without writing anything (what the
/// controller does on upload).
pub fn scan<R: Read>(reader: R, limits: &Limits) -> Result<Unpacked, UnpackError> {
    walk(reader, limits, None)
}

/// Unpacks into `dest` (an existing directory), overlaying what is there: later entries and
/// later bundles win. `bundle.yaml` itself is not written.
pub fn unpack<R: Read>(reader: R, dest: &Path, limits: &Limits) -> Result<Unpacked, UnpackError> {
    walk(reader, limits, Some(dest))
}

fn walk<R: Read>(reader: R, limits: &Limits, dest: Option<&Path>) -> Result<Unpacked, UnpackError> {
    let mut reader = io::BufReader::with_capacity(1 << 16, reader);
    let head = io::BufRead::fill_buf(&mut reader)
        .map_err(|e| UnpackError::Archive(format!("cannot read: {e}")))?;
    if let Some(what) = not_a_bundle(head) {
        return Err(UnpackError::Archive(what));
    }
    let decoder = zstd::Decoder::with_buffer(reader)
        .map_err(|e| UnpackError::Archive(format!("not a zstd stream: {e}")))?;
    let mut archive = tar::Archive::new(decoder);
    let mut entries = archive
        .entries()
        .map_err(|e| UnpackError::Archive(e.to_string()))?;

    // 1. The manifest, first.
    let mut first = entries
        .next()
        .ok_or_else(|| {
            UnpackError::Archive("empty archive; a bundle starts with bundle.yaml".into())
        })?
        .map_err(corrupt)?;
    let first_path = first
        .path()
        .map_err(corrupt)?
        .to_string_lossy()
        .into_owned();
    if SafeRelPath::new(&first_path).map(|p| p.as_str() == MANIFEST_FILE) != Ok(true)
        || first.header().entry_type() != tar::EntryType::Regular
    {
        return Err(UnpackError::Archive(format!(
            "first entry is `{first_path}`, not bundle.yaml; build bundles with `berth bundle build`"
        )));
    }
    if first.size() > MAX_MANIFEST_BYTES as u64 {
        return Err(entry_err(
            MANIFEST_FILE,
            format!("larger than {MAX_MANIFEST_BYTES} bytes"),
        ));
    }
    let mut text = String::new();
    first
        .read_to_string(&mut text)
        .map_err(|e| entry_err(MANIFEST_FILE, format!("not UTF-8 text: {e}")))?;
    // Hooks must exist; they are checked against the entries as they come.
    let raw: berth_shared::bundle::RawManifest = serde_norway::from_str(&text).map_err(|e| {
        UnpackError::Manifest(ManifestError {
            field: "(document)".into(),
            message: e.to_string(),
        })
    })?;
    let hooks_wanted: Vec<String> = raw.hooks.values().cloned().collect();
    let manifest = raw.clone().validate(|_| true)?;
    // Regular files so far, and whether their content was checked as a template.
    let mut regular_files: BTreeMap<String, bool> = BTreeMap::new();
    let mut files: Vec<String> = Vec::new();

    let mut budget = Budget::new(*limits);
    budget.entries = 1; // the manifest
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    for entry in entries {
        let mut entry = entry.map_err(corrupt)?;
        let (name, size) = budget.entry(&entry)?;
        let rel = SafeRelPath::new(&name).map_err(|e| entry_err(&name, e.to_string()))?;
        let header = entry.header();
        let kind = header.entry_type();
        let mut mode = header.mode().map_err(corrupt)? & 0o7777;
        if !manifest.allow_setuid {
            mode &= !0o6000;
        }
        if rel.as_str() == MANIFEST_FILE {
            return Err(entry_err(&name, "bundle.yaml appears twice"));
        }
        if kind != tar::EntryType::Directory {
            files.push(rel.as_str().to_string());
        }
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                budget.file(&name, size)?;
                let template = if template::rendered_path(rel.as_str()).is_some() {
                    Some(read_template(&mut entry, &name, size)?)
                } else {
                    None
                };
                regular_files.insert(rel.as_str().to_string(), template.is_some());
                if let Some(dest) = dest {
                    let target = prepare(dest, &rel, false)?;
                    match &template {
                        Some(bytes) => {
                            write_file(&mut &bytes[..], &target, &name, size, mode, &mut buf)?
                        }
                        None => write_file(&mut entry, &target, &name, size, mode, &mut buf)?,
                    }
                }
            }
            tar::EntryType::Directory => {
                no_data(&name, size)?;
                if let Some(dest) = dest {
                    let target = prepare(dest, &rel, true)?;
                    dir_modes.push((target, mode));
                }
            }
            tar::EntryType::Symlink => {
                no_data(&name, size)?;
                let link = symlink_target(&entry, &name, &rel)?;
                if let Some(dest) = dest {
                    let target = prepare(dest, &rel, false)?;
                    std::os::unix::fs::symlink(&link, &target).map_err(io_at(&target))?;
                }
            }
            tar::EntryType::Link => {
                no_data(&name, size)?;
                let link_rel = hardlink_target(&entry, &name)?;
                let Some(&checked) = regular_files.get(link_rel.as_str()) else {
                    return Err(entry_err(
                        &name,
                        format!("hardlink target `{link_rel}` is not a regular file earlier in this bundle"),
                    ));
                };
                if !checked && template::rendered_path(rel.as_str()).is_some() {
                    return Err(entry_err(
                        &name,
                        format!("a template may only be a hardlink to another template; `{link_rel}` is not one"),
                    ));
                }
                if let Some(dest) = dest {
                    let source = checked_existing(dest, &link_rel)?;
                    let target = prepare(dest, &rel, false)?;
                    fs::hard_link(&source, &target).map_err(io_at(&target))?;
                }
                regular_files.insert(rel.as_str().to_string(), checked);
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                return Err(entry_err(
                    &name,
                    "device and fifo entries are not allowed in bundles",
                ));
            }
            other => {
                return Err(entry_err(
                    &name,
                    format!("entry type {other:?} is not allowed in bundles"),
                ));
            }
        }
    }
    for hook in &hooks_wanted {
        let p = SafeRelPath::new(hook).map_err(|e| entry_err(hook, e.to_string()))?;
        if !regular_files.contains_key(p.as_str()) {
            return Err(UnpackError::Manifest(ManifestError {
                field: "hooks".into(),
                message: format!("file `{p}` does not exist in the bundle"),
            }));
        }
    }
    // Directory modes last, deepest first, so a read-only directory is filled before it
    // is locked.
    for (dir, mode) in dir_modes.iter().rev() {
        fs::set_permissions(dir, fs::Permissions::from_mode(*mode)).map_err(io_at(dir))?;
    }
    Ok(Unpacked {
        manifest,
        entries: budget.entries,
        bytes: budget.bytes,
        templates: regular_files
            .iter()
            .filter(|(path, checked)| **checked && template::rendered_path(path).is_some())
            .count() as u64,
        files,
    })
}

/// What a stream that does not start like a bundle (zstd) is, and what to run instead.
fn not_a_bundle(head: &[u8]) -> Option<String> {
    const BUNDLE: &str = "a bundle is a zstd-compressed tar starting with bundle.yaml, made by `berth bundle build DIR`";
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return None;
    }
    if head.is_empty() {
        return Some(format!("empty; {BUNDLE}"));
    }
    if head.starts_with(&[0x1f, 0x8b]) {
        return Some(format!(
            "this is gzip-compressed data, not a bundle; {BUNDLE} (a container or sealos image archive is imported with `berth bundle import FILE`)"
        ));
    }
    if head.len() >= 262 && &head[257..262] == b"ustar" {
        return Some(format!(
            "this is a plain tar archive, not a bundle; if it is a container or sealos image archive (`sealos save`, `docker save`, an OCI archive), import it with `berth bundle import FILE`; {BUNDLE}"
        ));
    }
    Some(format!(
        "this is not a zstd stream, so not a bundle; {BUNDLE}"
    ))
}

/// Writes `size` bytes of `data` to a new file at `target` (prepared by [`prepare`]) with
/// `mode`; fewer bytes is a truncated archive.
pub(crate) fn write_file<R: Read>(
    data: &mut R,
    target: &Path,
    name: &str,
    size: u64,
    mode: u32,
    buf: &mut [u8],
) -> Result<(), UnpackError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(target)
        .map_err(io_at(target))?;
    let mut written = 0u64;
    loop {
        let n = data
            .read(buf)
            .map_err(|e| UnpackError::Archive(format!("corrupt or truncated: {e}")))?;
        if n == 0 {
            break;
        }
        io::Write::write_all(&mut f, &buf[..n]).map_err(io_at(target))?;
        written += n as u64;
    }
    if written != size {
        return Err(UnpackError::Archive(format!("entry `{name}` is truncated")));
    }
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_at(target))
}

/// Reads a `*.tmpl` entry of `size` bytes (at most [`MAX_TEMPLATE_BYTES`]) and parses it.
fn read_template<R: Read>(entry: &mut R, name: &str, size: u64) -> Result<Vec<u8>, UnpackError> {
    if size > MAX_TEMPLATE_BYTES as u64 {
        return Err(entry_err(
            name,
            format!(
                "template of {size} bytes exceeds the size limit of {MAX_TEMPLATE_BYTES} bytes ({} MiB)",
                MAX_TEMPLATE_BYTES >> 20
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    entry
        .take(size)
        .read_to_end(&mut bytes)
        .map_err(|e| UnpackError::Archive(format!("corrupt or truncated: {e}")))?;
    if bytes.len() as u64 != size {
        return Err(UnpackError::Archive(format!("entry `{name}` is truncated")));
    }
    template::decode(&bytes)
        .and_then(template::check)
        .map_err(|source| UnpackError::Template {
            entry: name.to_string(),
            source,
        })?;
    Ok(bytes)
}

pub(crate) fn no_data(name: &str, size: u64) -> Result<(), UnpackError> {
    if size != 0 {
        return Err(entry_err(
            name,
            format!("non-file entry carries {size} bytes of data"),
        ));
    }
    Ok(())
}

/// Makes sure every ancestor of `rel` under `dest` is a real directory (creating missing
/// ones, refusing symlinks), and clears whatever sits at `rel` unless it is a directory and
/// a directory is wanted. Returns the full path.
pub(crate) fn prepare(
    dest: &Path,
    rel: &SafeRelPath,
    want_dir: bool,
) -> Result<PathBuf, UnpackError> {
    let mut cur = dest.to_path_buf();
    let comps: Vec<&str> = rel.components().collect();
    for (i, c) in comps.iter().enumerate() {
        cur.push(c);
        let last = i + 1 == comps.len();
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                if last && !want_dir {
                    fs::remove_file(&cur).map_err(io_at(&cur))?;
                } else {
                    return Err(entry_err(
                        rel.as_str(),
                        format!(
                            "would be written through the symlink `{}`",
                            comps[..=i].join("/")
                        ),
                    ));
                }
            }
            Ok(m) if m.is_dir() => {
                if last && !want_dir {
                    fs::remove_dir_all(&cur).map_err(io_at(&cur))?;
                } else {
                    // Make sure we can write into it while unpacking.
                    let mode = m.permissions().mode();
                    if mode & 0o700 != 0o700 {
                        fs::set_permissions(&cur, fs::Permissions::from_mode(mode | 0o700))
                            .map_err(io_at(&cur))?;
                    }
                }
            }
            Ok(_) => {
                fs::remove_file(&cur).map_err(io_at(&cur))?;
                if !last || want_dir {
                    fs::create_dir(&cur).map_err(io_at(&cur))?;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !last || want_dir {
                    fs::create_dir(&cur).map_err(io_at(&cur))?;
                }
            }
            Err(e) => return Err(io_at(&cur)(e)),
        }
    }
    Ok(cur)
}

/// The full path of an existing regular file at `rel`, reached without symlinks.
pub(crate) fn checked_existing(dest: &Path, rel: &SafeRelPath) -> Result<PathBuf, UnpackError> {
    let mut cur = dest.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        let m = fs::symlink_metadata(&cur).map_err(io_at(&cur))?;
        if m.file_type().is_symlink() {
            return Err(entry_err(
                rel.as_str(),
                "hardlink target is reached through a symlink",
            ));
        }
    }
    Ok(cur)
}
